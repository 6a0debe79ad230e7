//! Command-line flags; every flag can also be set by an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::aws::arn::BaseRoleArn;
use crate::aws::limit::RateLimit;
use crate::aws::options::{self, SourceIdentityTemplate, StsOptions, TagSettings};
use crate::policy::PolicyMode;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 10s, 15m, 1h)"))
}

fn source_identity(s: &str) -> Result<SourceIdentityTemplate, String> {
    s.parse().map_err(|e: options::OptionError| e.to_string())
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 => Ok(q),
        _ => Err("must be a number of calls per second greater than 0, e.g. 10 or 0.5".into()),
    }
}

fn external_id(s: &str) -> Result<String, String> {
    options::validate_external_id(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn cluster_name(s: &str) -> Result<String, String> {
    options::validate_tag_value(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
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
    /// Without a subcommand the controller runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub sts: StsOptionArgs,
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

impl Args {
    /// The reconcile loop's tunables.
    pub fn settings(&self) -> crate::controller::Settings {
        crate::controller::Settings {
            refresh_limit: self.controller.refresh_limit,
            backoff_base: self.controller.backoff_base,
            max_backoff: self.controller.max_backoff,
            sts_options: self.sts.options(),
            ..crate::controller::Settings::default()
        }
    }

    /// The reconcile loop's scope and pacing.
    pub fn run_options(&self) -> crate::controller::RunOptions {
        crate::controller::RunOptions {
            namespace: self.kube.namespace.clone(),
            concurrency: self.controller.concurrency,
            janitor_interval: self.controller.interval,
        }
    }

    /// The admin server, the election (as replica `identity`) and the shutdown timeout.
    pub fn process_settings(&self, identity: &str) -> crate::runtime::ProcessSettings {
        let l = &self.leader;
        crate::runtime::ProcessSettings {
            election: l
                .leader_elect
                .then(|| crate::controller::leader::LeaseSettings {
                    name: l.lease_name.clone(),
                    namespace: l.lease_namespace.clone().unwrap_or_else(|| {
                        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into())
                    }),
                    identity: identity.to_string(),
                    duration: l.lease_duration,
                    grace: l.lease_grace,
                }),
            admin_addr: Some(self.runtime.admin_addr),
            shutdown_timeout: l.shutdown_timeout,
            webhook: self.webhook.webhook,
        }
    }
}

/// Who may get which role (`docs/security.md`).
#[derive(Clone, Debug, ClapArgs)]
pub struct PolicyArgs {
    /// Namespace role policy: enforce (a namespace gets only the roles its
    /// iam.amazonaws.com/permitted or iam.amazonaws.com/allowed-roles annotation permits; none
    /// without one), audit (issue, but report what enforce would deny), none (the Go
    /// controller's behaviour).
    #[arg(long, env = "KAIC_NAMESPACE_POLICY", value_enum, default_value_t = PolicyMode::Enforce)]
    pub namespace_policy: PolicyMode,
    /// Accounts whose roles may be issued, comma-separated 12-digit IDs (default: any).
    #[arg(long, env = "KAIC_ALLOWED_ACCOUNT_IDS", value_delimiter = ',', value_parser = account_id)]
    pub allowed_account_ids: Vec<String>,
    /// The controller's own AWSIAMRole (the one `bootstrap` writes), NAMESPACE/NAME: the only
    /// one that may be issued the controller's own role.
    #[arg(
        long,
        env = "KAIC_OWN_AWSIAMROLE",
        default_value = "kube-system/kube-aws-iam-controller",
        value_parser = namespaced_name
    )]
    pub own_awsiamrole: (String, String),
}

/// `NAMESPACE/NAME`, both non-empty.
fn namespaced_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
    }
}

fn base_role_arn(s: &str) -> Result<BaseRoleArn, String> {
    s.parse()
        .map_err(|e: crate::aws::arn::ArnError| e.to_string())
}

fn account_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a 12-digit AWS account ID"))
    }
}

#[derive(Clone, Debug, ClapArgs)]
pub struct KubeArgs {
    /// Path to one kubeconfig file; when unset, ~/.kube/config if present, else the in-cluster configuration.
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
    #[arg(long, env = "KAIC_BASE_ROLE_ARN", value_parser = base_role_arn)]
    pub base_role_arn: Option<BaseRoleArn>,
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

/// Options of the controller's STS calls; all off unless given.
#[derive(Clone, Debug, ClapArgs)]
pub struct StsOptionArgs {
    /// Role (name or ARN) the controller first assumes with its own credentials; every
    /// AWSIAMRole is then assumed from that session (role chaining: at most 1 hour each).
    #[arg(long, env = "KAIC_ASSUME_ROLE")]
    pub assume_role: Option<String>,
    /// The controller's own credentials: this process-credentials JSON file (e.g. its own
    /// Secret's credentials.json at /meta/aws-iam), read again before they expire. Replaces
    /// the SDK's default chain; needs no shell (unlike credential_process).
    #[arg(long, env = "KAIC_CREDENTIALS_FILE")]
    pub credentials_file: Option<std::path::PathBuf>,
    /// ExternalId sent with every AssumeRole for an AWSIAMRole; target roles can require it
    /// with the sts:ExternalId condition. Never taken from an AWSIAMRole.
    #[arg(long, env = "KAIC_EXTERNAL_ID", value_parser = external_id)]
    pub external_id: Option<String>,
    /// Tag each session with kubernetes-namespace and kubernetes-awsiamrole (and
    /// kubernetes-cluster with --cluster-name), for aws:PrincipalTag conditions. Target roles
    /// must allow sts:TagSession.
    #[arg(long, env = "KAIC_SESSION_TAGS")]
    pub session_tags: bool,
    /// Value of the kubernetes-cluster session tag.
    #[arg(long, env = "KAIC_CLUSTER_NAME", requires = "session_tags", value_parser = cluster_name)]
    pub cluster_name: Option<String>,
    /// Make the session tags transitive: they stay on sessions chained from these credentials.
    #[arg(long, env = "KAIC_TRANSITIVE_SESSION_TAGS", requires = "session_tags")]
    pub transitive_session_tags: bool,
    /// SourceIdentity for each session, a template with {namespace} and {name}, e.g.
    /// {namespace}@{name}. Target roles must allow sts:SetSourceIdentity.
    #[arg(long, env = "KAIC_SOURCE_IDENTITY", value_parser = source_identity)]
    pub source_identity: Option<SourceIdentityTemplate>,
    /// Client-side limit of AssumeRole calls per second (default: none).
    #[arg(long, env = "KAIC_STS_QPS", value_parser = positive_rate)]
    pub sts_qps: Option<f64>,
    /// AssumeRole calls allowed at once after a quiet period (default: --sts-qps, at least 1).
    #[arg(long, env = "KAIC_STS_BURST", requires = "sts_qps", value_parser = clap::value_parser!(u32).range(1..))]
    pub sts_burst: Option<u32>,
    /// AssumeRole calls in flight at once (default: no cap beyond --concurrency).
    #[arg(long, env = "KAIC_STS_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub sts_max_in_flight: Option<u32>,
    /// Instance metadata endpoint for base role ARN discovery (default: the SDK's,
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254; AWS_EC2_METADATA_DISABLED=true skips it).
    #[arg(long, env = "KAIC_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
}

impl StsOptionArgs {
    /// The per-request options.
    pub fn options(&self) -> StsOptions {
        StsOptions {
            external_id: self.external_id.clone(),
            tags: self.session_tags.then(|| TagSettings {
                cluster_name: self.cluster_name.clone(),
                transitive: self.transitive_session_tags,
            }),
            source_identity: self.source_identity.clone(),
        }
    }

    pub fn rate_limit(&self) -> RateLimit {
        RateLimit {
            qps: self.sts_qps,
            burst: self
                .sts_burst
                .unwrap_or_else(|| self.sts_qps.map_or(1, |q| q.ceil().max(1.0) as u32)),
            max_in_flight: self.sts_max_in_flight.map(|n| n as usize),
        }
    }
}

/// What to run instead of the controller.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Seed the controller's own credentials without AWS infrastructure: assume the
    /// controller's role with your AWS credentials (the SDK's default chain) and write its
    /// AWSIAMRole and Secret, which the running controller adopts and keeps fresh.
    Bootstrap(BootstrapArgs),
    /// The sidecar of the webhook's endpoint mode (docs/webhook.md): serve the mounted
    /// Secret's credentials over the container credentials protocol on a loopback address,
    /// to callers that send the pod's token.
    ServeCredentials(ServeArgs),
}

#[derive(Clone, Debug, ClapArgs)]
pub struct ServeArgs {
    /// The mounted Secret (the directory holding credentials.json).
    #[arg(long, env = "KAIC_SERVE_DIR", default_value = "/meta/aws-iam")]
    pub dir: std::path::PathBuf,
    /// Address to serve on; keep it loopback: the SDKs accept plain HTTP only there.
    #[arg(long, env = "KAIC_SERVE_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], crate::serve::DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// The token file the app containers read through AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE:
    /// created with a random token at start (kept if it already holds one).
    #[arg(
        long,
        env = "KAIC_SERVE_TOKEN_FILE",
        default_value = "/meta/aws-iam-token/token"
    )]
    pub token_file: std::path::PathBuf,
    /// Serve only credentials valid for longer than this; otherwise answer 503, which the
    /// SDKs retry.
    #[arg(long, env = "KAIC_SERVE_MIN_REMAINING", default_value = "5s", value_parser = duration)]
    pub min_remaining: Duration,
    /// Do not serve: ask the sidecar at --listen whether it serves valid credentials (exit 0)
    /// or not (exit 1). The startup probe runs this.
    #[arg(long)]
    pub probe: bool,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct BootstrapArgs {
    /// Namespace of the controller's AWSIAMRole and Secret.
    #[arg(long, env = "KAIC_BOOTSTRAP_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Name of the AWSIAMRole and Secret (the Secret the controller's Deployment mounts).
    #[arg(
        long,
        env = "KAIC_BOOTSTRAP_NAME",
        default_value = "kube-aws-iam-controller"
    )]
    pub name: String,
    /// The controller's IAM role: a full ARN, or a name in the account of --base-role-arn
    /// (default: your own account, from STS GetCallerIdentity).
    #[arg(long, env = "KAIC_BOOTSTRAP_ROLE")]
    pub role: String,
    /// Session length in seconds, of the seed credentials and the AWSIAMRole. The controller
    /// renews its own credentials from a role session, so at most 3600 (role chaining).
    #[arg(long, env = "KAIC_BOOTSTRAP_SESSION_DURATION", default_value_t = 3600, value_parser = clap::value_parser!(i64).range(900..=3600))]
    pub session_duration: i64,
    /// Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    #[command(flatten)]
    pub aws: AwsArgs,
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
    #[arg(long, env = "KAIC_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,
    /// First retry delay after a transient failure (doubles per failure).
    #[arg(long, env = "KAIC_BACKOFF_BASE", default_value = "5s", value_parser = duration)]
    pub backoff_base: Duration,
    /// Longest retry delay; also how often permanently failing roles are retried.
    #[arg(long, env = "KAIC_MAX_BACKOFF", default_value = "5m", value_parser = duration)]
    pub max_backoff: Duration,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct LeaderArgs {
    /// Elect a leader among replicas with a Lease; only the leader calls STS and writes Secrets.
    #[arg(long, env = "KAIC_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "KAIC_LEASE_NAME",
        default_value = "kube-aws-iam-controller"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else kube-system).
    #[arg(long, env = "KAIC_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease is valid without renewal: the longest a follower waits after the leader dies.
    #[arg(long, env = "KAIC_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,
    /// The leader renews the Lease this long before it would expire.
    #[arg(long, env = "KAIC_LEASE_GRACE", default_value = "5s", value_parser = duration)]
    pub lease_grace: Duration,
    /// On SIGTERM, how long in-flight reconciles may take before the process exits anyway.
    #[arg(long, env = "KAIC_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub shutdown_timeout: Duration,
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

/// The mutating admission webhook (docs/webhook.md); off unless --webhook.
#[derive(Clone, Debug, ClapArgs)]
pub struct WebhookArgs {
    /// Serve the admission webhook that injects the Secret mount and SDK environment into pods
    /// that name an AWSIAMRole. Every replica serves; only the leader rotates the certificate.
    #[arg(long = "webhook", env = "KAIC_WEBHOOK")]
    pub webhook: bool,
    /// Address of the webhook's HTTPS server.
    #[arg(long, env = "KAIC_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Namespace of the webhook's Service and TLS Secret (default: POD_NAMESPACE, else kube-system).
    #[arg(long, env = "KAIC_WEBHOOK_NAMESPACE")]
    pub webhook_namespace: Option<String>,
    /// The webhook's Service; its DNS names go into the serving certificate.
    #[arg(
        long,
        env = "KAIC_WEBHOOK_SERVICE",
        default_value = "kube-aws-iam-controller-webhook"
    )]
    pub webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(
        long,
        env = "KAIC_WEBHOOK_CONFIGURATION",
        default_value = "kube-aws-iam-controller"
    )]
    pub webhook_configuration: String,
    /// Secret holding the webhook's CA and serving certificate (created and rotated by the leader).
    #[arg(
        long,
        env = "KAIC_WEBHOOK_SECRET",
        default_value = "kube-aws-iam-controller-webhook-tls"
    )]
    pub webhook_secret: String,
    /// More DNS names or IP addresses for the serving certificate (comma-separated).
    #[arg(long, env = "KAIC_WEBHOOK_SAN", value_delimiter = ',')]
    pub webhook_san: Vec<String>,
    /// Serve this certificate file (e.g. from cert-manager) instead of managing one; re-read
    /// when it changes. Needs --webhook-key-file.
    #[arg(long, env = "KAIC_WEBHOOK_CERT_FILE", requires = "webhook_key_file")]
    pub webhook_cert_file: Option<std::path::PathBuf>,
    /// The private key of --webhook-cert-file.
    #[arg(long, env = "KAIC_WEBHOOK_KEY_FILE", requires = "webhook_cert_file")]
    pub webhook_key_file: Option<std::path::PathBuf>,
    /// Also inject AWS_REGION and AWS_DEFAULT_REGION with this value.
    #[arg(long, env = "KAIC_WEBHOOK_REGION")]
    pub webhook_region: Option<String>,
    /// How pods without the zalando.org/aws-iam-credentials annotation get their credentials:
    /// process (the Secret mounted into every container) or endpoint (a sidecar serving the
    /// container credentials protocol; needs --webhook-sidecar-image).
    #[arg(long, env = "KAIC_WEBHOOK_CREDENTIALS", value_enum, default_value_t = crate::webhook::endpoint::Mode::Process)]
    pub webhook_credentials: crate::webhook::endpoint::Mode,
    /// The image of the endpoint mode's sidecar: the controller's own (the chart sets it from
    /// the Deployment's image).
    #[arg(long, env = "KAIC_WEBHOOK_SIDECAR_IMAGE")]
    pub webhook_sidecar_image: Option<String>,
    /// Lifetime of the webhook's own CA (renewed when a third is left).
    #[arg(long, env = "KAIC_WEBHOOK_CA_LIFETIME", default_value = "365d", value_parser = duration)]
    pub webhook_ca_lifetime: Duration,
    /// Lifetime of the serving certificate (renewed when a third is left).
    #[arg(long, env = "KAIC_WEBHOOK_CERT_LIFETIME", default_value = "30d", value_parser = duration)]
    pub webhook_cert_lifetime: Duration,
    /// How long a new CA is trusted before it signs, and the old one after.
    #[arg(long, env = "KAIC_WEBHOOK_CERT_OVERLAP", default_value = "10m", value_parser = duration)]
    pub webhook_cert_overlap: Duration,
    /// How often the leader checks the certificate (and file mode re-reads the files).
    #[arg(long, env = "KAIC_WEBHOOK_CHECK_INTERVAL", default_value = "30s", value_parser = duration)]
    pub webhook_check_interval: Duration,
}

impl WebhookArgs {
    /// The webhook's settings; `watch_namespace` is --namespace.
    pub fn settings(&self, watch_namespace: Option<String>) -> crate::webhook::Settings {
        use crate::webhook::{TlsSource, certs::Lifetimes};
        let namespace = self.webhook_namespace.clone().unwrap_or_else(|| {
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into())
        });
        let svc = &self.webhook_service;
        let mut sans = vec![
            format!("{svc}.{namespace}.svc"),
            format!("{svc}.{namespace}.svc.cluster.local"),
        ];
        sans.extend(self.webhook_san.iter().cloned());
        let tls = match (&self.webhook_cert_file, &self.webhook_key_file) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsSource::SelfManaged(Lifetimes {
                ca: self.webhook_ca_lifetime,
                serving: self.webhook_cert_lifetime,
                overlap: self.webhook_cert_overlap,
            }),
        };
        crate::webhook::Settings {
            addr: self.webhook_addr,
            namespace,
            secret: self.webhook_secret.clone(),
            configuration: self.webhook_configuration.clone(),
            sans,
            tls,
            region: self.webhook_region.clone(),
            delivery: crate::webhook::endpoint::Delivery {
                default: self.webhook_credentials,
                image: self
                    .webhook_sidecar_image
                    .clone()
                    .filter(|i| !i.trim().is_empty()),
            },
            watch_namespace,
            check_interval: self.webhook_check_interval,
        }
    }
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
    fn the_own_awsiamrole_and_the_base_role_arn_are_checked_at_parse_time() {
        let a = Args::try_parse_from([
            "x",
            "--own-awsiamrole=ops/iam",
            "--base-role-arn=arn:aws:iam::123456789012:role/",
        ])
        .expect("parse");
        assert_eq!(a.policy.own_awsiamrole, ("ops".into(), "iam".into()));
        assert_eq!(
            a.aws.base_role_arn.map(|b| b.to_string()),
            Some("arn:aws:iam::123456789012:role/".into())
        );
        let d = Args::try_parse_from(["x"]).expect("parse");
        assert_eq!(
            d.policy.own_awsiamrole,
            ("kube-system".into(), "kube-aws-iam-controller".into())
        );
        for bad in [
            vec!["x", "--own-awsiamrole=iam"],
            vec!["x", "--own-awsiamrole=/iam"],
            vec!["x", "--own-awsiamrole=a/b/c"],
            vec!["x", "--base-role-arn=arn:aws:s3:::bucket"],
        ] {
            let e = Args::try_parse_from(&bad).expect_err("refused");
            assert!(
                e.to_string()
                    .contains(bad[1].split('=').next().unwrap_or_default()),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn sts_options_are_off_by_default() {
        let a = Args::try_parse_from(["x"]).expect("parse");
        assert!(a.command.is_none());
        let o = a.sts.options();
        assert!(o.tags.is_none() && o.external_id.is_none() && o.source_identity.is_none());
        assert!(a.sts.rate_limit().is_unlimited());
    }

    #[test]
    fn sts_option_flags_build_the_request_options() {
        let a = Args::try_parse_from([
            "x",
            "--assume-role=arn:aws:iam::123456789012:role/ctrl",
            "--external-id=tenant-42",
            "--session-tags",
            "--cluster-name=prod-eu",
            "--transitive-session-tags",
            "--source-identity={namespace}@{name}",
            "--sts-qps=2.5",
            "--sts-max-in-flight=4",
        ])
        .expect("parse");
        let o = a.sts.options();
        assert_eq!(o.external_id.as_deref(), Some("tenant-42"));
        assert_eq!(
            o.tags,
            Some(TagSettings {
                cluster_name: Some("prod-eu".into()),
                transitive: true
            })
        );
        assert_eq!(
            o.source_identity
                .as_ref()
                .map(|t| t.render("ns", "app").expect("render")),
            Some("ns@app".to_string())
        );
        let limit = a.sts.rate_limit();
        assert_eq!(limit.qps, Some(2.5));
        assert_eq!(limit.burst, 3);
        assert_eq!(limit.max_in_flight, Some(4));
    }

    #[test]
    fn invalid_sts_options_are_rejected_at_start() {
        for bad in [
            vec!["x", "--source-identity={pod}"],
            vec!["x", "--external-id=a b"],
            vec!["x", "--session-tags", "--cluster-name=a,b"],
            vec!["x", "--cluster-name=c"],
            vec!["x", "--transitive-session-tags"],
            vec!["x", "--sts-qps=0"],
            vec!["x", "--sts-burst=5"],
        ] {
            assert!(
                Args::try_parse_from(&bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn bootstrap_is_a_subcommand_and_the_controller_flags_still_work_without_it() {
        let a = Args::try_parse_from([
            "kube-aws-iam-controller",
            "bootstrap",
            "--namespace=kube-system",
            "--name=kube-aws-iam-controller",
            "--role=ctrl",
            "--kubeconfig=/tmp/kc",
            "--sts-endpoint=http://127.0.0.1:1",
        ])
        .expect("parse");
        let Some(Command::Bootstrap(b)) = a.command else {
            panic!("bootstrap expected");
        };
        assert_eq!(b.role, "ctrl");
        assert_eq!(b.session_duration, 3600);
        assert_eq!(b.kubeconfig.as_deref(), Some("/tmp/kc"));
        assert_eq!(b.aws.sts_endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert!(
            Args::try_parse_from(["x", "bootstrap", "--role=r", "--session-duration=7200"])
                .is_err()
        );
        assert!(
            Args::try_parse_from(["x", "bootstrap"]).is_err(),
            "--role is required"
        );
        let a = Args::try_parse_from(["x", "--namespace=team", "--session-tags"]).expect("parse");
        assert!(a.command.is_none());
        assert!(a.sts.session_tags);
    }

    #[test]
    fn webhook_is_off_by_default_and_its_defaults_name_the_shipped_objects() {
        let a = Args::try_parse_from(["x"]).expect("parse");
        assert!(!a.webhook.webhook);
        let s = a.webhook.settings(None);
        assert!(matches!(s.tls, crate::webhook::TlsSource::SelfManaged(l) if l.validate().is_ok()));
        assert_eq!(s.configuration, "kube-aws-iam-controller");
        let a = Args::try_parse_from([
            "x",
            "--webhook",
            "--webhook-namespace=ops",
            "--webhook-san=127.0.0.1,localhost",
            "--webhook-cert-file=/tls/tls.crt",
            "--webhook-key-file=/tls/tls.key",
        ])
        .expect("parse");
        let s = a.webhook.settings(Some("team".into()));
        assert_eq!(
            s.sans,
            [
                "kube-aws-iam-controller-webhook.ops.svc",
                "kube-aws-iam-controller-webhook.ops.svc.cluster.local",
                "127.0.0.1",
                "localhost"
            ]
        );
        assert!(matches!(s.tls, crate::webhook::TlsSource::Files { .. }));
        assert!(Args::try_parse_from(["x", "--webhook-cert-file=/a"]).is_err());
    }

    #[test]
    fn bad_durations_are_rejected_with_a_hint() {
        let e = Args::try_parse_from(["x", "--refresh-limit=soon"]).expect_err("must fail");
        assert!(e.to_string().contains("15m"), "{e}");
    }
}
