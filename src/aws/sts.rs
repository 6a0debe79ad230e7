//! The STS `AssumeRole` issuer built on the official AWS SDK for Rust.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{CredentialIssuer, FailureKind, IssueError, IssueRequest, IssuedCredentials};

/// How the STS client is set up.
#[derive(Clone, Debug, Default)]
pub struct StsSettings {
    /// Region for signing and the regional endpoint; the SDK's default chain when `None`.
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, or a local STS in tests).
    pub endpoint: Option<String>,
    /// Upper bound for one AssumeRole call including the SDK's retries.
    pub timeout: Duration,
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
    loader.load().await
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
        let call = self
            .client
            .assume_role()
            .role_arn(req.role_arn.to_string())
            .role_session_name(req.session_name)
            .duration_seconds(i32::try_from(req.duration_seconds).unwrap_or(i32::MAX))
            .send();
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
