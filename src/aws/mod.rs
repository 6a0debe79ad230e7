//! AWS side of the controller: the `CredentialIssuer` seam, its STS implementation, and ARN rules.

pub mod arn;
pub mod discover;
pub mod file_credentials;
pub mod imds;
pub mod limit;
pub mod options;
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
    /// Session tags, source identity, external id and session policies (all empty by default).
    pub options: RequestOptions,
}

/// A session tag (`Tags.member.N`); tag keys and values are not secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTag {
    pub key: String,
    pub value: String,
}

/// The optional parts of an `AssumeRole` request. Built by [`options::StsOptions::request`]
/// from the operator's flags and the AWSIAMRole's spec; sent as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    pub tags: Vec<SessionTag>,
    /// Keys of `tags` that pass on to sessions chained from this one.
    pub transitive_tag_keys: Vec<String>,
    pub source_identity: Option<String>,
    /// The operator's `--external-id`; never taken from an AWSIAMRole.
    pub external_id: Option<String>,
    /// Inline session policy (JSON).
    pub policy: Option<String>,
    /// Managed policies used as session policies.
    pub policy_arns: Vec<String>,
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
            | "SignatureDoesNotMatch"
            | "ControllerCredentials" => "ControllerCredentialsInvalid",
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
