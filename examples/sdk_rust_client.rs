//! Test client for aws-sdk-rust, with the same contract as the clients in `tests/sdk/`
//! (see tests/sdk/README.md): ONE STS client built from the SDK's default configuration and
//! credential chain, as an app in a pod builds it, then `sts:GetCallerIdentity` `--count` times,
//! `--interval-ms` apart. One line per call on stdout: `OK <arn> <access_key_id>` or
//! `ERR <code: message>`; exit 0 iff every call was OK.
//!
//! The key column is the key the call was signed with: an interceptor reads it from the SigV4
//! `Authorization` header of the request that was sent. Asking the credentials provider after
//! the call would be a second lookup that could itself refresh.
//!
//! The SDK reads the region (`AWS_REGION`, then `AWS_DEFAULT_REGION`), the profile files and
//! the endpoint (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`) itself. tests/sdk.rs runs it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sts::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sts::error::{BoxError, ProvideErrorMetadata};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Number of GetCallerIdentity calls.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Milliseconds between calls.
    #[arg(long = "interval-ms", default_value_t = 0)]
    interval_ms: u64,
}

/// Records the access key id of each request as it is transmitted (after signing, once per attempt).
#[derive(Debug, Default, Clone)]
struct CaptureKey(Arc<Mutex<String>>);

impl CaptureKey {
    fn take(&self) -> String {
        std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            "-".into(),
        )
    }
}

impl Intercept for CaptureKey {
    fn name(&self) -> &'static str {
        "CaptureKey"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let auth = context
            .request()
            .headers()
            .get("authorization")
            .unwrap_or_default();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = key_from_auth(auth).to_string();
        Ok(())
    }
}

/// The access key id in `AWS4-HMAC-SHA256 Credential=AKID/date/region/sts/aws4_request, ...`.
fn key_from_auth(auth: &str) -> &str {
    auth.split_once("Credential=")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("-", |(key, _)| key)
}

/// The error and its sources, on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Test machines have no instance metadata service and must not send traffic to
    // 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
    if std::env::var_os("AWS_EC2_METADATA_DISABLED").is_none() {
        // SAFETY: no other thread exists yet; the runtime is built below.
        unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(kube_aws_iam_controller::aws::sts::https_client())
        .load()
        .await;
    let capture = CaptureKey::default();
    let sts_config = aws_sdk_sts::config::Builder::from(&config)
        .interceptor(capture.clone())
        .build();
    let client = aws_sdk_sts::Client::from_conf(sts_config);

    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for i in 0..args.count {
        if i > 0 && args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        capture.take();
        let line = match client.get_caller_identity().send().await {
            Ok(identity) => format!("OK {} {}", identity.arn().unwrap_or("-"), capture.take()),
            Err(err) => {
                failed = true;
                match err.code() {
                    Some(code) => format!("ERR {code}: {}", err.message().unwrap_or_default()),
                    None => format!("ERR SdkError: {}", one_line(&err)),
                }
            }
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
