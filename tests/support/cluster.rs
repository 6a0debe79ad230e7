//! The control plane: etcd and kube-apiserver on free 127.0.0.1 ports (one set per test
//! binary), moto beside them, the watchdog every process runs under, a namespace per test.

use super::*;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cache_dir() -> PathBuf {
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

pub const WATCHDOG: &str = r#"
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

pub fn check_binary(path: &Path, fix: &str) {
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

pub static ENV: OnceCell<Env> = OnceCell::const_new();

/// The control plane for this test binary (started on first use).
pub async fn env() -> &'static Env {
    env_with(&[]).await
}

/// [`env`] with extra kube-apiserver flags, for a test binary all of whose tests pass the same
/// ones (the first caller starts the control plane).
pub async fn env_with(apiserver_flags: &'static [&'static str]) -> &'static Env {
    ENV.get_or_init(|| start_env(apiserver_flags)).await
}

pub fn certs(dir: &Path) -> (String, String, String, String, String) {
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
    // The names pods on the real node use too (tests/support/node.rs): the `kubernetes`
    // Service's ClusterIP and DNS names, and the node's address the API server advertises.
    let names = [
        "localhost",
        "127.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "10.0.0.1",
        super::node::NODE_IP,
    ];
    let mut serving = CertificateParams::new(names.map(String::from).to_vec()).expect("params");
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
        // The API server's client certificate towards kubelets (logs, exec).
        ("admin.crt", admin_cert.pem()),
        ("admin.key", admin_key.serialize_pem()),
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

pub async fn start_env(apiserver_flags: &'static [&'static str]) -> Env {
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
    // A test binary's flag replaces the default of the same name (list flags would otherwise
    // append); `{dir}` is the control plane's directory.
    for flag in apiserver_flags {
        let flag = flag.replace("{dir}", &dir.display().to_string());
        let name = flag.split('=').next().unwrap_or_default().to_string();
        apiserver_args.retain(|a| a.split('=').next() != Some(name.as_str()));
        apiserver_args.push(flag);
    }
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

pub async fn wait_for_tcp(port: u16, what: &str, log: &Path) {
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

pub async fn wait_for_etcd(url: &str) {
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

pub async fn http_request(port: u16, request: String) -> std::io::Result<String> {
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

pub fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("pem body")
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
