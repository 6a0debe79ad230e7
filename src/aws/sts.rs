//! The STS `AssumeRole` issuer built on the official AWS SDK for Rust.

use std::sync::Arc;
use std::time::Duration;

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use aws_smithy_http_client::tls;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::limit::{LimitedIssuer, RateLimit};
use super::options::CHAINED_MAX_SECONDS;
use super::{CredentialIssuer, FailureKind, IssueError, IssueRequest, IssuedCredentials, RoleArn};

/// How the STS client is set up.
#[derive(Clone, Debug, Default)]
pub struct StsSettings {
    /// Region for signing and the regional endpoint; the SDK's default chain when `None`.
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, or a local STS in tests).
    pub endpoint: Option<String>,
    /// Upper bound for one AssumeRole call including the SDK's retries.
    pub timeout: Duration,
    /// The controller's own credentials from this process-credentials JSON file (its own
    /// mounted Secret) instead of the SDK's default chain.
    pub credentials_file: Option<std::path::PathBuf>,
}

/// The HTTPS client all AWS calls use: hyper + rustls with the `ring` provider.
pub fn https_client() -> aws_sdk_sts::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Loads the controller's own AWS configuration (environment, profile files incl.
/// `credential_process`, web identity, ECS, EC2 instance metadata) with our overrides.
pub async fn load_config(settings: &StsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some(path) = &settings.credentials_file {
        loader = loader.credentials_provider(super::file_credentials::FileCredentials::new(path));
    }
    loader.load().await
}

/// Session name of the controller's own session under `--assume-role` (CloudTrail shows
/// `assumed-role/<role>/kube-aws-iam-controller`).
pub const CONTROLLER_SESSION_NAME: &str = "kube-aws-iam-controller";

/// `base` with its credentials replaced by a session of `role`, assumed with `base`'s
/// credentials (`--assume-role`). The session is one hour, the most AWS allows for the role
/// sessions chained from it; the SDK's identity cache assumes the role again shortly before
/// the session expires, so it never lapses while the controller runs.
pub async fn chain(
    base: &aws_config::SdkConfig,
    role: &RoleArn,
) -> Result<aws_config::SdkConfig, crate::Error> {
    if base.time_source().is_none() || base.credentials_provider().is_none() {
        return Err(crate::Error::Config(
            "--assume-role: the AWS configuration has no credentials provider".into(),
        ));
    }
    let provider = AssumeRoleProvider::builder(role.to_string())
        .configure(base)
        .session_name(CONTROLLER_SESSION_NAME)
        .session_length(Duration::from_secs(CHAINED_MAX_SECONDS.unsigned_abs()))
        .build()
        .await;
    Ok(base
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build())
}

/// The issuer the controller reconciles with: STS with the controller's credentials, or with
/// a session of `assume_role` (`--assume-role`), paced by `limit`.
pub async fn controller_issuer(
    config: &aws_config::SdkConfig,
    timeout: Duration,
    assume_role: Option<&RoleArn>,
    limit: RateLimit,
) -> Result<Arc<dyn CredentialIssuer>, crate::Error> {
    let sts: Arc<dyn CredentialIssuer> = match assume_role {
        Some(role) => Arc::new(StsIssuer::new(&chain(config, role).await?, timeout)),
        None => Arc::new(StsIssuer::new(config, timeout)),
    };
    Ok(if limit.is_unlimited() {
        sts
    } else {
        Arc::new(LimitedIssuer::new(sts, limit))
    })
}

/// `CredentialIssuer` that calls STS `AssumeRole`.
#[derive(Clone, Debug)]
pub struct StsIssuer {
    client: aws_sdk_sts::Client,
    timeout: Duration,
}

impl StsIssuer {
    pub fn new(config: &aws_config::SdkConfig, timeout: Duration) -> Self {
        StsIssuer {
            client: aws_sdk_sts::Client::new(config),
            timeout,
        }
    }

    /// The ARN the controller itself runs as (`GetCallerIdentity`).
    pub async fn caller_arn(&self) -> Result<String, IssueError> {
        let out = tokio::time::timeout(self.timeout, self.client.get_caller_identity().send())
            .await
            .map_err(|_| timeout_error(self.timeout))?
            .map_err(classify)?;
        out.arn.ok_or_else(|| IssueError {
            kind: FailureKind::Transient,
            code: "InvalidResponse".into(),
            message: "GetCallerIdentity returned no ARN".into(),
        })
    }

    async fn assume(&self, req: IssueRequest) -> Result<IssuedCredentials, IssueError> {
        let opts = req.options;
        let mut call = self
            .client
            .assume_role()
            .role_arn(req.role_arn.to_string())
            .role_session_name(req.session_name)
            .duration_seconds(i32::try_from(req.duration_seconds).unwrap_or(i32::MAX))
            .set_external_id(opts.external_id)
            .set_source_identity(opts.source_identity)
            .set_policy(opts.policy);
        for tag in opts.tags {
            let tag = Tag::builder()
                .key(tag.key)
                .value(tag.value)
                .build()
                .map_err(|e| IssueError {
                    kind: FailureKind::Permanent,
                    code: "ValidationError".into(),
                    message: format!("session tag: {e}"),
                })?;
            call = call.tags(tag);
        }
        for key in opts.transitive_tag_keys {
            call = call.transitive_tag_keys(key);
        }
        for arn in opts.policy_arns {
            call = call.policy_arns(PolicyDescriptorType::builder().arn(arn).build());
        }
        let call = call.send();
        let out = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| timeout_error(self.timeout))?
            .map_err(classify)?;
        let invalid = |what: &str| IssueError {
            kind: FailureKind::Transient,
            code: "InvalidResponse".into(),
            message: format!("AssumeRole response has no {what}"),
        };
        let creds = out.credentials.ok_or_else(|| invalid("credentials"))?;
        // Whole seconds, as AWS STS returns them; any fraction is dropped (earlier, never later).
        let expiration = DateTime::<Utc>::from_timestamp(creds.expiration.secs(), 0)
            .ok_or_else(|| invalid("valid expiration"))?;
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
            return Err(invalid("access key"));
        }
        Ok(IssuedCredentials {
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
            session_token: creds.session_token,
            expiration,
        })
    }
}

impl CredentialIssuer for StsIssuer {
    fn assume_role(
        &self,
        req: IssueRequest,
    ) -> BoxFuture<'_, Result<IssuedCredentials, IssueError>> {
        Box::pin(self.assume(req))
    }
}

fn timeout_error(d: Duration) -> IssueError {
    IssueError {
        kind: FailureKind::Transient,
        code: "Timeout".into(),
        message: format!("STS did not answer within {}s", d.as_secs()),
    }
}

/// True when `err` or one of its sources is a failure to get the controller's own credentials
/// (the SDK reports those as dispatch failures, which would otherwise read as network errors).
fn is_credentials_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Sorts an SDK error into permanent or transient; keeps only the STS code and message.
pub fn classify<E, R>(err: SdkError<E, R>) -> IssueError
where
    E: ProvideErrorMetadata,
{
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            let kind = match code.as_str() {
                "AccessDenied"
                | "ValidationError"
                | "MalformedPolicyDocument"
                | "PackedPolicyTooLarge"
                | "RegionDisabledException" => FailureKind::Permanent,
                _ => FailureKind::Transient,
            };
            IssueError {
                kind,
                code,
                message,
            }
        }
        SdkError::TimeoutError(_) => IssueError {
            kind: FailureKind::Transient,
            code: "Timeout".into(),
            message: "STS request timed out".into(),
        },
        SdkError::DispatchFailure(df)
            if df
                .as_connector_error()
                .is_some_and(|e| is_credentials_failure(e)) =>
        {
            IssueError {
                kind: FailureKind::Transient,
                code: "ControllerCredentials".into(),
                message: "the controller's own AWS credentials could not be loaded (or, with --assume-role, its role could not be assumed); see the controller's log".into(),
            }
        }
        SdkError::DispatchFailure(_) => IssueError {
            kind: FailureKind::Transient,
            code: "Network".into(),
            message: "could not reach STS".into(),
        },
        SdkError::ResponseError(_) => IssueError {
            kind: FailureKind::Transient,
            code: "InvalidResponse".into(),
            message: "STS answered with a response that could not be read".into(),
        },
        SdkError::ConstructionFailure(_) => IssueError {
            kind: FailureKind::Transient,
            code: "ControllerConfig".into(),
            message:
                "the STS request could not be built (no credentials or region for the controller?)"
                    .into(),
        },
        _ => IssueError {
            kind: FailureKind::Transient,
            code: "Unknown".into(),
            message: "unexpected STS client error".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};

    async fn endpoint(region: &str) -> String {
        let params = Params::builder()
            .region(region)
            .use_fips(false)
            .use_dual_stack(false)
            .use_global_endpoint(false)
            .build()
            .expect("params");
        DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .expect("endpoint")
            .url()
            .to_string()
    }

    #[tokio::test]
    async fn sts_region_selects_the_regional_endpoint_of_its_partition() {
        assert_eq!(
            endpoint("eu-central-1").await,
            "https://sts.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            endpoint("us-east-1").await,
            "https://sts.us-east-1.amazonaws.com"
        );
        assert_eq!(
            endpoint("cn-north-1").await,
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            endpoint("cn-northwest-1").await,
            "https://sts.cn-northwest-1.amazonaws.com.cn"
        );
        assert_eq!(
            endpoint("us-gov-west-1").await,
            "https://sts.us-gov-west-1.amazonaws.com"
        );
    }

    /// Records the URL of the request about to be sent, then stops it.
    #[derive(Clone, Debug, Default)]
    struct CaptureUrl(std::sync::Arc<std::sync::Mutex<Option<String>>>);

    impl aws_sdk_sts::config::Intercept for CaptureUrl {
        fn name(&self) -> &'static str {
            "CaptureUrl"
        }
        fn read_before_transmit(
            &self,
            ctx: &aws_sdk_sts::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _rc: &aws_sdk_sts::config::RuntimeComponents,
            _cfg: &mut aws_sdk_sts::config::ConfigBag,
        ) -> Result<(), aws_sdk_sts::error::BoxError> {
            if let Ok(mut url) = self.0.lock() {
                *url = Some(ctx.request().uri().to_string());
            }
            Err("captured, not sent".into())
        }
    }

    #[tokio::test]
    async fn the_controllers_sts_client_calls_the_regional_endpoint_of_the_partition() {
        for (region, url) in [
            ("eu-west-1", "https://sts.eu-west-1.amazonaws.com/"),
            (
                "cn-northwest-1",
                "https://sts.cn-northwest-1.amazonaws.com.cn/",
            ),
            ("us-gov-east-1", "https://sts.us-gov-east-1.amazonaws.com/"),
        ] {
            let sdk = super::load_config(&super::StsSettings {
                region: Some(region.into()),
                endpoint: None,
                timeout: std::time::Duration::from_secs(5),
                credentials_file: None,
            })
            .await;
            let capture = CaptureUrl::default();
            let conf = aws_sdk_sts::config::Builder::from(&sdk)
                .credentials_provider(aws_sdk_sts::config::Credentials::new(
                    "AKIDTEST", "secret", None, None, "test",
                ))
                .interceptor(capture.clone())
                .build();
            let _ = aws_sdk_sts::Client::from_conf(conf)
                .get_caller_identity()
                .send()
                .await;
            let seen = capture.0.lock().map(|u| u.clone()).unwrap_or_default();
            assert_eq!(seen.as_deref(), Some(url), "{region}");
        }
    }
}
