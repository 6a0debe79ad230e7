//! AWS side of the controller: the `CredentialIssuer` seam, its STS implementation, and ARN rules.

pub mod arn;
pub mod sts;

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

pub use arn::{BaseRoleArn, RoleArn};

/// One request for role credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueRequest {
    pub role_arn: RoleArn,
    pub session_name: String,
    pub duration_seconds: i64,
}

/// Temporary credentials for a role. `Debug` never prints the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: DateTime<Utc>,
}

impl fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Retrying the same request will fail the same way until someone changes IAM or the spec.
    Permanent,
    /// Throttling, 5xx, timeouts, network: back off and retry.
    Transient,
}

/// An STS failure, reduced to what is safe to show in status, Events and logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IssueError {
    pub kind: FailureKind,
    /// The STS error code (`AccessDenied`, `Throttling`, ...) or a local one (`Timeout`, `Network`).
    pub code: String,
    pub message: String,
}

impl IssueError {
    /// A bounded label for metrics and the condition reason.
    pub fn reason(&self) -> &'static str {
        match self.code.as_str() {
            "AccessDenied" => "AccessDenied",
            "ValidationError" | "MalformedPolicyDocument" | "PackedPolicyTooLarge" => {
                "InvalidRequest"
            }
            "RegionDisabledException" => "RegionDisabled",
            "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch" => "ControllerCredentialsInvalid",
            "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => "Throttled",
            "Timeout" => "Timeout",
            "Network" => "NetworkError",
            _ if self.kind == FailureKind::Transient => "STSUnavailable",
            _ => "STSError",
        }
    }
}

/// Issues credentials for a role; the STS implementation is in [`sts`], tests may provide others.
pub trait CredentialIssuer: Send + Sync {
    fn assume_role(
        &self,
        req: IssueRequest,
    ) -> BoxFuture<'_, Result<IssuedCredentials, IssueError>>;
}
