//! Parses flags, builds the Kubernetes and STS clients, starts the admin server and the
//! controller, and waits for SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use kube_aws_iam_controller::admin::{self, AdminState};
use kube_aws_iam_controller::aws::arn::{self, BaseRoleArn};
use kube_aws_iam_controller::aws::discover;
use kube_aws_iam_controller::aws::imds::ImdsSettings;
use kube_aws_iam_controller::aws::sts::{StsIssuer, StsSettings, controller_issuer, load_config};
use kube_aws_iam_controller::bootstrap;
use kube_aws_iam_controller::cli::{Args, Command, LogFormat};
use kube_aws_iam_controller::controller::leader::{
    self, KubeLease, Leadership, LeaseSettings, Resign,
};
use kube_aws_iam_controller::controller::learned::Learned;
use kube_aws_iam_controller::controller::policy::{PolicyContext, learn_identity};
use kube_aws_iam_controller::controller::{self, Context, RunOptions, Settings, Wiring};
use kube_aws_iam_controller::metrics::Metrics;
use kube_aws_iam_controller::policy::Guard;
use kube_aws_iam_controller::{Error, Result};

fn init_tracing(args: &Args) -> std::result::Result<(), String> {
    let level = if args.runtime.debug {
        "debug"
    } else {
        args.runtime.log_level.as_str()
    };
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.runtime.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    Ok(())
}

/// Settles the base role ARN from IMDS or STS, retrying while STS cannot be asked, and records
/// it in `learned`; `None` when the identity yields no base (only full ARNs work then).
async fn discover_base_role_arn(
    args: &Args,
    issuer: StsIssuer,
    learned: Arc<Learned>,
) -> Option<BaseRoleArn> {
    let imds = ImdsSettings::resolve(
        args.sts.imds_endpoint.as_deref(),
        |k| std::env::var(k).ok(),
        Duration::from_secs(1),
    );
    let mut delay = Duration::from_secs(1);
    loop {
        match discover::try_base_role_arn(imds.as_ref(), &issuer).await {
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
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn run(args: Args) -> Result<()> {
    let client = kube_aws_iam_controller::kubeclient::client(
        args.kube.kubeconfig.as_deref(),
        args.kube.apiserver.as_deref(),
    )
    .await?;
    let flag_base: Option<BaseRoleArn> = match &args.aws.base_role_arn {
        Some(base) => Some(
            base.parse()
                .map_err(|e| Error::Config(format!("--base-role-arn: {e}")))?,
        ),
        None => None,
    };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kube-aws-iam-controller".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let lease = args.leader.leader_elect.then(|| LeaseSettings {
        name: args.leader.lease_name.clone(),
        namespace: args.leader.lease_namespace.clone().unwrap_or_else(|| {
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into())
        }),
        identity: identity.clone(),
        duration: args.leader.lease_duration,
        grace: args.leader.lease_grace,
    });
    if let Some(lease) = &lease {
        lease.validate().map_err(Error::Config)?;
    }

    // The admin server answers before anything slow (discovery, STS) happens.
    let metrics = Arc::new(Metrics::new());
    let (leadership, elector) = match &lease {
        Some(lease) => {
            let (leadership, elector) = leader::elected(lease, metrics.clone());
            (leadership, Some(elector))
        }
        None => (Leadership::always(), None),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let admin_state = AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        alive: alive.clone(),
        leadership: leadership.clone(),
        webhook: args.webhook.webhook.then(admin::WebhookCerts::default),
    };
    let webhook_certs = admin_state.webhook.clone();
    let admin_addr = args.runtime.admin_addr;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Error::Config(format!("--admin-addr {admin_addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin::router(admin_state)).await {
            error!(error = %e, "admin server stopped");
        }
    });

    let sdk_config = load_config(&StsSettings {
        region: args.aws.sts_region.clone(),
        endpoint: args.aws.sts_endpoint.clone(),
        timeout: args.aws.sts_timeout,
        credentials_file: args.sts.credentials_file.clone(),
    })
    .await;
    let own_sts = StsIssuer::new(&sdk_config, args.aws.sts_timeout);
    let learned = Arc::new(Learned::new(
        flag_base.clone(),
        args.sts.assume_role.is_some(),
    ));
    let discovery = match &flag_base {
        Some(_) => None,
        None => {
            let (args, issuer, learned) = (
                args.clone(),
                StsIssuer::new(&sdk_config, args.aws.sts_timeout),
                learned.clone(),
            );
            Some(tokio::spawn(async move {
                discover_base_role_arn(&args, issuer, learned).await
            }))
        }
    };
    let assume_role = match &args.sts.assume_role {
        Some(r) => {
            // A bare --assume-role name needs the base before anything can be issued.
            let base = match (learned.base_role_arn(), discovery) {
                (Some(base), _) => Some(base),
                (None, Some(d)) if !r.trim().starts_with("arn:") => d.await.ok().flatten(),
                (None, _) => None,
            };
            Some(
                arn::resolve(r, base.as_ref())
                    .map_err(|e| Error::Config(format!("--assume-role: {e}")))?,
            )
        }
        None => None,
    };
    let mut guard = Guard::new(args.policy.allowed_account_ids.clone());
    if let Some(r) = &assume_role {
        info!(assume_role = %r, "AWSIAMRoles are assumed from a session of this role (at most 1 hour each)");
        guard.protect_role(r, "--assume-role");
    }
    let own = args
        .policy
        .own_awsiamrole
        .split_once('/')
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| {
            Error::Config(format!(
                "--own-awsiamrole {:?}: expected NAMESPACE/NAME",
                args.policy.own_awsiamrole
            ))
        })?;
    let issuer = controller_issuer(
        &sdk_config,
        args.aws.sts_timeout,
        assume_role.as_ref(),
        args.sts.rate_limit(),
    )
    .await?;

    let (resign_tx, resign_rx) = tokio::sync::oneshot::channel::<Resign>();
    let election = match (lease, elector) {
        (Some(lease), Some(elector)) => {
            info!(lease = %lease.name, namespace = %lease.namespace, identity, "joining leader election");
            let store = KubeLease::new(client.clone(), &lease);
            Some(tokio::spawn(leader::run(
                store,
                lease,
                elector,
                async move { resign_rx.await.unwrap_or(Resign::LetExpire) },
            )))
        }
        _ => None,
    };
    let settings = Settings {
        refresh_limit: args.controller.refresh_limit,
        backoff_base: args.controller.backoff_base,
        max_backoff: args.controller.max_backoff,
        sts_options: args.sts.options(),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        issuer,
        settings,
        Wiring {
            metrics,
            leader: leadership,
            policy: PolicyContext::new(args.policy.namespace_policy, Some(own), None),
            learned,
            instance: identity,
        },
    ));
    // --- admission webhook (src/webhook/, docs/webhook.md): every replica serves admissions,
    // only the leader rotates the certificate.
    let _webhook = if args.webhook.webhook {
        let leader = ctx.clone();
        Some(
            kube_aws_iam_controller::webhook::start(
                ctx.client.clone(),
                args.webhook.settings(args.kube.namespace.clone()),
                ctx.metrics.clone(),
                Arc::new(move || leader.is_leader()),
                Some(kube_aws_iam_controller::webhook::policy_check(ctx.clone())),
            )
            .await?,
        )
        .inspect(|hook| {
            if let Some(slot) = &webhook_certs {
                let _ = slot.set(hook.certs.clone());
            }
        })
    } else {
        None
    };
    // --- end admission webhook
    info!(
        namespace_policy = args.policy.namespace_policy.as_str(),
        "namespace role policy"
    );
    {
        let ctx = ctx.clone();
        tokio::spawn(async move { learn_identity(&ctx.policy, &own_sts, guard).await });
    }
    info!(
        namespace = args.kube.namespace.as_deref().unwrap_or("<all>"),
        refresh_limit = ?args.controller.refresh_limit,
        admin = %admin_addr,
        "starting"
    );
    let opts = RunOptions {
        namespace: args.kube.namespace.clone(),
        concurrency: args.controller.concurrency,
        janitor_interval: args.controller.interval,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });
    let mut stopping = stop_rx.clone();
    let graceful = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let controller = controller::run(ctx, opts, ready, graceful);
    let mut stopping = stop_rx.clone();
    let deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(args.leader.shutdown_timeout).await;
    };
    // Only once nothing is in flight may another replica start writing.
    let resign = tokio::select! {
        () = controller => Resign::Release,
        () = deadline => {
            warn!("in-flight reconciles did not finish within --shutdown-timeout; the lease is left to expire");
            Resign::LetExpire
        }
    };
    alive.store(false, Ordering::SeqCst);
    if let Some(election) = election {
        let _ = resign_tx.send(resign);
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    info!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_tracing(&args) {
        eprintln!("kube-aws-iam-controller: {e}");
        return ExitCode::from(2);
    }
    let result = match &args.command {
        Some(Command::Bootstrap(b)) => bootstrap::run(b).await.map(|seeded| println!("{seeded}")),
        None => run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}
