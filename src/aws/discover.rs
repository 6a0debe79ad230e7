//! Settles the base role ARN when `--base-role-arn` is not given: from the EC2 instance
//! profile (IMDS), as the Go controller does; otherwise from the controller's own identity
//! (STS `GetCallerIdentity`), which also works off EC2 (IRSA, other clouds, seed credentials).

use tracing::{info, warn};

use super::arn::{self, BaseRoleArn};
use super::imds::{self, ImdsSettings};
use super::sts::StsIssuer;

/// Where the base role ARN came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Imds(imds::ImdsVersion),
    CallerIdentity,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Imds(v) => v.as_str(),
            Source::CallerIdentity => "GetCallerIdentity",
        }
    }
}

/// The base role ARN from IMDS (unless `imds` is `None`), else from `GetCallerIdentity`.
/// Logs the prefix found and where from; `None` (with a warning) when the identity yields no
/// base, in which case only full role ARNs can be used. `Err` when STS could not be asked:
/// the caller retries.
pub async fn try_base_role_arn(
    imds: Option<&ImdsSettings>,
    sts: &StsIssuer,
) -> Result<Option<(BaseRoleArn, Source)>, super::IssueError> {
    if let Some(settings) = imds {
        match imds::instance_profile_arn(settings).await {
            Ok((profile, version)) => match arn::base_from_identity(&profile) {
                Ok(base) => {
                    let source = Source::Imds(version);
                    info!(base_role_arn = %base, source = source.as_str(), instance_profile = profile, "base role ARN discovered");
                    return Ok(Some((base, source)));
                }
                Err(e) => {
                    warn!(error = %e, "instance profile ARN from IMDS is unusable; asking STS")
                }
            },
            Err(e) => {
                info!(endpoint = settings.endpoint, error = %e, "no instance profile from IMDS; asking STS GetCallerIdentity")
            }
        }
    }
    match sts.caller_arn().await {
        Ok(identity) => match arn::base_from_identity(&identity) {
            Ok(base) => {
                info!(base_role_arn = %base, source = Source::CallerIdentity.as_str(), identity, "base role ARN discovered");
                Ok(Some((base, Source::CallerIdentity)))
            }
            Err(e) => {
                warn!(error = %e, "cannot derive a base role ARN; only full role ARNs will work");
                Ok(None)
            }
        },
        Err(e) => {
            warn!(error = %e, "GetCallerIdentity failed");
            Err(e)
        }
    }
}

/// [`try_base_role_arn`], with `None` when STS could not be asked (tests and one-shot use).
pub async fn base_role_arn(
    imds: Option<&ImdsSettings>,
    sts: &StsIssuer,
) -> Option<(BaseRoleArn, Source)> {
    try_base_role_arn(imds, sts).await.ok().flatten()
}

/// Settles the base role ARN from IMDS or STS, retrying (1 s doubling to 30 s) while STS cannot
/// be asked, and records it in `learned`; `None` when the identity yields no base (only full
/// ARNs work then). Roles given as full ARNs are served meanwhile.
pub async fn settle_base_role_arn(
    imds: Option<ImdsSettings>,
    sts: StsIssuer,
    learned: std::sync::Arc<crate::controller::learned::Learned>,
) -> Option<BaseRoleArn> {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match try_base_role_arn(imds.as_ref(), &sts).await {
            Ok(found) => {
                let base = found.map(|(base, _)| base);
                if let Some(b) = &base {
                    learned.set_base_role_arn(b.clone());
                }
                return base;
            }
            Err(_) => {
                warn!(
                    retry_in_s = delay.as_secs(),
                    "base role ARN discovery failed; retrying (roles given as full ARNs are served meanwhile)"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}
