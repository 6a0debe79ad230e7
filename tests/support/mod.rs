//! Test harness: a real etcd + kube-apiserver (client-certificate admin, RBAC on) and moto's
//! STS server on free 127.0.0.1 ports, one set per test binary; a namespace per test; the
//! controller run in-process or as the built binary; Secret volumes laid out by the kubelet's
//! own code ([`kubelet`]).
//!
//! Every process is started under a small watchdog shell that kills it when the test binary
//! exits, however it exits (end, panic, timeout, SIGKILL), so nothing is left running.
#![allow(dead_code)]
// The watchdog shells live exactly as long as the test binary; nothing waits for them.
#![allow(clippy::zombie_processes)]

pub mod helm;
pub mod kubelet;
pub mod node;
pub mod pod;
pub mod proxy;
pub mod sts_double;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use aws_credential_types::Credentials;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use tokio::sync::{OnceCell, oneshot};

use kube_aws_iam_controller::aws::CredentialIssuer;
use kube_aws_iam_controller::aws::sts::{StsIssuer, https_client};
use kube_aws_iam_controller::controller::policy::PolicyContext;
use kube_aws_iam_controller::controller::{self, Context, RunOptions, Settings, Wiring};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::metrics::Metrics;
use kube_aws_iam_controller::policy::{Guard, PERMITTED_ANNOTATION, PolicyMode};

pub const ACCOUNT: &str = "123456789012";
pub const BASE_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("KAIC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/kube-aws-iam-controller")
        })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

const WATCHDOG: &str = r#"
parent=$1; shift
"$@" &
child=$!
trap 'kill $child 2>/dev/null; wait $child; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
kill "$child" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$child" 2>/dev/null || break; sleep 0.2; done
kill -9 "$child" 2>/dev/null
wait "$child"
rc=$?
if [ -n "$KAIC_CLEANUP_DIR" ]; then rm -rf "$KAIC_CLEANUP_DIR"; fi
exit $rc
"#;

/// Starts `program` under the watchdog; its output goes to `log`.
pub fn spawn_watched(
    program: &Path,
    args: &[String],
    log: &Path,
    envs: &[(&str, String)],
) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Only the variables a test passes: no AWS_* from the developer's shell.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

fn check_binary(path: &Path, fix: &str) {
    let ok = Command::new(path)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} is missing or does not run. Fix: {fix} (or run the README's test command, which does)",
        path.display()
    );
}

/// Where the control plane binaries are.
pub fn control_plane_dir() -> PathBuf {
    std::env::var_os("KAIC_CONTROL_PLANE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("control-plane").join("v1.37.2"))
}

/// The Python virtual environment with moto, boto3 and the AWS CLI.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("KAIC_VENV") {
        return PathBuf::from(v);
    }
    let out = Command::new(repo().join("scripts/python-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/python-env.sh runs");
    assert!(
        out.status.success(),
        "scripts/python-env.sh failed: cannot create the Python environment (moto, boto3, AWS CLI)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The shared local control plane and moto, started once per test binary.
pub struct Env {
    pub dir: PathBuf,
    pub api_url: String,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub kubeconfig: PathBuf,
    pub moto_endpoint: String,
    pub venv: PathBuf,
    pub etcd_url: String,
    apiserver_args: Vec<String>,
    apiserver: std::sync::Mutex<Option<Child>>,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

/// The control plane for this test binary (started on first use).
pub async fn env() -> &'static Env {
    env_with(&[]).await
}

/// [`env`] with extra kube-apiserver flags, for a test binary all of whose tests pass the same
/// ones (the first caller starts the control plane).
pub async fn env_with(apiserver_flags: &'static [&'static str]) -> &'static Env {
    ENV.get_or_init(|| start_env(apiserver_flags)).await
}

fn certs(dir: &Path) -> (String, String, String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.distinguished_name
        .push(DnType::CommonName, "kaic-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);

    let serving_key = KeyPair::generate().expect("key");
    let mut serving =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .expect("serving cert");

    let admin_key = KeyPair::generate().expect("key");
    let mut admin = CertificateParams::new(Vec::<String>::new()).expect("params");
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).expect("admin cert");

    let sa_key = KeyPair::generate().expect("sa key");
    for (name, content) in [
        ("ca.crt", ca_cert.pem()),
        ("serving.crt", serving_cert.pem()),
        ("serving.key", serving_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
    ] {
        std::fs::write(dir.join(name), content).expect("write cert");
    }
    (
        ca_cert.pem(),
        admin_cert.pem(),
        admin_key.serialize_pem(),
        String::new(),
        String::new(),
    )
}

async fn start_env(apiserver_flags: &'static [&'static str]) -> Env {
    let cp = control_plane_dir();
    check_binary(&cp.join("etcd"), "scripts/build-control-plane.sh");
    check_binary(&cp.join("kube-apiserver"), "scripts/build-control-plane.sh");
    let venv = venv();
    assert!(
        venv.join("bin/moto_server").exists(),
        "moto_server missing in {}. Fix: scripts/python-env.sh",
        venv.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("kaic-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let (ca_pem, admin_cert_pem, admin_key_pem, _, _) = certs(&dir);

    let etcd_port = free_port();
    let peer_port = free_port();
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let etcd_data = dir.join("etcd");
    spawn_watched(
        &cp.join("etcd"),
        &[
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
        &dir.join("etcd.log"),
        &[("KAIC_CLEANUP_DIR", dir.display().to_string())],
    );

    let api_port = free_port();
    let api_url = format!("https://127.0.0.1:{api_port}");
    let d = |f: &str| dir.join(f).display().to_string();
    let mut apiserver_args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        "--advertise-address=127.0.0.1".into(),
        "--endpoint-reconciler-type=none".into(),
        format!("--cert-dir={}", d("certs")),
        format!("--tls-cert-file={}", d("serving.crt")),
        format!("--tls-private-key-file={}", d("serving.key")),
        format!("--client-ca-file={}", d("ca.crt")),
        "--authorization-mode=RBAC".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        format!("--service-account-issuer={api_url}/"),
        format!("--service-account-key-file={}", d("sa.pub")),
        format!("--service-account-signing-key-file={}", d("sa.key")),
        "--disable-admission-plugins=ServiceAccount".into(),
        // As OpenShift and many hardened clusters run: setting blockOwnerDeletion on an owner
        // reference needs update permission on the owner's finalizers.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
        "--allow-privileged=true".into(),
    ];
    apiserver_args.extend(apiserver_flags.iter().map(|f| f.to_string()));
    let env_ = Env {
        kubeconfig: dir.join("kubeconfig"),
        dir: dir.clone(),
        api_url,
        ca_pem,
        admin_cert_pem,
        admin_key_pem,
        moto_endpoint: String::new(),
        venv: venv.clone(),
        etcd_url,
        apiserver_args,
        apiserver: std::sync::Mutex::new(None),
    };
    wait_for_etcd(&env_.etcd_url).await;
    let apiserver = env_.start_apiserver().await;
    *env_.apiserver.lock().expect("lock") = Some(apiserver);

    let moto_port = free_port();
    spawn_watched(
        &venv.join("bin/moto_server"),
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            moto_port.to_string(),
        ],
        &dir.join("moto.log"),
        &[],
    );
    let moto_endpoint = format!("http://127.0.0.1:{moto_port}");
    wait_for_tcp(moto_port, "moto_server", &dir.join("moto.log")).await;
    let env_ = Env {
        moto_endpoint,
        ..env_
    };
    env_.write_kubeconfig();
    install_crd(&env_.client().await).await;
    env_
}

async fn wait_for_tcp(port: u16, what: &str, log: &Path) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{what} did not start on 127.0.0.1:{port} within 60s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

async fn wait_for_etcd(url: &str) {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("etcd port");
    for _ in 0..300 {
        if let Ok(body) = http_get(port, "/health").await
            && body.contains("true")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("etcd did not become healthy at {url} within 60s");
}

/// Compacts etcd's history up to its current revision (etcd's v3 JSON gateway).
pub async fn compact_etcd(url: &str) {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("etcd port");
    let range = http_post(port, "/v3/kv/range", r#"{"key":"AA==","range_end":"AA=="}"#)
        .await
        .expect("etcd range");
    let body: serde_json::Value =
        serde_json::from_str(range.split_once(' ').map(|(_, b)| b).unwrap_or("{}"))
            .expect("etcd json");
    let revision = body["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    let out = http_post(
        port,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )
    .await
    .expect("etcd compaction");
    assert!(out.starts_with("200"), "compaction: {out}");
}

/// A plain HTTP/1.0 POST of a JSON body on 127.0.0.1 returning "STATUS BODY".
pub async fn http_post(port: u16, path: &str, body: &str) -> std::io::Result<String> {
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http_request(port, format!("{head}{body}")).await
}

/// A plain HTTP/1.0 GET on 127.0.0.1 returning "STATUS BODY" (for etcd, moto and the admin server).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    http_request(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn http_request(port: u16, request: String) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap_or("0").to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(format!("{status} {body}"))
}

impl Env {
    /// Starts (or restarts) kube-apiserver against the same etcd and waits until it serves.
    pub async fn start_apiserver(&self) -> Child {
        let cp = control_plane_dir();
        let log = self.dir.join("kube-apiserver.log");
        let child = spawn_watched(&cp.join("kube-apiserver"), &self.apiserver_args, &log, &[]);
        let client = self.client().await;
        for _ in 0..600 {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if client
                .request_text(req)
                .await
                .is_ok_and(|b| b.trim() == "ok")
            {
                let ns: Api<Namespace> = Api::all(client.clone());
                if ns.get_opt("default").await.ok().flatten().is_some() {
                    return child;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "kube-apiserver did not become ready within 120s; last log lines:\n{}",
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Stops kube-apiserver (etcd keeps the data), compacts etcd so that watches resuming from
    /// an old resourceVersion get 410 Gone, and starts kube-apiserver again on the same port.
    pub async fn restart_apiserver(&self) {
        let old = self.apiserver.lock().expect("lock").take();
        if let Some(mut watchdog) = old {
            // SIGKILL to kube-apiserver itself (a crash; a graceful stop waits for watches to
            // drain); its watchdog then ends.
            let w = watchdog.id();
            if let Ok(children) = std::fs::read_to_string(format!("/proc/{w}/task/{w}/children")) {
                for pid in children.split_whitespace() {
                    let _ = Command::new("kill").arg("-KILL").arg(pid).status();
                }
            }
            let _ = watchdog.wait();
        }
        compact_etcd(&self.etcd_url).await;
        let child = self.start_apiserver().await;
        *self.apiserver.lock().expect("lock") = Some(child);
    }

    fn write_kubeconfig(&self) {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: local\n  context: {{cluster: local, user: admin}}\ncurrent-context: local\n",
            self.api_url,
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        );
        std::fs::write(&self.kubeconfig, kc).expect("write kubeconfig");
    }

    /// A client authenticated as the admin user (system:masters).
    pub async fn client(&self) -> Client {
        let mut config = Config::new(self.api_url.parse().expect("url"));
        config.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        config.auth_info.client_certificate_data = Some(base64_std(&self.admin_cert_pem));
        config.auth_info.client_key_data = Some(base64_std(&self.admin_key_pem).into());
        config.connect_timeout = Some(Duration::from_secs(10));
        Client::try_from(config).expect("kube client")
    }

    /// A client authenticated with a bearer token (e.g. a ServiceAccount's).
    pub fn token_client(&self, token: &str) -> Client {
        let mut config = Config::new(self.api_url.parse().expect("url"));
        config.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        config.auth_info.token = Some(token.to_string().into());
        Client::try_from(config).expect("kube client")
    }

    /// A fresh namespace for one test.
    /// A fresh namespace whose role policy permits every role (`iam.amazonaws.com/permitted:
    /// .*`), so tests of other features run under the default `--namespace-policy=enforce`.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        self.namespace_with(client, prefix, &[(PERMITTED_ANNOTATION, ".*")])
            .await
    }

    /// A fresh namespace with exactly these annotations.
    pub async fn namespace_with(
        &self,
        client: &Client,
        prefix: &str,
        annotations: &[(&str, &str)],
    ) -> String {
        let name = format!("{prefix}-{}", rand_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("pem body")
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

pub async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(repo().join("deploy/crd.yaml")).expect("deploy/crd.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect("crd yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = kube::api::PatchParams::apply("kaic-tests").force();
    api.patch(
        "awsiamroles.zalando.org",
        &pp,
        &kube::api::Patch::Apply(&crd),
    )
    .await
    .expect("install CRD");
    let roles: Api<AWSIAMRole> = Api::all(client.clone());
    wait_for("the AWSIAMRole CRD to be served", || async {
        roles.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
}

/// Polls `f` every 200 ms until it returns `Some`; panics after a generous 90 s.
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(what, Duration::from_secs(90), f).await
}

pub async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An STS client configuration the way the controller builds it, against a local STS.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "AKIDCONTROLLER000000",
                "controller-secret",
                None,
                None,
                "test",
            )),
        )
        .http_client(https_client())
        .build()
}

pub fn sts_issuer(endpoint: &str) -> Arc<dyn CredentialIssuer> {
    Arc::new(StsIssuer::new(
        &sdk_config(endpoint),
        Duration::from_secs(30),
    ))
}

/// Settings for tests: the production defaults with short backoffs.
pub fn test_settings() -> Settings {
    Settings {
        refresh_limit: Duration::from_secs(15 * 60),
        backoff_base: Duration::from_millis(500),
        max_backoff: Duration::from_secs(5),
        sts_options: Default::default(),
        orphan_grace: Duration::from_secs(60),
    }
}

/// The controller running in-process, scoped to one namespace.
pub struct Running {
    pub ctx: Arc<Context>,
    pub ready: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// True when the controller's task has ended (it must run until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the controller and waits for it to finish; panics (failing the test) if the
    /// controller panicked or did not stop within 30 s.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            join_controller(task, Duration::from_secs(30)).await;
        }
    }
}

/// Waits for a stopped controller's task: re-raises its panic, and panics if it does not end
/// within `limit`.
pub async fn join_controller(task: tokio::task::JoinHandle<()>, limit: Duration) {
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the controller task failed: {e}"),
        Err(_) => panic!("the controller did not stop within {limit:?} of its shutdown signal"),
    }
}

/// The value of `series` (name with its labels, as rendered) in Prometheus text; panics when
/// the series is absent, so a renamed metric fails the test instead of reading as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}"))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The controller in-process under the default `--namespace-policy=enforce` (test namespaces
/// permit every role, see [`Env::namespace`]), with no identity of its own to protect.
pub async fn run_controller(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
) -> Running {
    let policy = PolicyContext::new(PolicyMode::Enforce, None, Some(Guard::default()));
    run_controller_with_policy(client, ns, issuer, settings, policy).await
}

/// [`run_controller`] that knows no base role ARN (`--base-role-arn` absent and nothing
/// discovered): bare role names cannot be resolved.
pub async fn run_controller_without_base(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
) -> Running {
    let policy = PolicyContext::new(PolicyMode::Enforce, None, Some(Guard::default()));
    let learned = controller::learned::Learned::new(None, false);
    start_controller(client, ns, issuer, settings, policy, learned).await
}

/// [`run_controller`] with this namespace role policy.
pub async fn run_controller_with_policy(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
    policy: PolicyContext,
) -> Running {
    let learned =
        controller::learned::Learned::new(Some(BASE_ROLE_ARN.parse().expect("base")), false);
    start_controller(client, ns, issuer, settings, policy, learned).await
}

async fn start_controller(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
    policy: PolicyContext,
    learned: controller::learned::Learned,
) -> Running {
    let ctx = Arc::new(Context::new(
        client.clone(),
        issuer,
        settings,
        Wiring {
            metrics: Arc::new(Metrics::new()),
            leader: controller::leader::Leadership::always(),
            policy,
            learned: Arc::new(learned),
            instance: "test".into(),
        },
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        namespace: Some(ns.to_string()),
        concurrency: 4,
        janitor_interval: Duration::from_millis(500),
    };
    let task = tokio::spawn(controller::run(
        ctx.clone(),
        opts,
        ready.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        ctx,
        ready,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Decoded `data` of a Secret.
pub fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default()
}

/// An AWSIAMRole object.
pub fn role(name: &str, reference: &str, duration: i64) -> AWSIAMRole {
    AWSIAMRole::new(
        name,
        kube_aws_iam_controller::crd::AWSIAMRoleSpec {
            role_reference: reference.to_string(),
            role_session_duration: duration,
            policy: None,
            policy_arns: Vec::new(),
            invalid: None,
        },
    )
}

/// The controller binary, started as a user starts it, against the local control plane.
/// Dropped while running (a test that ends early or panics), it is stopped.
pub struct Binary {
    pub child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM to the watchdog: its trap stops the controller and waits for it.
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Binary {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the admin server: "STATUS BODY".
    pub async fn admin(&self, path: &str) -> String {
        http_get(self.admin_port, path).await.unwrap_or_default()
    }

    /// The controller process itself (the watchdog's child).
    pub fn pid(&self) -> Option<u32> {
        let w = self.child.id();
        std::fs::read_to_string(format!("/proc/{w}/task/{w}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the controller process and waits for it to end.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        match self.pid() {
            Some(pid) => {
                let _ = Command::new("kill")
                    .arg(format!("-{signal}"))
                    .arg(pid.to_string())
                    .status();
            }
            // No controller process (yet or any more): the watchdog's trap stops what it runs.
            None => {
                let _ = Command::new("kill")
                    .arg(self.child.id().to_string())
                    .status();
            }
        }
        self.child.wait().expect("watchdog exit")
    }

    /// The value of an unlabelled metric, if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.admin("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&self) {
        wait_for("the controller's admin server", || async {
            http_get(self.admin_port, "/healthz")
                .await
                .ok()
                .filter(|r| r.starts_with("200"))
        })
        .await;
    }

    /// SIGKILL to the controller process (never to its watchdog alone, which would orphan it).
    pub fn kill(self) {
        self.signal("KILL");
    }
}

/// Path of the built controller binary (`cargo build` makes it; integration tests get it from Cargo).
pub fn binary_path() -> PathBuf {
    std::env::var_os("KAIC_BINARY")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_kube-aws-iam-controller").map(PathBuf::from))
        .unwrap_or_else(|| repo().join("target/debug/kube-aws-iam-controller"))
}

/// Starts the controller binary for namespace `ns` against `sts_endpoint`.
pub async fn start_binary(env: &Env, ns: &str, sts_endpoint: &str, extra: &[&str]) -> Binary {
    start_binary_with(env, ns, sts_endpoint, extra, Launch::default()).await
}

/// How [`start_binary_with`] starts the binary, beyond its flags.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Leave out `--base-role-arn`, so the controller discovers it.
    pub discover_base_role_arn: bool,
    /// The controller's own AWS configuration comes from these variables instead of the static
    /// test key (e.g. `AWS_CONFIG_FILE` naming a `credentials.process`).
    pub aws_env: Option<Vec<(&'static str, String)>>,
    /// Runs it with this directory bind-mounted at /meta/aws-iam, as a pod that mounts a Secret.
    pub meta_volume: Option<PathBuf>,
    /// Another kubeconfig than the admin's (e.g. [`sa_kubeconfig`]'s).
    pub kubeconfig: Option<PathBuf>,
}

/// [`start_binary`] with control over discovery, the controller's own credentials and its
/// /meta/aws-iam volume.
pub async fn start_binary_with(
    env: &Env,
    ns: &str,
    sts_endpoint: &str,
    extra: &[&str],
    launch: Launch,
) -> Binary {
    let bin = binary_path();
    assert!(bin.exists(), "{} missing: run `cargo build`", bin.display());
    let admin_port = free_port();
    let log = env.dir.join(format!("controller-{ns}-{admin_port}.log"));
    let mut args = vec![
        format!(
            "--kubeconfig={}",
            launch
                .kubeconfig
                .as_ref()
                .unwrap_or(&env.kubeconfig)
                .display()
        ),
        format!("--namespace={ns}"),
        format!("--sts-endpoint={sts_endpoint}"),
        "--sts-region=us-east-1".into(),
        format!("--admin-addr=127.0.0.1:{admin_port}"),
    ];
    if !launch.discover_base_role_arn {
        args.push(format!("--base-role-arn={BASE_ROLE_ARN}"));
    }
    if !extra.iter().any(|a| a.starts_with("--lease-namespace")) {
        // Each test's replicas elect a leader among themselves only.
        args.push(format!("--lease-namespace={ns}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let aws_env = launch.aws_env.unwrap_or_else(|| {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDCONTROLLER000000".into()),
            ("AWS_SECRET_ACCESS_KEY", "controller-secret".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    });
    let child = match &launch.meta_volume {
        None => spawn_watched(&bin, &args, &log, &aws_env),
        Some(dir) => {
            // As a container: a private mount namespace with `dir` at /meta/aws-iam; `unshare`
            // and `sh` exec the controller, so the watchdog's child is the controller itself.
            std::fs::create_dir_all("/meta/aws-iam")
                .expect("create /meta/aws-iam mount point (run as root)");
            let mut wrapped = vec![
                "--mount".to_string(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                "mount --bind \"$0\" /meta/aws-iam && exec \"$@\"".into(),
                dir.display().to_string(),
                bin.display().to_string(),
            ];
            wrapped.extend(args);
            spawn_watched(Path::new("unshare"), &wrapped, &log, &aws_env)
        }
    };
    let b = Binary {
        child,
        admin_port,
        log,
    };
    b.wait_healthy().await;
    b
}

/// Runs the AWS CLI v1 the way a pod with the Secret mounted at /meta/aws-iam does (a non-root
/// container, see [`kubelet::container`]), using the `credentials.process` file, and returns the
/// caller ARN it prints.
pub fn aws_cli_identity(env: &Env, volume: &Path, sts_endpoint: &str) -> Result<String, String> {
    let aws = env.venv.join("bin/aws");
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = kubelet::container(
        volume,
        kubelet::PodUser::default(),
        Some(home.path()),
        &aws.to_string_lossy(),
    )
    .args([
        "sts",
        "get-caller-identity",
        "--query",
        "Arn",
        "--output",
        "text",
        "--endpoint-url",
        sts_endpoint,
    ])
    .env("HOME", home.path())
    .env("AWS_CONFIG_FILE", "/meta/aws-iam/credentials.process")
    .env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/meta/aws-iam/credentials.process",
    )
    .env("AWS_DEFAULT_REGION", "us-east-1")
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env_remove("AWS_SESSION_TOKEN")
    .env_remove("AWS_PROFILE")
    .output()
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The version of amazon-ec2-metadata-mock the IMDS tests run (scripts/build-imds-mock.sh).
pub const IMDS_MOCK_VERSION: &str = "v1.13.0";

/// Path of the amazon-ec2-metadata-mock binary: `KAIC_IMDS_MOCK`, else the build script's cache.
pub fn imds_mock_path() -> PathBuf {
    std::env::var_os("KAIC_IMDS_MOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join("imds-mock")
                .join(IMDS_MOCK_VERSION)
                .join("ec2-metadata-mock")
        })
}

/// amazon-ec2-metadata-mock running on 127.0.0.1.
pub struct ImdsMock {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Drop for ImdsMock {
    fn drop(&mut self) {
        // SIGTERM to the watchdog: it stops the mock.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts amazon-ec2-metadata-mock whose `iam/info` names `instance_profile_arn`;
/// `imdsv2_only` makes every metadata request need a session token.
pub async fn start_imds_mock(env: &Env, instance_profile_arn: &str, imdsv2_only: bool) -> ImdsMock {
    let bin = imds_mock_path();
    check_binary(
        &bin,
        "scripts/build-imds-mock.sh (or set KAIC_IMDS_MOCK to the binary)",
    );
    let port = free_port();
    let config = env.dir.join(format!("aemm-{port}.json"));
    let doc = serde_json::json!({"metadata": {"values": {"iam-info": {
        "Code": "Success",
        "LastUpdated": "2026-11-26T12:00:00Z",
        "InstanceProfileArn": instance_profile_arn,
        "InstanceProfileId": "AIPAKAICTEST00000001",
    }}}});
    std::fs::write(&config, doc.to_string()).expect("write mock config");
    let log = env.dir.join(format!("aemm-{port}.log"));
    let mut args = vec![
        "--hostname".to_string(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--config-file".into(),
        config.display().to_string(),
    ];
    if imdsv2_only {
        args.push("--imdsv2".into());
    }
    // HOME: the mock looks for a default config file there; give it an empty one.
    let child = spawn_watched(
        &bin,
        &args,
        &log,
        &[("HOME", env.dir.display().to_string())],
    );
    wait_for_tcp(port, "amazon-ec2-metadata-mock", &log).await;
    ImdsMock {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        log,
        child,
    }
}

/// boto3's `GetCallerIdentity` ARN against `endpoint`, with the given environment (credentials
/// through a file or variables); nothing else of the caller's AWS environment is passed.
pub fn boto3_identity(env: &Env, endpoint: &str, vars: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut cmd = Command::new(env.venv.join("bin/python"));
    cmd.args([
        "-c",
        "import boto3,os; print(boto3.client('sts', endpoint_url=os.environ['EP'], region_name='us-east-1').get_caller_identity()['Arn'])",
    ])
    .env("EP", endpoint)
    .env("AWS_CONFIG_FILE", "/dev/null");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run boto3");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What most tests start with: the control plane, an admin client, a fresh namespace, and the
/// AWSIAMRole and Secret APIs in that namespace.
pub struct Scene {
    pub env: &'static Env,
    pub client: Client,
    pub ns: String,
    pub roles: Api<AWSIAMRole>,
    pub secrets: Api<Secret>,
    /// An STS double that, when dropped at the test's end, asserts the suite's invariant: no
    /// role got more than 2 `AssumeRole` calls in any minute.
    pub sts: sts_double::StsDouble,
}

pub async fn scene(prefix: &str) -> Scene {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, prefix).await;
    Scene {
        sts: sts_double::StsDouble::start_checked().await,
        env,
        roles: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        client,
        ns,
    }
}

/// Server-side applies every object of a YAML manifest in the repository (`dry_run`: the API
/// server validates and admits it, nothing is stored). Objects without a namespace go to
/// `default_ns` when given (namespaced kinds), else are treated as cluster-scoped.
pub async fn apply_manifest(client: &Client, path: &str, default_ns: Option<&str>, dry_run: bool) {
    let text = std::fs::read_to_string(repo().join(path)).expect("manifest");
    apply_yaml(client, &text, path, default_ns, dry_run).await;
}

/// [`apply_manifest`] for YAML text (e.g. `helm template` output); `path` names it in errors.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    path: &str,
    default_ns: Option<&str>,
    dry_run: bool,
) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::GroupVersionKind;
    let mut applied = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(obj) = <DynamicObject as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let types = obj.types.clone().expect("apiVersion/kind");
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        // Scope from the API server's discovery, so any kind applies to the right endpoint.
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {path} {}: {e}", types.kind));
        let cluster_scoped = caps.scope == kube::discovery::Scope::Cluster;
        let ns = obj.metadata.namespace.as_deref().or(default_ns);
        let api: Api<DynamicObject> = match ns {
            Some(ns) if !cluster_scoped => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let name = obj.metadata.name.clone().expect("name");
        let mut pp = PatchParams::apply("kaic-tests").force();
        pp.dry_run = dry_run;
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {path} {}/{name}: {e}", types.kind));
        applied += 1;
    }
    assert!(applied > 0, "{path} holds no objects");
}

/// boto3's caller ARN (against moto) using the `credentials` file of `secret`.
pub fn boto3_identity_from_secret(env: &Env, secret: &Secret) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let creds_file = dir.path().join("credentials");
    std::fs::write(&creds_file, data(secret, "credentials")).expect("write credentials");
    boto3_identity(
        env,
        &env.moto_endpoint,
        &[("AWS_SHARED_CREDENTIALS_FILE", creds_file.as_os_str())],
    )
}

/// A kubeconfig that authenticates as ServiceAccount `ns/name` with a token the API server
/// signed (TokenRequest), for running the controller exactly as its shipped RBAC allows.
pub async fn sa_kubeconfig(env: &Env, admin: &Client, ns: &str, name: &str) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let token = sas
        .create_token_request(name, &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token")
        .status
        .expect("status")
        .token
        .expect("token");
    let kubeconfig = env.dir.join(format!("kubeconfig-sa-{ns}-{name}"));
    let original = std::fs::read_to_string(&env.kubeconfig).expect("kubeconfig");
    let user_start = original.find("users:").expect("users");
    let ctx_start = original.find("contexts:").expect("contexts");
    let with_token = format!(
        "{}users:\n- name: admin\n  user:\n    token: {token}\n{}",
        &original[..user_start],
        &original[ctx_start..]
    );
    std::fs::write(&kubeconfig, with_token).expect("write kubeconfig");
    kubeconfig
}

/// Waits until `name`'s Ready condition has `status` (and `reason`, when given).
pub async fn ready_role(
    api: &Api<AWSIAMRole>,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> AWSIAMRole {
    wait_for(&format!("{name} Ready={status} {reason:?}"), || async {
        let r = api.get(name).await.ok()?;
        let c = r.ready_condition()?;
        (c.status == status && reason.is_none_or(|x| c.reason == x)).then_some(r)
    })
    .await
}

/// The reasons of the core/v1 Events about object `name` in `ns`, with their counts.
pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<(String, i32)> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.count.unwrap_or(1).max(1)))
        .collect()
}
