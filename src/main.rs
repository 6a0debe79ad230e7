//! Parses flags, sets up logging, and runs the controller (`runtime::run`), the `bootstrap`
//! subcommand or the `serve-credentials` sidecar. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use tracing_subscriber::EnvFilter;

use kube_aws_iam_controller::bootstrap;
use kube_aws_iam_controller::cli::{Args, Command, LogFormat};
use kube_aws_iam_controller::runtime;

fn init_tracing(args: &Args) -> Result<(), String> {
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

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_tracing(&args) {
        eprintln!("kube-aws-iam-controller: {e}");
        return ExitCode::from(2);
    }
    // The credentials sidecar runs on its own single-threaded runtime (a pod pays for it).
    let result = match &args.command {
        Some(Command::ServeCredentials(s)) => kube_aws_iam_controller::serve::main(s),
        Some(Command::Bootstrap(_)) | None => controller_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn controller_main(args: Args) -> kube_aws_iam_controller::Result<()> {
    if let Some(Command::Bootstrap(b)) = &args.command {
        return bootstrap::run(b).await.map(|seeded| println!("{seeded}"));
    }
    runtime::run(args).await
}
