//! SDK conformance: the real AWS SDKs, set up as docs/sdk-configuration.md says, read the
//! AWSIAMRole's Secret from a volume laid out by the kubelet's own code (tests/kubelet-volume:
//! defaultMode 0440, fsGroup), mounted read-only at /meta/aws-iam, each client in its own mount
//! namespace as a non-root user (as in its own container), and
//! - are the role from their first call (controller against moto),
//! - keep working, without a restart, while the controller rotates the credentials (against the
//!   STS double, which verifies every signature and rejects expired keys as STS does), and
//! - through the webhook's endpoint mode (the real `serve-credentials` sidecar on the volume,
//!   only the injected environment) do the same, with no shell involved,
//! - with `credentials.process` and through the endpoint, keep working at the kubelet's pace (180 s sessions, a 60 s
//!   refresh window, 20-40 s for a change to reach the volume); a negative control with a
//!   propagation slower than the refresh window shows the failures this test exists to catch.
//!
//! The clients are those of tests/sdk/ (built by scripts/sdk-clients.sh, or taken from
//! `KAIC_SDK_DIR`) and examples/sdk_rust_client.rs. With `credential_process` every SDK must
//! refresh; what each does with the static `credentials` file is measured and recorded. The
//! docs' table must agree with both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;

use kube_aws_iam_controller::controller::Settings;
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::webhook::endpoint;
use support::kubelet::{MOUNT, PodUser, SecretVolume, VolumeSpec, container};
use support::sidecar::Sidecar;
use support::sts_double::StsDouble;
use support::{
    BASE_ROLE_ARN, Controller, data, env, repo, role, sts_issuer, test_settings, wait_for,
};
/// The AWSIAMRole (and Secret) of every case; each case has its own namespace.
const APP: &str = "app";
/// How fast credentials rotate and reach the volume in a rotation run.
#[derive(Clone, Debug)]
struct Pace {
    /// In namespace names.
    slug: &'static str,
    /// Credentials the STS double issues expire this long after issue, whatever was asked for.
    lifetime: Duration,
    /// The controller renews this long before expiry.
    refresh: Duration,
    /// The kubelet's part: how soon a change of the Secret reaches the volume.
    volume: VolumeSpec,
    /// Calls of a run (the CLI's: each is a new `aws` process, about a second of CPU here) and
    /// the time between them.
    calls: u32,
    cli_calls: u32,
    interval: Duration,
}

impl Pace {
    /// Compressed: credentials live 22 s and are renewed 18 s before expiry (every 4 s, a little
    /// less with the controller's jitter), and reach the volume within half a second. A key read
    /// from the volume thus has at least about 17 s left, more than the 15 s before expiry at
    /// which the Java SDKs run `credential_process` again. 50 calls a second apart: an SDK that
    /// re-reads only at expiry (Go) gets its third key at most two lifetimes (44 s) after the
    /// first was issued, before the run ends.
    fn compressed() -> Pace {
        Pace {
            slug: "fast",
            lifetime: Duration::from_secs(22),
            refresh: Duration::from_secs(18),
            volume: VolumeSpec {
                delay: Duration::from_millis(200),
                jitter: Duration::from_millis(300),
                ..VolumeSpec::default()
            },
            calls: 50,
            cli_calls: 30,
            interval: Duration::from_secs(1),
        }
    }

    /// The kubelet's pace, with the real ratio of propagation to refresh window: 180 s sessions
    /// renewed 60 s before expiry (every 108-120 s), and 20-40 s for a change to reach the volume
    /// (the kubelet's pod sync period with its jitter). A call every 5 s for 340 s spans three
    /// keys.
    fn kubelet() -> Pace {
        Pace {
            slug: "kubelet",
            lifetime: Duration::from_secs(180),
            refresh: Duration::from_secs(60),
            volume: VolumeSpec {
                delay: Duration::from_secs(20),
                jitter: Duration::from_secs(20),
                ..VolumeSpec::default()
            },
            calls: 68,
            // Each `aws` call also takes 0.6-3 s of CPU here (idle to loaded), so fewer span as
            // long; 45 spanned only 253 s on an idle machine, too short for the third key.
            cli_calls: 60,
            interval: Duration::from_secs(5),
        }
    }

    /// The negative control: the same sessions, but a change needs 70-80 s to reach the volume,
    /// longer than the 60 s refresh window, so the volume still holds expired keys for 10-20 s
    /// after each expiry.
    fn slower_than_the_refresh_window() -> Pace {
        Pace {
            slug: "slow",
            volume: VolumeSpec {
                delay: Duration::from_secs(70),
                jitter: Duration::from_secs(10),
                ..VolumeSpec::default()
            },
            ..Pace::kubelet()
        }
    }

    fn calls(&self, sdk: Sdk) -> u32 {
        match sdk {
            Sdk::Cli => self.cli_calls,
            _ => self.calls,
        }
    }
}

/// Access keys a client must have used to count as refreshing: two switches.
const KEYS_FOR_REFRESH: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sdk {
    Cli,
    Boto3,
    Go,
    Js,
    Java2,
    Java1,
    Rust,
}

const SDKS: [Sdk; 7] = [
    Sdk::Cli,
    Sdk::Boto3,
    Sdk::Go,
    Sdk::Js,
    Sdk::Java2,
    Sdk::Java1,
    Sdk::Rust,
];

impl Sdk {
    /// The name in the docs' table, in `bin/<name>` of the client directory and in namespaces.
    fn name(self) -> &'static str {
        match self {
            Sdk::Cli => "cli",
            Sdk::Boto3 => "boto3",
            Sdk::Go => "go",
            Sdk::Js => "js",
            Sdk::Java2 => "java2",
            Sdk::Java1 => "java1",
            Sdk::Rust => "rust",
        }
    }

    /// The one region variable the SDK reads (the AWS CLI v1 and boto3 ignore `AWS_REGION`).
    fn region_variable(self) -> &'static str {
        match self {
            Sdk::Cli | Sdk::Boto3 => "AWS_DEFAULT_REGION",
            _ => "AWS_REGION",
        }
    }

    /// The variables that point the SDK at the volume's file for `config` (for the endpoint:
    /// what the webhook injects, but `AWS_EC2_METADATA_DISABLED`, which every run sets).
    fn file_variables(self, config: Config) -> Vec<(&'static str, String)> {
        let file = format!("{MOUNT}/{}", config.file());
        match (self, config) {
            (_, Config::Endpoint) => endpoint::environment(None)
                .into_iter()
                .filter(|(k, _)| *k != "AWS_EC2_METADATA_DISABLED")
                .collect(),
            // Java 1.x reads neither AWS_CONFIG_FILE nor AWS_SHARED_CREDENTIALS_FILE.
            (Sdk::Java1, _) => vec![("AWS_CREDENTIAL_PROFILES_FILE", file)],
            // As deploy/example-app.yaml sets them.
            (_, Config::CredentialProcess) => vec![
                ("AWS_CONFIG_FILE", file.clone()),
                ("AWS_SHARED_CREDENTIALS_FILE", file),
            ],
            (_, Config::StaticFile) => vec![("AWS_SHARED_CREDENTIALS_FILE", file)],
        }
    }

    /// The client prints the access key it signed with (the CLI client prints `-`).
    fn prints_key(self) -> bool {
        self != Sdk::Cli
    }
}

/// How the pod points the SDK at the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    /// `credentials.process`: `credential_process = cat /meta/aws-iam/credentials.json`.
    CredentialProcess,
    /// `credentials`: static keys (with `aws_expiration`).
    StaticFile,
    /// The webhook's endpoint mode: the `serve-credentials` sidecar reads `credentials.json`,
    /// the SDK only gets `AWS_CONTAINER_CREDENTIALS_FULL_URI` and the token file.
    Endpoint,
}

const CONFIGS: [Config; 3] = [
    Config::CredentialProcess,
    Config::StaticFile,
    Config::Endpoint,
];

impl Config {
    fn file(self) -> &'static str {
        match self {
            Config::CredentialProcess => "credentials.process",
            Config::StaticFile => "credentials",
            Config::Endpoint => "credentials.json",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Config::CredentialProcess => "process",
            Config::StaticFile => "static",
            Config::Endpoint => "endpoint",
        }
    }

    /// The column prefix in the docs' table.
    fn column(self) -> &'static str {
        match self {
            Config::CredentialProcess => "credential_process",
            Config::StaticFile => "static file",
            Config::Endpoint => "endpoint",
        }
    }
}

/// What a long-running client did while the controller rotated the credentials under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Switched to the renewed keys (at least twice) without a failed call.
    Refreshes,
    /// Kept the keys it read first; its calls fail once those expire.
    NoRefresh,
    /// Switched keys, but calls failed (or it switched fewer times than the controller rotated).
    Fails,
}

impl Outcome {
    /// The cell in the docs' table.
    fn cell(self) -> &'static str {
        match self {
            Outcome::Refreshes => "yes",
            Outcome::NoRefresh => "no",
            Outcome::Fails => "fails",
        }
    }

    fn from_cell(cell: &str) -> Option<Outcome> {
        [Outcome::Refreshes, Outcome::NoRefresh, Outcome::Fails]
            .into_iter()
            .find(|r| r.cell() == cell)
    }

    /// Classifies a run from the keys its successful calls were signed with and its failures.
    fn classify(keys_used: usize, failed_calls: usize) -> Outcome {
        if failed_calls == 0 && keys_used >= KEYS_FOR_REFRESH {
            Outcome::Refreshes
        } else if keys_used <= 1 {
            Outcome::NoRefresh
        } else {
            Outcome::Fails
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------------

/// The built clients: `bin/<sdk>` of scripts/sdk-clients.sh and the Rust example.
struct Clients {
    dir: PathBuf,
    rust: PathBuf,
}

impl Clients {
    fn program(&self, sdk: Sdk) -> PathBuf {
        match sdk {
            Sdk::Rust => self.rust.clone(),
            _ => self.dir.join("bin").join(sdk.name()),
        }
    }
}

static CLIENTS: OnceCell<Arc<Clients>> = OnceCell::const_new();

async fn clients() -> Arc<Clients> {
    CLIENTS
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let clients = Clients {
                    dir: sdk_client_dir(),
                    rust: rust_client(),
                };
                for sdk in SDKS {
                    let program = clients.program(sdk);
                    assert!(
                        is_executable(&program),
                        "the {} client is missing: {} is not an executable file. Fix: \
                         scripts/sdk-clients.sh {} (or run scripts/test.sh, which builds them all)",
                        sdk.name(),
                        program.display(),
                        sdk.name()
                    );
                }
                Arc::new(clients)
            })
            .await
            .expect("finding the SDK clients")
        })
        .await
        .clone()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `KAIC_SDK_DIR` (scripts/test.sh sets it), else what scripts/sdk-clients.sh builds or finds
/// in its cache.
fn sdk_client_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KAIC_SDK_DIR") {
        return PathBuf::from(dir);
    }
    let out = Command::new(repo().join("scripts/sdk-clients.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/sdk-clients.sh runs");
    assert!(
        out.status.success(),
        "scripts/sdk-clients.sh could not build every SDK client (its messages are above); \
         set KAIC_SDK_DIR to a directory with bin/{{cli,boto3,go,js,java2,java1}} to use \
         clients built elsewhere"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The aws-sdk-rust client, built from the current source: `cargo test --all-targets` has
/// built it already (then this is a no-op), `cargo test --test sdk` has not.
fn rust_client() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Without the variables Cargo sets for running this test: build scripts that watch them
    // (ring's watches CARGO_MANIFEST_DIR) would make this build and the next plain one rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(&*name);
        }
    }
    let out = cmd
        .current_dir(repo())
        .args([
            "build",
            "--locked",
            "--example",
            "sdk_rust_client",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "`cargo build --example sdk_rust_client` failed (see above)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "sdk_rust_client")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reports the sdk_rust_client executable")
}

/// What a client printed.
#[derive(Debug, Default)]
struct Output {
    /// `OK <arn> <access_key_id>` lines: (arn, key).
    ok: Vec<(String, String)>,
    /// `ERR <message>` lines.
    err: Vec<String>,
    success: bool,
    stderr: String,
}

impl Output {
    fn calls(&self) -> usize {
        self.ok.len() + self.err.len()
    }

    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Runs `sdk`'s client as a container would: `volume` read-only at /meta/aws-iam in its own
/// mount namespace, as the pod's non-root user, an empty home, and only the documented
/// variables plus the local STS endpoint; `count` calls, `interval` apart. In endpoint mode
/// the Secret is not mounted (an empty directory is), the pod's token volume is, and the
/// endpoint URL names the port of this pod's `sidecar` (each pod has its own loopback).
async fn run_client(
    clients: &Clients,
    sdk: Sdk,
    config: Config,
    volume: &Path,
    sts_endpoint: &str,
    (count, interval): (u32, Duration),
    sidecar: Option<&Sidecar>,
) -> Result<Output, String> {
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let no_secret = tempfile::tempdir().map_err(|e| e.to_string())?;
    let program = clients.program(sdk);
    let volume = match config {
        Config::Endpoint => no_secret.path(),
        _ => volume,
    };
    let mut cmd = container(
        volume,
        PodUser::default(),
        Some(home.path()),
        &program.to_string_lossy(),
    );
    cmd.args([
        "--count".to_string(),
        count.to_string(),
        "--interval-ms".into(),
        interval.as_millis().to_string(),
    ]);
    let mut vars = sdk.file_variables(config);
    if config == Config::Endpoint {
        let sidecar = sidecar.ok_or("endpoint mode without a sidecar")?;
        cmd = sidecar.app(&cmd);
        for (k, v) in &mut vars {
            if *k == "AWS_CONTAINER_CREDENTIALS_FULL_URI" {
                *v = sidecar.full_uri();
            }
        }
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // The SDKs read it themselves; Java 1.x does not, its client passes it on (tests/sdk/README.md).
        .env("AWS_ENDPOINT_URL_STS", sts_endpoint)
        .env(sdk.region_variable(), "us-east-1")
        .envs(vars)
        .stdin(Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    // A safety net only: a run takes `count` intervals plus the client's start.
    let limit = (interval + Duration::from_secs(3)) * count + Duration::from_secs(60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| format!("the client did not finish within {limit:?}"))?
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut output = Output {
        success: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ..Output::default()
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["OK", arn, key] => output.ok.push((arn.to_string(), key.to_string())),
            ["ERR", ..] => output.err.push(line[4..].to_string()),
            _ => return Err(format!("unexpected output line {line:?}")),
        }
    }
    if output.calls() != count as usize || output.success != output.err.is_empty() {
        return Err(format!(
            "the client made {} of {count} calls and exited with {}; stderr:\n{}",
            output.calls(),
            out.status,
            output.stderr_tail()
        ));
    }
    Ok(output)
}

fn assumed_role_arn(role_name: &str, ns: &str) -> String {
    format!("arn:aws:sts::123456789012:assumed-role/{role_name}/{ns}@{APP}")
}

/// Runs `case` for every item at once, each in its own task, and returns each result in order
/// (a panic becomes an `Err` with its message).
async fn in_parallel<I, T, F, Fut>(items: Vec<I>, case: F) -> Vec<(I, Result<T, String>)>
where
    I: Copy + Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let tasks: Vec<_> = items.iter().map(|&i| (i, tokio::spawn(case(i)))).collect();
    let mut results = Vec::new();
    for (i, task) in tasks {
        let result = task.await.unwrap_or_else(|e| {
            Err(match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
                Err(e) => e.to_string(),
            })
        });
        results.push((i, result));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// start
// ---------------------------------------------------------------------------------------------

/// One SDK's first call with `credential_process` or through the endpoint, against moto: the
/// role, with the Secret's key.
async fn start(
    client: Client,
    clients: Arc<Clients>,
    (sdk, config): (Sdk, Config),
) -> Result<(), String> {
    let env = env().await;
    let role_name = format!("sdk-start-{}-{}", sdk.name(), config.slug());
    let ns = env.namespace(&client, &role_name).await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&env.moto_endpoint))
        .start()
        .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role(APP, &role_name, 3600))
        .await
        .map_err(|e| format!("create AWSIAMRole: {e}"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = wait_for("the Secret", || async {
        secrets.get_opt(APP).await.ok().flatten()
    })
    .await;
    let volume = SecretVolume::start(env, &ns, APP, &VolumeSpec::default()).await;
    let sidecar = match config {
        Config::Endpoint => Some(Sidecar::start(&volume.dir).await),
        _ => None,
    };
    let out = run_client(
        &clients,
        sdk,
        config,
        &volume.dir,
        &env.moto_endpoint,
        (1, Duration::from_secs(1)),
        sidecar.as_ref(),
    )
    .await;
    drop(sidecar);
    ctl.stop().await;
    let out = out?;
    let key: serde_json::Value = serde_json::from_str(&data(&secret, "credentials.json"))
        .map_err(|e| format!("credentials.json: {e}"))?;
    let key = if sdk.prints_key() {
        key["AccessKeyId"].as_str().unwrap_or_default()
    } else {
        "-"
    };
    let expected = (assumed_role_arn(&role_name, &ns), key.to_string());
    match (out.ok.as_slice(), out.err.as_slice()) {
        ([ok], []) if *ok == expected => Ok(()),
        _ => Err(format!(
            "expected `OK {} {}`, got {:?} {:?}; stderr:\n{}",
            expected.0,
            expected.1,
            out.ok,
            out.err,
            out.stderr_tail()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_is_the_role_from_its_first_call() {
    let env = env().await;
    let client = env.client().await;
    let clients = clients().await;
    let cases: Vec<(Sdk, Config)> = SDKS
        .iter()
        .flat_map(|&sdk| [Config::CredentialProcess, Config::Endpoint].map(|c| (sdk, c)))
        .collect();
    let results = in_parallel(cases, |case| start(client.clone(), clients.clone(), case)).await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|((sdk, config), r)| {
            r.err()
                .map(|e| format!("{} / {}: {e}", sdk.name(), config.column()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// rotation
// ---------------------------------------------------------------------------------------------

/// What one SDK did with one configuration while the controller rotated the credentials.
#[derive(Debug)]
struct Measured {
    refresh: Outcome,
    calls: usize,
    failed_calls: usize,
    first_failure: Option<String>,
    /// Distinct access keys the successful calls were signed with, as STS saw them.
    keys_used: usize,
    /// Credentials the controller issued while the client ran.
    rotations: usize,
    /// How long the client ran.
    took: Duration,
    /// How long each change of the Secret took to reach the volume after the kubelet code saw it.
    propagation: Vec<Duration>,
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} keys over {} calls in {} s, {} failed, {} rotations)",
            self.refresh.cell(),
            self.keys_used,
            self.calls,
            self.took.as_secs(),
            self.failed_calls,
            self.rotations
        )?;
        if let (Some(min), Some(max)) =
            (self.propagation.iter().min(), self.propagation.iter().max())
        {
            write!(
                f,
                "; propagation {:.1}-{:.1} s",
                min.as_secs_f64(),
                max.as_secs_f64()
            )?;
        }
        if let Some(e) = &self.first_failure {
            write!(f, "; first failure: {e}")?;
        }
        Ok(())
    }
}

async fn rotation(
    client: Client,
    clients: Arc<Clients>,
    sts: Arc<StsDouble>,
    pace: Arc<Pace>,
    (sdk, config): (Sdk, Config),
) -> Result<Measured, String> {
    let env = env().await;
    let case = format!("sdk-{}-{}-{}", pace.slug, sdk.name(), config.slug());
    let ns = env.namespace(&client, &case).await;
    let role_arn = format!("{BASE_ROLE_ARN}{case}");
    sts.lifetime(&role_arn, pace.lifetime);
    let settings = Settings {
        refresh_limit: pace.refresh,
        ..test_settings()
    };
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role(APP, &case, 3600))
        .await
        .map_err(|e| format!("create AWSIAMRole: {e}"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    wait_for("the Secret", || async {
        secrets.get_opt(APP).await.ok().flatten()
    })
    .await;
    // The kubelet's part: its code keeps the volume up to date, at the pace's delay.
    let volume = SecretVolume::start(env, &ns, APP, &pace.volume).await;
    let sidecar = match config {
        Config::Endpoint => Some(Sidecar::start(&volume.dir).await),
        _ => None,
    };
    let issued_before = sts.issued_keys(&role_arn).len();
    let calls = (pace.calls(sdk), pace.interval);
    let started = tokio::time::Instant::now();
    let out = run_client(
        &clients,
        sdk,
        config,
        &volume.dir,
        &sts.endpoint,
        calls,
        sidecar.as_ref(),
    )
    .await;
    let sidecar_log = sidecar.as_ref().map(Sidecar::log);
    drop(sidecar);
    let rotations = sts.issued_keys(&role_arn).len() - issued_before;
    let took = started.elapsed();
    let propagation = volume
        .projections()
        .iter()
        .skip(1)
        .map(|p| p.delay)
        .collect();
    drop(volume);
    ctl.stop().await;
    let out = out.map_err(|e| match &sidecar_log {
        Some(log) => format!("{e}\nsidecar log:\n{log}"),
        None => e,
    })?;

    let expected_arn = assumed_role_arn(&case, &ns);
    if let Some((arn, _)) = out.ok.iter().find(|(arn, _)| *arn != expected_arn) {
        return Err(format!("a call was {arn}, not {expected_arn}"));
    }
    // The keys STS saw on the successful calls: the CLI client cannot print them.
    let issued: BTreeSet<String> = sts.issued_keys(&role_arn).into_iter().collect();
    let used: BTreeSet<String> = sts
        .requests()
        .into_iter()
        .filter(|r| r.action == "GetCallerIdentity" && r.status == 200)
        .filter_map(|r| r.caller_access_key)
        .filter(|k| issued.contains(k))
        .collect();
    if sdk.prints_key() {
        let printed: BTreeSet<String> = out.ok.iter().map(|(_, k)| k.clone()).collect();
        if printed != used {
            return Err(format!(
                "the client printed keys {printed:?}, STS answered calls signed with {used:?}"
            ));
        }
    }
    if rotations < 2 {
        return Err(format!(
            "the controller renewed the credentials only {rotations} times while the client ran"
        ));
    }
    Ok(Measured {
        refresh: Outcome::classify(used.len(), out.err.len()),
        calls: out.calls(),
        failed_calls: out.err.len(),
        first_failure: out.err.first().cloned(),
        keys_used: used.len(),
        rotations,
        took,
        propagation,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_keep_working_across_rotations_as_documented() {
    let env = env().await;
    let client = env.client().await;
    let clients = clients().await;
    let sts = Arc::new(StsDouble::start().await);
    let pace = Arc::new(Pace::compressed());
    let cases: Vec<(Sdk, Config)> = SDKS
        .iter()
        .flat_map(|&sdk| CONFIGS.map(|config| (sdk, config)))
        .collect();
    let results = in_parallel(cases, |case| {
        rotation(
            client.clone(),
            clients.clone(),
            sts.clone(),
            pace.clone(),
            case,
        )
    })
    .await;
    let documented = documented_matrix();

    let mut failures = Vec::new();
    let mut report = String::from("measured SDK x configuration:\n");
    for ((sdk, config), result) in &results {
        let name = format!("{} / {}", sdk.name(), config.column());
        match result {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(m) => {
                report.push_str(&format!("  {name}: {m}\n"));
                if *config != Config::StaticFile && m.refresh != Outcome::Refreshes {
                    failures.push(format!(
                        "{name}: with {} the SDK must switch to the renewed credentials \
                         without a failed call: {m}",
                        config.column()
                    ));
                }
                let doc = documented.get(&(*sdk, *config));
                if doc != Some(&m.refresh) {
                    failures.push(format!(
                        "{name}: docs/sdk-configuration.md says refresh `{}`, measured: {m}",
                        doc.map_or("(no row)", |d| d.cell())
                    ));
                }
            }
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
}

/// Every SDK reading `credentials.process`, and every SDK asking the endpoint sidecar, at the
/// kubelet's pace: zero failed calls, and the renewed keys used. The runs of all SDKs go side
/// by side (about six minutes in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_reading_credentials_process_survives_rotation_at_the_kubelets_pace() {
    let env = env().await;
    let client = env.client().await;
    let clients = clients().await;
    let sts = Arc::new(StsDouble::start().await);
    let pace = Arc::new(Pace::kubelet());
    let cases: Vec<(Sdk, Config)> = SDKS
        .iter()
        .flat_map(|&sdk| [Config::CredentialProcess, Config::Endpoint].map(|c| (sdk, c)))
        .collect();
    let results = in_parallel(cases, |case| {
        rotation(
            client.clone(),
            clients.clone(),
            sts.clone(),
            pace.clone(),
            case,
        )
    })
    .await;
    let mut failures = Vec::new();
    let mut report = String::from("measured at the kubelet's pace:\n");
    for ((sdk, config), result) in &results {
        let name = format!("{} / {}", sdk.name(), config.column());
        match result {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(m) => {
                report.push_str(&format!("  {name}: {m}\n"));
                if m.failed_calls > 0 || m.refresh != Outcome::Refreshes {
                    failures.push(format!("{name}: {m}"));
                }
            }
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
}

/// The negative control of the test above: when a change needs longer to reach the volume than
/// the refresh window, the volume holds expired keys for a while after each expiry, and the
/// calls made then fail. Were the test above unable to fail, this one would not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_fails_when_propagation_is_slower_than_the_refresh_window() {
    let env = env().await;
    let client = env.client().await;
    let clients = clients().await;
    let sts = Arc::new(StsDouble::start().await);
    let pace = Arc::new(Pace::slower_than_the_refresh_window());
    // Two SDKs suffice: one that re-reads on every call, one that caches until expiry.
    let cases = vec![
        (Sdk::Boto3, Config::CredentialProcess),
        (Sdk::Rust, Config::CredentialProcess),
    ];
    let results = in_parallel(cases, |case| {
        rotation(
            client.clone(),
            clients.clone(),
            sts.clone(),
            pace.clone(),
            case,
        )
    })
    .await;
    let mut report = String::from("measured with propagation slower than the refresh window:\n");
    let mut problems = Vec::new();
    for ((sdk, _), result) in &results {
        match result {
            Err(e) => problems.push(format!("{}: {e}", sdk.name())),
            Ok(m) => {
                report.push_str(&format!("  {}: {m}\n", sdk.name()));
                if m.failed_calls == 0 {
                    problems.push(format!("{}: no call failed: {m}", sdk.name()));
                }
                if let Some(e) = &m.first_failure
                    && !e.to_lowercase().contains("expired")
                {
                    problems.push(format!("{}: failed, but not for expiry: {e}", sdk.name()));
                }
            }
        }
    }
    println!("{report}");
    assert!(problems.is_empty(), "{report}\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// docs/sdk-configuration.md
// ---------------------------------------------------------------------------------------------

const DOCS: &str = "docs/sdk-configuration.md";
const TABLE_HEADER: &str = "| SDK | version tested | region variable | credential_process environment | credential_process refresh | static file environment | static file refresh | endpoint environment | endpoint refresh |";

/// One row of the docs' support matrix, cells trimmed.
struct Row {
    version: String,
    region: Vec<String>,
    environment: BTreeMap<Config, Vec<String>>,
    refresh: BTreeMap<Config, String>,
}

/// The support matrix: the table under [`TABLE_HEADER`], keyed by SDK name.
fn docs_table() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(repo().join(DOCS)).expect(DOCS);
    let mut lines = text.lines().skip_while(|l| l.trim() != TABLE_HEADER);
    assert!(
        lines.next().is_some(),
        "{DOCS} has no table with the header\n{TABLE_HEADER}"
    );
    lines.next(); // the |---| line
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [
            sdk,
            version,
            region,
            process_env,
            process_refresh,
            static_env,
            static_refresh,
            endpoint_env,
            endpoint_refresh,
        ] = cells[..]
        else {
            panic!("{DOCS}: a row of the SDK table does not have 9 cells: {line}");
        };
        let row = Row {
            version: version.to_string(),
            region: code_spans(region),
            environment: [
                (Config::CredentialProcess, code_spans(process_env)),
                (Config::StaticFile, code_spans(static_env)),
                (Config::Endpoint, code_spans(endpoint_env)),
            ]
            .into(),
            refresh: [
                (Config::CredentialProcess, process_refresh.to_string()),
                (Config::StaticFile, static_refresh.to_string()),
                (Config::Endpoint, endpoint_refresh.to_string()),
            ]
            .into(),
        };
        assert!(
            rows.insert(sdk.trim_matches('`').to_string(), row)
                .is_none(),
            "{DOCS}: two rows for {sdk}"
        );
    }
    rows
}

/// The `code` spans of a cell, sorted.
fn code_spans(cell: &str) -> Vec<String> {
    let mut spans: Vec<String> = cell
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    spans.sort();
    spans
}

/// The refresh cells of the docs' table, per SDK and configuration.
fn documented_matrix() -> BTreeMap<(Sdk, Config), Outcome> {
    let table = docs_table();
    let mut matrix = BTreeMap::new();
    for sdk in SDKS {
        let Some(row) = table.get(sdk.name()) else {
            continue;
        };
        for config in CONFIGS {
            if let Some(r) = Outcome::from_cell(&row.refresh[&config]) {
                matrix.insert((sdk, config), r);
            }
        }
    }
    matrix
}

/// `KEY=VALUE` lines of tests/sdk/versions.env.
fn pinned_versions() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("tests/sdk/versions.env"))
        .expect("tests/sdk/versions.env");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The version of `package` in Cargo.lock.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).expect("Cargo.lock");
    let mut lines = lock.lines();
    let name = format!("name = \"{package}\"");
    lines.find(|l| *l == name);
    lines
        .next()
        .and_then(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{package} is not in Cargo.lock"))
        .to_string()
}

/// The versions the row of `sdk` must name: the pins the clients are built with.
fn tested_versions(sdk: Sdk, pins: &BTreeMap<String, String>) -> Vec<String> {
    let pin = |key: &str| {
        pins.get(key)
            .unwrap_or_else(|| panic!("tests/sdk/versions.env has no {key}"))
            .clone()
    };
    match sdk {
        Sdk::Cli => vec![pin("AWSCLI_VERSION")],
        Sdk::Boto3 => vec![pin("BOTO3_VERSION")],
        Sdk::Go => vec![
            pin("GO_AWS_SDK_GO_V2_VERSION"),
            pin("GO_AWS_SDK_GO_V2_CONFIG_VERSION"),
            pin("GO_AWS_SDK_GO_V2_STS_VERSION"),
        ],
        Sdk::Js => vec![pin("JS_AWS_SDK_CLIENT_STS_VERSION")],
        Sdk::Java2 => vec![pin("JAVA2_AWS_SDK_STS_VERSION")],
        Sdk::Java1 => vec![pin("JAVA1_AWS_JAVA_SDK_STS_VERSION")],
        Sdk::Rust => vec![locked_version("aws-config"), locked_version("aws-sdk-sts")],
    }
}

#[test]
fn the_sdk_table_documents_every_sdk_with_the_tested_environment_and_versions() {
    let table = docs_table();
    let pins = pinned_versions();
    let mut problems = Vec::new();
    let names: BTreeSet<&str> = table.keys().map(String::as_str).collect();
    let tested: BTreeSet<&str> = SDKS.iter().map(|s| s.name()).collect();
    if names != tested {
        problems.push(format!("rows {names:?}, tested SDKs {tested:?}"));
    }
    for sdk in SDKS {
        let Some(row) = table.get(sdk.name()) else {
            continue;
        };
        let name = sdk.name();
        for version in tested_versions(sdk, &pins) {
            if !row
                .version
                .split([' ', ',', '(', ')'])
                .any(|w| w == version)
            {
                problems.push(format!(
                    "{name}: version cell `{}` does not name {version}",
                    row.version
                ));
            }
        }
        if row.region != [sdk.region_variable()] {
            problems.push(format!(
                "{name}: region cell {:?}, the test sets `{}`",
                row.region,
                sdk.region_variable()
            ));
        }
        for config in CONFIGS {
            let mut set: Vec<String> = sdk
                .file_variables(config)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            set.sort();
            if row.environment[&config] != set {
                problems.push(format!(
                    "{name}: {} environment {:?}, the test sets {set:?}",
                    config.column(),
                    row.environment[&config]
                ));
            }
            if Outcome::from_cell(&row.refresh[&config]).is_none() {
                problems.push(format!(
                    "{name}: {} refresh is `{}`, not one of yes, no, fails",
                    config.column(),
                    row.refresh[&config]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{DOCS}:\n{}", problems.join("\n"));
}
