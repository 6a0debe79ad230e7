//! kube-aws-iam-controller: assumes the AWS IAM role each `AWSIAMRole` names and keeps its
//! credentials in a Secret of the same name, in the files the AWS SDKs read.

pub mod admin;
pub mod aws;
pub mod bootstrap;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod kubeclient;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod serve;
pub mod webhook;

/// Errors of the reconcile loop and the process around it. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("sts: {0}")]
    Sts(#[from] aws::IssueError),
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(e) => kube_failure_class(e),
            Error::Sts(e) => e.reason(),
            Error::Config(_) => "config",
        }
    }
}

/// The class of a Kubernetes API failure, for the reconcile metrics' bounded `result` label:
/// which failures dominate (conflicts, throttling, RBAC, an unreachable API server) shows
/// without reading logs.
fn kube_failure_class(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => match status.code {
            409 => "kube-conflict",
            404 => "kube-not-found",
            401 | 403 => "kube-forbidden",
            422 => "kube-invalid",
            429 => "kube-throttled",
            500..=599 => "kube-server-error",
            _ => "kube-other",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "kube-unreachable",
        kube::Error::SerdeError(_) => "kube-decode",
        _ => "kube-other",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("x", "Conflict")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn reconcile_errors_are_labelled_by_failure_class() {
        assert_eq!(api(409).metric_label(), "kube-conflict");
        assert_eq!(api(403).metric_label(), "kube-forbidden");
        assert_eq!(api(503).metric_label(), "kube-server-error");
        assert_eq!(api(429).metric_label(), "kube-throttled");
        assert_eq!(Error::Config("x".into()).metric_label(), "config");
    }
}
