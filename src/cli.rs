//! Command-line flags; every flag can also be set by an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, ValueEnum};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 10s, 15m, 1h)"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Hands AWS IAM role credentials to pods through Secrets.
#[derive(Clone, Debug, Parser)]
#[command(name = "kube-aws-iam-controller", version)]
pub struct Args {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct KubeArgs {
    /// Path to a kubeconfig; in-cluster configuration when neither this nor KUBECONFIG is set.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// API server URL, overriding the kubeconfig's (the Go controller's flag).
    #[arg(long, env = "KAIC_APISERVER")]
    pub apiserver: Option<String>,
    /// Watch AWSIAMRoles and Secrets in this namespace only (default: all namespaces).
    #[arg(long, env = "KAIC_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct AwsArgs {
    /// Prefix for bare role names, e.g. arn:aws:iam::123456789012:role/ (default: the account
    /// and partition of the controller's own identity, from STS GetCallerIdentity).
    #[arg(long, env = "KAIC_BASE_ROLE_ARN")]
    pub base_role_arn: Option<String>,
    /// STS region (default: the AWS SDK's region chain, e.g. AWS_REGION); selects the regional endpoint.
    #[arg(long, env = "KAIC_STS_REGION")]
    pub sts_region: Option<String>,
    /// STS endpoint URL override (VPC endpoint, or a local STS for testing).
    #[arg(long, env = "KAIC_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,
    /// Upper bound for one STS call, the SDK's retries included.
    #[arg(long, env = "KAIC_STS_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub sts_timeout: Duration,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct ControllerArgs {
    /// Renew credentials this long before they expire (at most half the session).
    #[arg(long, env = "KAIC_REFRESH_LIMIT", default_value = "15m", value_parser = duration)]
    pub refresh_limit: Duration,
    /// How often the in-memory caches are checked for Secrets of deleted AWSIAMRoles. No API
    /// listing happens on this timer (the Go controller's sync period; changes are watched now).
    #[arg(long, env = "KAIC_INTERVAL", default_value = "10s", value_parser = duration)]
    pub interval: Duration,
    /// AWSIAMRoles reconciled at once.
    #[arg(long, env = "KAIC_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// First retry delay after a transient failure (doubles per failure).
    #[arg(long, env = "KAIC_BACKOFF_BASE", default_value = "5s", value_parser = duration)]
    pub backoff_base: Duration,
    /// Longest retry delay; also how often permanently failing roles are retried.
    #[arg(long, env = "KAIC_MAX_BACKOFF", default_value = "5m", value_parser = duration)]
    pub max_backoff: Duration,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct RuntimeArgs {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "KAIC_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "KAIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "KAIC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Same as --log-level=debug (the Go controller's flag).
    #[arg(long, env = "KAIC_DEBUG")]
    pub debug: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_controller_flags_are_accepted() {
        let a = Args::try_parse_from([
            "kube-aws-iam-controller",
            "--interval=10s",
            "--refresh-limit=15m0s",
            "--base-role-arn=arn:aws:iam::123456789012:role/",
            "--namespace=team",
            "--apiserver=https://127.0.0.1:6443",
            "--debug",
        ])
        .expect("parse");
        assert_eq!(a.controller.refresh_limit, Duration::from_secs(900));
        assert_eq!(a.controller.interval, Duration::from_secs(10));
        assert!(a.runtime.debug);
        assert_eq!(a.kube.namespace.as_deref(), Some("team"));
    }

    #[test]
    fn bad_durations_are_rejected_with_a_hint() {
        let e = Args::try_parse_from(["x", "--refresh-limit=soon"]).expect_err("must fail");
        assert!(e.to_string().contains("15m"), "{e}");
    }
}
