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
pub mod serve;
pub mod webhook;

/// Errors of the reconcile loop and the process around it. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("sts: {0}")]
    Sts(#[from] aws::IssueError),
    #[error("sts returned credentials that expire at {0}, which is not in the future")]
    ExpiredOnArrival(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Sts(e) => e.reason(),
            Error::ExpiredOnArrival(_) => "ExpiredOnArrival",
            Error::Config(_) => "config",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
