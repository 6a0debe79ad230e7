//! Parses flags, sets up logging, and runs the controller (`runtime::run`) or the `bootstrap`
//! subcommand. Everything else is in the library.

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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_tracing(&args) {
        eprintln!("kube-aws-iam-controller: {e}");
        return ExitCode::from(2);
    }
    let result = match &args.command {
        Some(Command::Bootstrap(b)) => bootstrap::run(b).await.map(|seeded| println!("{seeded}")),
        None => runtime::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}
