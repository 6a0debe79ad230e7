//! Parses flags, builds the Kubernetes and STS clients, starts the admin server and the
//! controller, and waits for SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use kube_aws_iam_controller::admin::{self, AdminState};
use kube_aws_iam_controller::aws::arn::{self, BaseRoleArn};
use kube_aws_iam_controller::aws::sts::{StsIssuer, StsSettings, load_config};
use kube_aws_iam_controller::cli::{Args, LogFormat};
use kube_aws_iam_controller::controller::{self, Context, RunOptions, Settings, backoff::Backoff};
use kube_aws_iam_controller::metrics::Metrics;
use kube_aws_iam_controller::{Error, Result};

fn init_tracing(args: &Args) {
    let level = if args.runtime.debug {
        "debug"
    } else {
        args.runtime.log_level.as_str()
    };
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.runtime.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

async fn kube_client(args: &Args) -> Result<kube::Client> {
    let mut config = match &args.kube.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("kubeconfig {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("kubeconfig {path}: {e}")))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Error::Config(format!("no in-cluster or kubeconfig configuration: {e}"))
        })?,
    };
    if let Some(url) = &args.kube.apiserver {
        config.cluster_url = url
            .parse()
            .map_err(|e| Error::Config(format!("--apiserver {url}: {e}")))?;
    }
    Ok(kube::Client::try_from(config)?)
}

async fn base_role_arn(args: &Args, issuer: &StsIssuer) -> Result<Option<BaseRoleArn>> {
    if let Some(base) = &args.aws.base_role_arn {
        let base: BaseRoleArn = base
            .parse()
            .map_err(|e| Error::Config(format!("--base-role-arn: {e}")))?;
        return Ok(Some(base));
    }
    match issuer.caller_arn().await {
        Ok(identity) => match arn::base_from_identity(&identity) {
            Ok(base) => {
                info!(base_role_arn = %base, "base role ARN discovered from the controller's identity");
                Ok(Some(base))
            }
            Err(e) => {
                warn!(error = %e, "cannot derive a base role ARN; only full role ARNs will work");
                Ok(None)
            }
        },
        Err(e) => {
            warn!(error = %e, "GetCallerIdentity failed; only full role ARNs will work until restart");
            Ok(None)
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
    let client = kube_client(&args).await?;
    let sdk_config = load_config(&StsSettings {
        region: args.aws.sts_region.clone(),
        endpoint: args.aws.sts_endpoint.clone(),
        timeout: args.aws.sts_timeout,
    })
    .await;
    let issuer = StsIssuer::new(&sdk_config, args.aws.sts_timeout);
    let base = base_role_arn(&args, &issuer).await?;

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let admin_state = AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        alive: alive.clone(),
    };
    let admin_addr = args.runtime.admin_addr;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Error::Config(format!("--admin-addr {admin_addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin::router(admin_state)).await {
            error!(error = %e, "admin server stopped");
        }
    });

    let reporter = Reporter {
        controller: "kube-aws-iam-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        issuer: Arc::new(issuer),
        settings: Settings {
            refresh_limit: args.controller.refresh_limit,
            base_role_arn: base,
            backoff_base: args.controller.backoff_base,
            max_backoff: args.controller.max_backoff,
        },
        metrics,
        backoff: Backoff::default(),
    });
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
    controller::run(ctx, opts, ready, shutdown_signal()).await;
    alive.store(false, Ordering::SeqCst);
    info!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(&args);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}
