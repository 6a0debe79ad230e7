//! The parts of a real cluster beyond the API server, from scripts/build-node.sh (test.sh passes
//! KAIC_NODE_DIR):
//! - [`garbage_collector`]: kube-controller-manager running the garbage collector against the
//!   binary's local control plane;
//! - [`Node`]: a real single-node cluster (containerd, runc, bridge CNI, kubelet, kube-proxy,
//!   kube-scheduler, kube-controller-manager) around the harness's etcd and kube-apiserver,
//!   inside network, mount and PID namespaces of its own ([`run_contained`]).
//!
//! Containment (shared/notes/real-node.md): a test that needs the node runs again inside
//! `unshare --net --mount --pid`. The node's address, the pod bridge, kube-proxy's rules and
//! every address a pod reaches exist only in that network namespace, which has no route out;
//! overlay, tmpfs and bind mounts (including the kernel tunables the kubelet would otherwise
//! write host-wide) live in the private mount namespace; when the test process (PID 1 there)
//! ends, however it ends, the kernel ends every process of the namespace. The outer test then
//! removes the cgroups the kubelet created (under a parent named for this run) and the state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as KubeNode, ServiceAccount};
use kube::api::Api;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Env, free_port, spawn_watched};

/// The node's address: on `lo` inside the cluster's network namespace; the API server
/// advertises it, pods reach it (and the STS double on it) through the bridge's gateway.
pub const NODE_IP: &str = "10.200.0.1";
pub const NODE_NAME: &str = "kaic-node";
pub const POD_CIDR: &str = "10.88.0.0/16";
/// The API server's `--service-cluster-ip-range` (tests/support/cluster.rs).
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// kube-apiserver flags of a control plane with a node (see [`Node::start`]).
pub const APISERVER_FLAGS: &[&str] = &[
    "--bind-address=0.0.0.0",
    "--advertise-address=10.200.0.1",
    // The `kubernetes` Service's endpoint is this API server, as in a cluster.
    "--endpoint-reconciler-type=lease",
    // Pods get ServiceAccount tokens (the controller's in-cluster client needs one).
    "--disable-admission-plugins=",
    "--kubelet-client-certificate={dir}/admin.crt",
    "--kubelet-client-key={dir}/admin.key",
    "--kubelet-preferred-address-types=InternalIP,Hostname",
];

/// The kernel tunables the kubelet sets (pkg/kubelet/cm `setupKernelTunables`) with the values
/// it wants: files holding them are bind-mounted over `/proc/sys` in the private mount
/// namespace, so it finds them set and the host keeps its own.
const KERNEL_TUNABLES: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

const INSIDE: &str = "KAIC_NODE_STATE";
const CGROUP_PARENT: &str = "KAIC_NODE_CGROUP";

/// The directory of the node's binaries (scripts/build-node.sh, cached by version).
pub fn node_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(p) = std::env::var_os("KAIC_NODE_DIR") {
            return PathBuf::from(p);
        }
        let out = Command::new(super::repo().join("scripts/build-node.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/build-node.sh runs");
        assert!(
            out.status.success(),
            "scripts/build-node.sh failed (or run the README's test command, which builds it)"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

static GC: OnceCell<PathBuf> = OnceCell::const_new();

/// Starts kube-controller-manager with the garbage collector only (once per test binary) and
/// waits until it has synced its caches; returns its log. It stops with the test binary (the
/// watchdog ends it by PID).
pub async fn garbage_collector(env: &'static Env) -> &'static PathBuf {
    GC.get_or_init(|| async move {
        let bin = node_dir().join("kube-controller-manager");
        let log = env.dir.join("kube-controller-manager.log");
        spawn_watched(
            &bin,
            &[
                format!("--kubeconfig={}", env.kubeconfig.display()),
                "--controllers=garbage-collector-controller".into(),
                "--leader-elect=false".into(),
                // No serving endpoint: nothing scrapes it, and no port to pick.
                "--secure-port=0".into(),
                "--concurrent-gc-syncs=5".into(),
                "-v=2".into(),
            ],
            &log,
            &[],
        );
        wait_for_log(
            &log,
            &[
                "Garbage collector: all resource monitors have synced",
                "not all resource monitors could be synced",
            ],
            "kube-controller-manager's garbage collector to sync",
        )
        .await;
        log
    })
    .await
}

/// Waits (at most 120 s) until `log` contains one of `needles`.
async fn wait_for_log(log: &Path, needles: &[&str], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if needles.iter().any(|n| text.contains(n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited 120 s for {what}:\n{}",
            tail(&text, 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What this machine lacks to run the node, if anything: root, `unshare`, overlayfs (containerd's
/// snapshotter) and cgroup v1 hierarchies (the node's kubelet configuration is for cgroup v1,
/// the kind of machine this project runs on).
pub fn missing_requirement() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("root (the node needs network and mount namespaces and cgroups)".into());
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("unshare (util-linux)".into());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        return Some("overlayfs in the kernel (containerd's snapshotter)".into());
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
    {
        return Some(
            "cgroup v1 hierarchies under /sys/fs/cgroup (the node is configured for them)".into(),
        );
    }
    None
}

/// Whether this process is the contained run of a node test (see [`run_contained`]).
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs the test `name` of this binary again inside new network, mount and PID namespaces
/// (see [`run_contained_with`]); its lines are marked `node| `, so that its own `test result:`
/// line is not taken for this one's.
pub fn run_contained(name: &str) {
    run_contained_with(
        &format!("test `{name}`"),
        &["--exact", name, "--nocapture", "--test-threads=1"],
        "node| ",
    );
}

/// Runs this executable again with `args` inside new network, mount and PID namespaces
/// (`unshare`, under the watchdog), prints what it prints (each line after `mark`), removes the
/// cgroups and the state it left, and fails if it failed. The contained run checks [`inside`].
pub fn run_contained_with(what: &str, args: &[&str], mark: &str) {
    let state = tempfile::Builder::new()
        .prefix("kaic-node-")
        .tempdir()
        .expect("state dir")
        .keep();
    // Named for the test run (scripts/leftovers.sh looks for it), else this process.
    let cgroup = format!(
        "kaic-node-{}",
        std::env::var("KAIC_RUN_ID").unwrap_or_else(|_| std::process::id().to_string())
    );
    let exe = std::env::current_exe().expect("test binary path");
    let log = state.join("contained.log");
    let started = Instant::now();
    let mut child = spawn_watched(
        Path::new("unshare"),
        &[
            "--net".into(),
            "--mount".into(),
            "--propagation=private".into(),
            "--pid".into(),
            "--fork".into(),
            "--mount-proc".into(),
            // The test process dies with unshare (the watchdog's TERM), and every process of
            // the PID namespace with it.
            "--kill-child".into(),
            "--".into(),
            exe.display().to_string(),
        ]
        .into_iter()
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<String>>(),
        &log,
        &[
            (INSIDE, state.display().to_string()),
            (CGROUP_PARENT, cgroup.clone()),
            // Temporary directories of the contained run (the control plane's included) go
            // into the state, removed below: its processes end all at once, by SIGKILL.
            ("TMPDIR", state.display().to_string()),
        ],
    );
    // Its output as it comes (with --nocapture, the measurements appear while it runs).
    let mut shown = 0;
    let status = loop {
        let done = child.try_wait().expect("wait for the contained test");
        let out = std::fs::read(&log).unwrap_or_default();
        // Whole lines, marked: the contained run's own `test result:` line is not this one's.
        let end = if done.is_some() {
            out.len()
        } else {
            out.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
        };
        if end > shown {
            for line in String::from_utf8_lossy(&out[shown..end]).lines() {
                println!("{mark}{line}");
            }
            shown = end;
        }
        if let Some(status) = done {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let left = remove_cgroups(&cgroup);
    let _ = std::fs::remove_dir_all(&state);
    println!(
        "{what}: {} s in its namespaces",
        started.elapsed().as_secs()
    );
    assert!(
        status.success(),
        "the contained {what} failed ({status}); its last lines:\n{}",
        tail(&out, 60)
    );
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// Removes the cgroup `parent` (and everything below) from every cgroup v1 hierarchy;
/// returns what could not be removed. Waits up to 10 s for the kernel to release tasks.
fn remove_cgroups(parent: &str) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path().join(parent)).collect())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for root in &roots {
            if root.exists() && !remove_tree(root) {
                left.push(root.clone());
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The kubelet's cgroup root in every cgroup v1 hierarchy (it must exist; [`run_contained`]
/// removes it).
fn create_cgroups(parent: &str) {
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
    {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && path.join("cgroup.procs").exists() {
            let dir = path.join(parent);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
            // A new cpuset cgroup starts with no CPUs and no memory nodes: give it the root's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(path.join(file)) {
                    std::fs::write(dir.join(file), v.trim())
                        .unwrap_or_else(|e| panic!("write {file}: {e}"));
                }
            }
        }
    }
}

/// rmdir depth first (cgroup directories are removed with rmdir, never their files).
fn remove_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                remove_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

fn run(program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real node around the control plane `env`, all inside this process's namespaces.
pub struct Node {
    pub env: &'static Env,
    /// State of containerd, the kubelet and CNI.
    pub state: PathBuf,
    pub containerd_socket: PathBuf,
    pub kubelet_log: PathBuf,
    pub containerd_log: PathBuf,
    cgroup_parent: String,
    containerd: Mutex<Option<Child>>,
    kubelet: Mutex<Option<Child>>,
}

impl Node {
    /// Sets up the namespace (node address, kernel tunables), starts containerd, imports the
    /// pause image, starts the kubelet, kube-proxy, kube-scheduler and kube-controller-manager,
    /// and waits until the node is Ready and untainted and the default ServiceAccount exists.
    pub async fn start() -> Node {
        let state =
            PathBuf::from(std::env::var_os(INSIDE).expect("Node::start runs inside run_contained"));
        let cgroup_parent = std::env::var(CGROUP_PARENT).expect("cgroup parent");
        let bin = node_dir();
        let started = Instant::now();
        contain_network();
        contain_mounts(&state);
        let env = super::env_with(APISERVER_FLAGS).await;
        println!(
            "node: control plane up after {} ms",
            started.elapsed().as_millis()
        );

        let containerd_socket = state.join("containerd/containerd.sock");
        let containerd_log = state.join("containerd.log");
        let containerd = start_containerd(bin, &state, &containerd_socket, &containerd_log).await;
        let node = Node {
            env,
            state: state.clone(),
            containerd_socket,
            kubelet_log: state.join("kubelet.log"),
            containerd_log,
            cgroup_parent: cgroup_parent.clone(),
            containerd: Mutex::new(Some(containerd)),
            kubelet: Mutex::new(None),
        };
        let pause = state.join("pause.tar");
        oci_archive(
            &pause,
            &pause_image(),
            &[(bin.join("pause"), "pause")],
            &["/pause"],
            "65535:65535",
        );
        node.import(&pause);
        create_cgroups(&cgroup_parent);
        node.start_kubelet();
        node.start_kube_proxy();
        let kubeconfig = env.kubeconfig.display().to_string();
        spawn_watched(
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
            &state.join("kube-scheduler.log"),
            &[],
        );
        spawn_watched(
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--root-ca-file={}", env.dir.join("ca.crt").display()),
                format!(
                    "--service-account-private-key-file={}",
                    env.dir.join("sa.key").display()
                ),
                "--controllers=*".into(),
                "--concurrent-gc-syncs=5".into(),
            ],
            &state.join("kube-controller-manager.log"),
            &[],
        );
        node.wait_ready().await;
        println!(
            "node: {NODE_NAME} Ready and untainted after {} ms",
            started.elapsed().as_millis()
        );
        node
    }

    /// Imports an OCI archive into containerd's `k8s.io` namespace (the kubelet's).
    pub fn import(&self, archive: &Path) {
        run(
            &node_dir().join("ctr"),
            &[
                "--address",
                &self.containerd_socket.display().to_string(),
                "--namespace",
                "k8s.io",
                "images",
                "import",
                "--platform",
                "linux/amd64",
                &archive.display().to_string(),
            ],
        );
    }

    /// Imports an OCI image layout directory under `name` (scripts/build-image.sh writes one).
    pub fn import_layout(&self, layout: &Path, name: &str) {
        let copy = self.state.join(format!("layout-{}", free_port()));
        run(
            Path::new("cp"),
            &[
                "-a",
                &layout.display().to_string(),
                &copy.display().to_string(),
            ],
        );
        let index_path = copy.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).expect("index.json"))
                .expect("index.json is JSON");
        for m in index["manifests"].as_array_mut().expect("manifests") {
            m["annotations"]["io.containerd.image.name"] = name.into();
            m["annotations"]["org.opencontainers.image.ref.name"] = name.into();
        }
        std::fs::write(&index_path, index.to_string()).expect("write index.json");
        let archive = copy.with_extension("tar");
        run(
            Path::new("tar"),
            &[
                "-C",
                &copy.display().to_string(),
                "-cf",
                &archive.display().to_string(),
                ".",
            ],
        );
        self.import(&archive);
    }

    /// Stops the kubelet and containerd (running containers stay: their shims live on), starts
    /// them again and waits until the node is Ready.
    pub async fn restart_kubelet_and_containerd(&self) {
        let kubelet = self.kubelet.lock().expect("lock").take();
        if let Some(k) = kubelet {
            stop(k);
        }
        let containerd = self.containerd.lock().expect("lock").take();
        if let Some(c) = containerd {
            stop(c);
        }
        let c = start_containerd(
            node_dir(),
            &self.state,
            &self.containerd_socket,
            &self.state.join("containerd-restarted.log"),
        )
        .await;
        *self.containerd.lock().expect("lock") = Some(c);
        self.start_kubelet();
        self.wait_ready().await;
    }

    fn start_kubelet(&self) {
        let cgroup_parent = &self.cgroup_parent;
        let env = self.env;
        let root = self.state.join("kubelet");
        std::fs::create_dir_all(&root).expect("kubelet root");
        std::fs::write(self.state.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .expect("resolv.conf");
        let config = self.state.join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_parent}
containerRuntimeEndpoint: unix://{sock}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
podLogsDir: {logs}
resolvConf: {resolv}
failSwapOn: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
serializeImagePulls: false
"#,
                sock = self.containerd_socket.display(),
                ca = env.dir.join("ca.crt").display(),
                logs = self.state.join("pod-logs").display(),
                resolv = self.state.join("resolv.conf").display(),
            ),
        )
        .expect("kubelet config");
        let log = if self.kubelet_log.exists() {
            self.state.join("kubelet-restarted.log")
        } else {
            self.kubelet_log.clone()
        };
        let child = spawn_watched(
            &node_dir().join("kubelet"),
            &[
                format!("--config={}", config.display()),
                format!("--kubeconfig={}", env.kubeconfig.display()),
                format!("--root-dir={}", root.display()),
                format!("--node-ip={NODE_IP}"),
                format!("--hostname-override={NODE_NAME}"),
                "--v=2".into(),
            ],
            &log,
            &[],
        );
        *self.kubelet.lock().expect("lock") = Some(child);
    }

    fn start_kube_proxy(&self) {
        let bin = node_dir();
        let iptables = bin.join("iptables");
        let config = self.state.join("kube-proxy.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
hostnameOverride: {NODE_NAME}
clusterCIDR: {POD_CIDR}
metricsBindAddress: "127.0.0.1:{metrics}"
healthzBindAddress: ""
# Leave the conntrack table's host-wide limits alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
"#,
                kubeconfig = self.env.kubeconfig.display(),
                metrics = free_port(),
            ),
        )
        .expect("kube-proxy config");
        let path = format!(
            "{}:{}",
            iptables.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        spawn_watched(
            &bin.join("kube-proxy"),
            &[format!("--config={}", config.display()), "--v=2".into()],
            &self.state.join("kube-proxy.log"),
            &[
                ("PATH", path),
                (
                    "LD_LIBRARY_PATH",
                    iptables.join("lib").display().to_string(),
                ),
                (
                    "XTABLES_LIBDIR",
                    iptables.join("lib/xtables").display().to_string(),
                ),
            ],
        );
    }

    async fn wait_ready(&self) {
        let client = self.env.client().await;
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let node = nodes.get_opt(NODE_NAME).await.ok().flatten();
            let ready = node.as_ref().is_some_and(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            let untainted = node.as_ref().is_some_and(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_none_or(|t| t.iter().all(|t| t.effect != "NoSchedule"))
            });
            let sa = sas.get_opt("default").await.ok().flatten().is_some();
            if ready && untainted && sa {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node not ready within 180 s (ready {ready}, untainted {untainted}, default ServiceAccount {sa}); kubelet log:\n{}\ncontainerd log:\n{}",
                tail(
                    &std::fs::read_to_string(&self.kubelet_log).unwrap_or_default(),
                    40
                ),
                tail(
                    &std::fs::read_to_string(&self.containerd_log).unwrap_or_default(),
                    20
                ),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The kubelet's log, for messages on failure.
    pub fn log_tail(&self, what: &str, n: usize) -> String {
        tail(
            &std::fs::read_to_string(self.state.join(format!("{what}.log"))).unwrap_or_default(),
            n,
        )
    }

    /// What a failed scenario needs to be understood: every pod's phase and container states,
    /// the Events, and the last lines of the node's daemons.
    pub async fn diagnose(&self) -> String {
        use k8s_openapi::api::core::v1::{Event, Pod};
        let client = self.env.client().await;
        let mut out = String::new();
        let pods: Api<Pod> = Api::all(client.clone());
        for p in pods
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let status = p.status.clone().unwrap_or_default();
            out += &format!(
                "pod {}/{}: {} {}\n",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                status.phase.unwrap_or_default(),
                serde_json::to_string(&status.container_statuses).unwrap_or_default()
            );
        }
        let events: Api<Event> = Api::all(client);
        for e in events
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            out += &format!(
                "event {} {}: {} {}\n",
                e.involved_object.name.unwrap_or_default(),
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            );
        }
        for daemon in [
            "kubelet",
            "containerd",
            "kube-proxy",
            "kube-controller-manager",
        ] {
            out += &format!("--- {daemon}.log\n{}\n", self.log_tail(daemon, 25));
        }
        out
    }

    /// A client of the node's API server.
    pub async fn client(&self) -> Client {
        self.env.client().await
    }
}

/// The pause image's name (built from the kubernetes module's pause.c by build-node.sh).
pub fn pause_image() -> String {
    "kaic.local/pause:v1.37.2".into()
}

/// lo up, the node's address on it, and a route for Service addresses (kube-proxy rewrites
/// them; the first routing decision of a local connection needs a route to exist).
fn contain_network() {
    let ip = Path::new("ip");
    run(ip, &["link", "set", "lo", "up"]);
    run(ip, &["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    run(
        ip,
        &["route", "add", SERVICE_CIDR, "dev", "lo", "src", NODE_IP],
    );
}

/// Private tmpfs over /run and /var/log (containerd's shim sockets, the kubelet's container
/// log links), and the kernel tunables as files, all in this mount namespace only.
fn contain_mounts(state: &Path) {
    let mount = Path::new("mount");
    for dir in ["/run", "/var/log"] {
        run(mount, &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", dir]);
    }
    let sysctl = state.join("sysctl");
    std::fs::create_dir_all(&sysctl).expect("sysctl dir");
    for (key, value) in KERNEL_TUNABLES {
        let file = sysctl.join(key.replace('/', "."));
        std::fs::write(&file, format!("{value}\n")).expect("tunable file");
        run(
            mount,
            &[
                "--bind",
                &file.display().to_string(),
                &format!("/proc/sys/{key}"),
            ],
        );
    }
}

async fn start_containerd(bin: &Path, state: &Path, socket: &Path, log: &Path) -> Child {
    let dir = state.join("containerd");
    let cni_conf = state.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf).expect("cni conf dir");
    std::fs::write(
        cni_conf.join("10-kaic.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kaic",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "kaic0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": state.join("cni/ipam").display().to_string(),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        })
        .to_string(),
    )
    .expect("cni config");
    let config = state.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 3
root = '{dir}/root'
state = '{dir}/state'

[grpc]
  address = '{socket}'

[ttrpc]
  address = '{socket}.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{runc}'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_bin}']
      conf_dir = '{cni_conf}'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{dir}/opt'
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '{dir}/image-verifier'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
"#,
            dir = dir.display(),
            socket = socket.display(),
            pause = pause_image(),
            runc = bin.join("runc").display(),
            cni_bin = bin.join("cni").display(),
            cni_conf = cni_conf.display(),
        ),
    )
    .expect("containerd config");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _ = std::fs::remove_file(socket);
    let child = spawn_watched(
        &bin.join("containerd"),
        &[format!("--config={}", config.display())],
        log,
        &[("PATH", path)],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not create its socket within 60 s:\n{}",
            tail(&std::fs::read_to_string(log).unwrap_or_default(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

/// Ends a daemon started under the watchdog (TERM to the watchdog, which stops it) and waits.
fn stop(child: Child) {
    let mut child = child;
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Writes an OCI image archive (layout tar, as `ctr images import` takes it) of one layer
/// holding `files` (source, path in the image, mode 0755), named `name`.
pub fn oci_archive(
    out: &Path,
    name: &str,
    files: &[(PathBuf, &str)],
    entrypoint: &[&str],
    user: &str,
) {
    let work = tempfile::tempdir().expect("work dir");
    let root = work.path().join("root");
    for (src, dest) in files {
        let target = root.join(dest);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("dirs");
        std::fs::copy(src, &target).expect("copy into rootfs");
    }
    let layer = work.path().join("layer.tar");
    run(
        Path::new("tar"),
        &[
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
            &root.display().to_string(),
            "-cf",
            &layer.display().to_string(),
            ".",
        ],
    );
    let layout = work.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let put = |bytes: &[u8]| -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        format!("sha256:{hex}")
    };
    let layer_bytes = std::fs::read(&layer).expect("layer");
    let layer_digest = put(&layer_bytes);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_bytes.len(),
        }],
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    run(
        Path::new("tar"),
        &[
            "-C",
            &layout.display().to_string(),
            "-cf",
            &out.display().to_string(),
            ".",
        ],
    );
}

/// Names of the objects in a list, for messages.
pub fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(|i| i.name_any()).collect()
}
