//! Benchmark: the admission webhook under load. Pods are created through the real local API
//! server at rising rates; the API server calls two replicas of the controller (the release
//! binary, each with `--webhook`) through a TCP front that spreads its connections over them.
//! Prints one Markdown table per run and exits 1 when a target is missed. Run through
//! `scripts/bench-admission.sh [FLAGS]`; `--help` lists the flags. docs/performance.md explains
//! every line.
//!
//! **What an admission is here.** A server-side dry-run create (`dryRun=All`) of a labelled pod
//! in the benchmark's namespace: the API server decodes it, runs every mutating admission step
//! (the webhook call among them), validates the mutated pod and runs the validating admission,
//! then stops before etcd. That is the whole admission path a real create takes, without the
//! storage write, so the numbers are those of admission and the run leaves no pods behind
//! (thousands of stored pods would slow the API server down as the run goes on). The
//! configuration is the shipped one (`deploy/webhook.yaml`, `sideEffects: None`, which dry-run
//! needs). Each answer is checked: the returned pod must carry the role's Secret volume, and
//! every container and init container its mount and `AWS_CONFIG_FILE`; anything else is a failed
//! admission.
//!
//! **The baseline steps** (`--baseline-rates`) send the same pods to a namespace the webhook
//! configuration does not select: the API server's own latency at each rate, with nothing
//! called. The difference to the webhook's steps is what the webhook adds; no target applies
//! to them.
//!
//! **Why a front.** In a cluster the configuration names the Service and the API server opens
//! connections to the Service's ready endpoints (through kube-proxy, or its own endpoint
//! routing). There is no cluster network here: the API server's endpoint routing
//! (`--enable-aggregator-routing`) needs Endpoints with a routable address, and the API server
//! refuses loopback addresses in Endpoints. So the configuration's `clientConfig.url` names a
//! front on 127.0.0.1, a plain TCP proxy in this process that does what a Service does: each new
//! connection goes to the next ready replica (round robin), and an established connection stays
//! with its replica until one side closes it (the API server keeps connections alive, as it
//! does with a Service). Two webhook entries, one per replica, would not be two replicas: the
//! API server would call both for every pod. TLS is end to end (the front sees bytes only), so
//! the API server checks each replica's certificate against the `caBundle` as in a cluster.
//!
//! **The replica restart** is a rolling restart's: the replica gets SIGTERM, leaves the front's
//! rotation a moment later (`--endpoint-delay-ms`: a Service's endpoints drop a terminating pod
//! after the kubelet is told to stop it, not before), exits, is started again on the same port
//! and rejoins the rotation once its `/readyz` answers 200. The replica restarted is the leader,
//! so the Lease changes hands as well.
//!
//! **The CA rotation** is the controller's own, forced by time: the replicas run with a CA
//! lifetime chosen so that the leader stages a new CA (renewal at a third of the lifetime left)
//! after the other steps; the rotation step starts a few seconds before that and runs until
//! the new CA signs and the old one has left the `caBundle`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::webhook;
use kube_aws_iam_controller::webhook::mutate::ROLE_LABEL;
use support::bench::{quantile, rss_bytes};
use support::sts_double::StsDouble;
use support::{Binary, Env, Launch, env, free_port, role, sa_kubeconfig, start_binary_with};

/// The role every pod names, and the ServiceAccount and namespace of the shipped RBAC.
const ROLE: &str = "app";
const RBAC_NAMESPACE: &str = "kube-system";
const RBAC_SERVICE_ACCOUNT: &str = "kube-aws-iam-controller";
/// The shipped names: deploy/webhook-rbac.yaml grants exactly these.
const CONFIGURATION: &str = "kube-aws-iam-controller";
const TLS_SECRET: &str = "kube-aws-iam-controller-webhook-tls";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser, Debug, Clone)]
#[command(about = "Prints the admission webhook's latency and errors under load")]
struct Args {
    /// Admissions per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,200")]
    rates: Vec<f64>,
    /// Rates of the baseline steps: the same pods in a namespace the webhook is not called for,
    /// so the API server's own latency at each rate (none: no baseline).
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    baseline_rates: Vec<f64>,
    /// Send only this shape of the mix (1 to 5, as listed in the output) instead of the mix.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    only_shape: Option<u8>,
    /// Length of each step (s).
    #[arg(long, default_value_t = 20.0)]
    step_secs: f64,
    /// Admissions sent before the first step, not counted (s).
    #[arg(long, default_value_t = 5.0)]
    warmup_secs: f64,
    /// Rate of the replica-restart and CA-rotation steps.
    #[arg(long, default_value_t = 100.0)]
    fault_rate: f64,
    /// `--webhook-cert-overlap` of the replicas (s): each CA rotation takes two of them.
    #[arg(long, default_value_t = 5)]
    ca_overlap_secs: u64,
    /// Slack before the CA rotation (s): the CA lifetime leaves this much time beyond the
    /// planned steps before the next CA is staged; the benchmark waits out what is left.
    #[arg(long, default_value_t = 15.0)]
    rotation_margin_secs: f64,
    /// In the rolling restart, how long after the SIGTERM the replica leaves the front's
    /// rotation (a Service's endpoints drop a terminating pod a moment after it is told to stop).
    #[arg(long, default_value_t = 1000)]
    endpoint_delay_ms: u64,
    /// Admissions in flight at most; one that would exceed it is counted as failed.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// The controller's identity: `service-account` (deploy/rbac.yaml and
    /// deploy/webhook-rbac.yaml, a bound token, as in a cluster) or `admin` (system:masters).
    #[arg(long, value_enum, default_value_t = Identity::ServiceAccount)]
    identity: Identity,
    /// Target: p99 admission latency (ms, API server included) at the target rate ...
    #[arg(long, default_value_t = 20.0)]
    p99_target_ms: f64,
    /// ... this one (every step at it: plain, during the restart, during the rotation).
    #[arg(long, default_value_t = 100.0)]
    target_rate: f64,
    /// Target: growth of each replica's RSS from after the warm-up to the end (MiB).
    #[arg(long, default_value_t = 16.0)]
    rss_growth_target_mib: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    ServiceAccount,
    Admin,
}

/// A pod shape of the mix, and how often it comes.
struct Shape {
    name: &'static str,
    containers: usize,
    init_containers: usize,
    vars_per_container: usize,
    volumes: usize,
    /// In percent of admissions.
    weight: usize,
}

/// From a one-container pod to 50 containers with 100 variables each (about a third of the
/// webhook's 1 MiB AdmissionReview limit).
const SHAPES: &[Shape] = &[
    Shape {
        name: "1 container, 20 vars",
        containers: 1,
        init_containers: 0,
        vars_per_container: 20,
        volumes: 1,
        weight: 40,
    },
    Shape {
        name: "3 containers + 1 init, 150 vars each, 4 volumes",
        containers: 3,
        init_containers: 1,
        vars_per_container: 150,
        volumes: 4,
        weight: 30,
    },
    Shape {
        name: "1 container + 2 init, 500 vars each, 6 volumes",
        containers: 1,
        init_containers: 2,
        vars_per_container: 500,
        volumes: 6,
        weight: 15,
    },
    Shape {
        name: "12 containers + 3 init, 100 vars each, 15 volumes",
        containers: 12,
        init_containers: 3,
        vars_per_container: 100,
        volumes: 15,
        weight: 10,
    },
    Shape {
        name: "50 containers + 5 init, 100 vars each, 55 volumes",
        containers: 50,
        init_containers: 5,
        vars_per_container: 100,
        volumes: 55,
        weight: 5,
    },
];

fn container(name: &str, vars: usize, volumes: usize) -> Value {
    let env: Vec<Value> = (0..vars)
        .map(|v| {
            json!({"name": format!("APP_SETTING_{v:04}"),
                   "value": format!("value-{v:04}-of-{name}-abcdefghijklmnopqrstuvwxyz")})
        })
        .collect();
    let mounts: Vec<Value> = (0..volumes.min(8))
        .map(|v| json!({"name": format!("data-{v}"), "mountPath": format!("/data/{v}")}))
        .collect();
    json!({
        "name": name,
        "image": "registry.example.org/team/app:1.2.3",
        "args": ["--listen=:8080", "--log-level=info"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "env": env,
        "volumeMounts": mounts,
    })
}

/// The pod of `shape` (named by the API server: `generateName`), as JSON.
fn pod(shape: &Shape) -> Value {
    let containers: Vec<Value> = (0..shape.containers)
        .map(|c| container(&format!("app-{c}"), shape.vars_per_container, shape.volumes))
        .collect();
    let init: Vec<Value> = (0..shape.init_containers)
        .map(|c| {
            container(
                &format!("init-{c}"),
                shape.vars_per_container,
                shape.volumes,
            )
        })
        .collect();
    let volumes: Vec<Value> = (0..shape.volumes)
        .map(|v| {
            if v % 2 == 0 {
                json!({"name": format!("data-{v}"), "emptyDir": {}})
            } else {
                json!({"name": format!("data-{v}"), "configMap": {"name": format!("config-{v}")}})
            }
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "bench-", "labels": {ROLE_LABEL: ROLE, "app": "bench"}},
        "spec": {"containers": containers, "initContainers": init, "volumes": volumes},
    })
}

/// One large container: `vars` variables of about 80 bytes each.
fn oversized_pod(vars: usize) -> Value {
    let mut p = pod(&SHAPES[0]);
    p["spec"]["containers"] = json!([container("app-0", vars, 1)]);
    p
}

/// The shape of admission `i`: the weights spread evenly over every 100 admissions.
fn shape_of(i: usize) -> usize {
    // 37 is coprime with 100: i ↦ 37·i mod 100 visits every slot once per 100 admissions.
    let slot = (i * 37) % 100;
    let mut acc = 0;
    for (k, s) in SHAPES.iter().enumerate() {
        acc += s.weight;
        if slot < acc {
            return k;
        }
    }
    0
}

/// What the benchmark reads back from an admitted pod.
#[derive(Deserialize)]
struct Admitted {
    spec: AdmittedSpec,
}
#[derive(Deserialize)]
struct AdmittedSpec {
    containers: Vec<AdmittedContainer>,
    #[serde(default, rename = "initContainers")]
    init_containers: Vec<AdmittedContainer>,
    #[serde(default)]
    volumes: Vec<AdmittedVolume>,
}
#[derive(Deserialize)]
struct AdmittedContainer {
    #[serde(default)]
    env: Vec<Named>,
    #[serde(default, rename = "volumeMounts")]
    volume_mounts: Vec<Mount>,
}
#[derive(Deserialize)]
struct Named {
    name: String,
}
#[derive(Deserialize)]
struct Mount {
    #[serde(rename = "mountPath")]
    mount_path: String,
}
#[derive(Deserialize)]
struct AdmittedVolume {
    #[serde(default)]
    secret: Option<SecretSource>,
}
#[derive(Deserialize)]
struct SecretSource {
    #[serde(rename = "secretName")]
    secret_name: Option<String>,
}

/// Why an admitted pod is not wired as the webhook wires it, if it is not.
fn check_wired(body: &str, shape: &Shape) -> Result<(), String> {
    let pod: Admitted =
        serde_json::from_str(body).map_err(|e| format!("unreadable answer: {e}"))?;
    let s = pod.spec;
    if s.containers.len() != shape.containers || s.init_containers.len() != shape.init_containers {
        return Err("containers added or lost".into());
    }
    if !s
        .volumes
        .iter()
        .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(ROLE))
    {
        return Err("admitted without the role's Secret volume (not mutated)".into());
    }
    let wired = |c: &AdmittedContainer| {
        c.env.iter().any(|e| e.name == "AWS_CONFIG_FILE")
            && c.volume_mounts
                .iter()
                .any(|m| m.mount_path == "/meta/aws-iam")
    };
    if !s.containers.iter().chain(&s.init_containers).all(wired) {
        return Err("a container without the mount or the variables".into());
    }
    Ok(())
}

/// One replica behind the front.
struct Backend {
    addr: SocketAddr,
    /// In the rotation (ready, not terminating): new connections may go to it.
    ready: AtomicBool,
    connections: AtomicUsize,
}

/// The Service in front of the replicas: a TCP proxy, each new connection to the next ready
/// replica, the bytes copied both ways until either side closes (a half-close is passed on).
struct Front {
    addr: SocketAddr,
    backends: Arc<Vec<Backend>>,
    /// Connections that found no ready replica, or whose replica refused them.
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    async fn start(ports: &[u16]) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("front listener");
        let addr = listener.local_addr().expect("front address");
        let backends: Arc<Vec<Backend>> = Arc::new(
            ports
                .iter()
                .map(|p| Backend {
                    addr: SocketAddr::from(([127, 0, 0, 1], *p)),
                    ready: AtomicBool::new(false),
                    connections: AtomicUsize::new(0),
                })
                .collect(),
        );
        let refused = Arc::new(AtomicUsize::new(0));
        let (b, r) = (backends.clone(), refused.clone());
        let task = tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let n = b.len();
                let start = next.fetch_add(1, Ordering::Relaxed);
                let Some(backend) = (0..n)
                    .map(|k| &b[(start + k) % n])
                    .find(|x| x.ready.load(Ordering::SeqCst))
                else {
                    r.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                backend.connections.fetch_add(1, Ordering::SeqCst);
                let (target, r) = (backend.addr, r.clone());
                tokio::spawn(async move {
                    match TcpStream::connect(target).await {
                        Ok(mut upstream) => {
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(_) => {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Front {
            addr,
            backends,
            refused,
            task,
        }
    }

    fn set_ready(&self, replica: usize, ready: bool) {
        self.backends[replica].ready.store(ready, Ordering::SeqCst);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything the load needs, shared by its tasks.
struct Load {
    client: Client,
    path: String,
    /// The serialized pod of each shape.
    bodies: Vec<Vec<u8>>,
    max_in_flight: usize,
    /// The pods go through the webhook: each answer is checked for its wiring.
    wired: bool,
    /// Every admission is of this shape (index in [`SHAPES`]), not the mix.
    only_shape: Option<usize>,
    /// The front's replicas, for the connections the API server opened.
    backends: Arc<Vec<Backend>>,
}

impl Load {
    /// The shape of admission `i`.
    fn shape(&self, i: usize) -> usize {
        self.only_shape.unwrap_or_else(|| shape_of(i))
    }

    fn connections(&self) -> usize {
        self.backends
            .iter()
            .map(|b| b.connections.load(Ordering::SeqCst))
            .sum()
    }
}

/// One admission's outcome.
struct Sample {
    latency: Duration,
    error: Option<String>,
    /// Size of the admitted pod the API server answered with (about the AdmissionReview's: the
    /// pod with its managed fields).
    bytes: usize,
    /// Index of its shape in [`SHAPES`].
    shape: usize,
}

/// What one step measured.
#[derive(Default)]
struct Step {
    label: String,
    /// A baseline step: the API server alone, the webhook not called (no target applies).
    baseline: bool,
    rate: f64,
    secs: f64,
    sent: usize,
    latencies_ms: Vec<f64>,
    /// The same per shape.
    by_shape: Vec<Vec<f64>>,
    failed: usize,
    errors: Vec<String>,
    /// Largest delay between an admission's planned and actual send (the generator's health).
    lag_max_ms: f64,
    /// Admissions each replica answered (from its `kaic_webhook_admissions_total`).
    per_replica: Vec<f64>,
    /// The webhook's own mean time per admission (its duration histogram).
    webhook_mean_ms: f64,
    /// The CA changed during the step.
    ca_rotated: bool,
    /// Each replica's RSS at the step's end (bytes).
    rss: Vec<f64>,
    /// Connections the API server opened to the webhook (each a TLS handshake).
    connections: usize,
    /// Notes printed under the table (restart and rotation timings).
    notes: Vec<String>,
}

impl Step {
    fn quantile(&self, q: f64) -> f64 {
        quantile(&self.latencies_ms, q)
    }
}

/// Sends admissions at `rate` per second, open loop (each at its planned time whatever the
/// answers before it took), until `stop` turns true.
async fn run_load(
    load: Arc<Load>,
    rate: f64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Sample>, f64, f64) {
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut samples = Vec::new();
    let mut lag_max = Duration::ZERO;
    let mut i: usize = 0;
    while !*stop.borrow() {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        lag_max = lag_max.max(at.elapsed());
        while let Some(done) = tasks.try_join_next() {
            samples.extend(done.ok());
        }
        if in_flight.load(Ordering::SeqCst) >= load.max_in_flight {
            samples.push(Sample {
                latency: Duration::ZERO,
                error: Some(format!(
                    "not sent: {} admissions in flight",
                    load.max_in_flight
                )),
                bytes: 0,
                shape: load.shape(i),
            });
            i += 1;
            continue;
        }
        let (load, in_flight) = (load.clone(), in_flight.clone());
        in_flight.fetch_add(1, Ordering::SeqCst);
        tasks.spawn(async move {
            let sample = admit(&load, i).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            sample
        });
        i += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.ok());
    }
    (samples, secs, lag_max.as_secs_f64() * 1000.0)
}

async fn admit(load: &Load, i: usize) -> Sample {
    admit_shape(load, load.shape(i)).await
}

async fn admit_shape(load: &Load, k: usize) -> Sample {
    let request = http::Request::post(&load.path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(load.bodies[k].clone())
        .expect("pod create request");
    let t = Instant::now();
    let answer = load.client.request_text(request).await;
    let latency = t.elapsed();
    let (error, bytes) = match answer {
        Ok(body) if load.wired => (check_wired(&body, &SHAPES[k]).err(), body.len()),
        Ok(body) => (None, body.len()),
        Err(e) => (Some(e.to_string()), 0),
    };
    Sample {
        latency,
        error,
        bytes,
        shape: k,
    }
}

/// A replica of the controller: the release binary, with the webhook on a fixed port.
struct Replica {
    port: u16,
    bin: Option<Binary>,
}

/// How the replicas are started (the same flags for both, as a Deployment does).
struct Replicas {
    env: &'static Env,
    ns: String,
    sts_endpoint: String,
    flags: Vec<String>,
    launch: Launch,
    list: Vec<Replica>,
}

impl Replicas {
    async fn start(&mut self, i: usize) {
        let mut flags = self.flags.clone();
        flags.push(format!("--webhook-addr=127.0.0.1:{}", self.list[i].port));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let bin = start_binary_with(
            self.env,
            &self.ns,
            &self.sts_endpoint,
            &flags,
            self.launch.clone(),
        )
        .await;
        support::wait_for_within(
            "a replica's /readyz (certificate served)",
            Duration::from_secs(120),
            || async { Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200")) },
        )
        .await;
        self.list[i].bin = Some(bin);
    }

    fn bin(&self, i: usize) -> &Binary {
        self.list[i].bin.as_ref().expect("replica running")
    }

    /// The first replica that says it leads.
    async fn leader(&self) -> Option<usize> {
        for i in 0..self.list.len() {
            if self.bin(i).metric("kaic_leader").await == Some(1.0) {
                return Some(i);
            }
        }
        None
    }

    /// Admissions each replica answered, and the sum and count of its duration histogram.
    async fn counters(&self) -> Vec<(f64, f64, f64)> {
        let mut out = Vec::new();
        for r in &self.list {
            let Some(bin) = &r.bin else {
                out.push((0.0, 0.0, 0.0));
                continue;
            };
            let text = bin.admin("/metrics").await;
            let value = |series: &str| {
                text.lines()
                    .filter_map(|l| l.strip_prefix(series))
                    .filter_map(|rest| rest.rsplit_once(' '))
                    .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
                    .sum::<f64>()
            };
            out.push((
                value("kaic_webhook_admissions_total{"),
                value("kaic_webhook_admission_duration_seconds_sum"),
                value("kaic_webhook_admission_duration_seconds_count"),
            ));
        }
        out
    }
}

/// The CA that signs now, and whether a rotation is under way (a next or previous CA).
async fn ca_state(secrets: &Api<Secret>) -> Option<(String, bool)> {
    let m = webhook::material(&secrets.get(TLS_SECRET).await.ok()?)?;
    let ca = m.ca?;
    Some((
        ca.common_name,
        m.next_ca.is_some() || m.previous_ca.is_some(),
    ))
}

/// What happened beside the load in a step.
#[derive(Default)]
struct During {
    notes: Vec<String>,
    /// Per replica, for one stopped during the step: its admissions as last read before the stop
    /// (its successor counts from 0 again).
    counted_before_stop: Vec<Option<f64>>,
}

/// Runs one step of `load` at `rate` while `during` runs; the step ends when `during` has
/// finished and at least `min_secs` have passed.
async fn step<F>(
    label: &str,
    load: &Arc<Load>,
    rate: f64,
    min_secs: f64,
    replicas: &mut Replicas,
    secrets: &Api<Secret>,
    during: F,
) -> Step
where
    F: AsyncFnOnce(&mut Replicas) -> During,
{
    let ca_before = ca_state(secrets).await;
    let before = replicas.counters().await;
    let connections_before = load.connections();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(run_load(load.clone(), rate, stop_rx));
    let t = Instant::now();
    let During {
        notes,
        counted_before_stop,
    } = during(replicas).await;
    let left = Duration::from_secs_f64(min_secs).saturating_sub(t.elapsed());
    tokio::time::sleep(left).await;
    stop_tx.send_replace(true);
    let (samples, secs, lag_max_ms) = runner.await.expect("load task");
    let after = replicas.counters().await;
    let connections = load.connections() - connections_before;
    let ca_after = ca_state(secrets).await;
    let rss = (0..replicas.list.len())
        .map(|i| replicas.list[i].bin.as_ref().map_or(f64::NAN, rss_bytes))
        .collect();
    let mut latencies_ms: Vec<f64> = samples
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    let mut by_shape = vec![Vec::new(); SHAPES.len()];
    for s in samples.iter().filter(|s| s.error.is_none()) {
        by_shape[s.shape].push(s.latency.as_secs_f64() * 1000.0);
    }
    for v in &mut by_shape {
        v.sort_by(f64::total_cmp);
    }
    let mut errors: Vec<String> = samples.iter().filter_map(|s| s.error.clone()).collect();
    let failed = errors.len();
    errors.dedup();
    errors.truncate(5);
    let per_replica: Vec<f64> = (0..after.len())
        .map(|i| match counted_before_stop.get(i).copied().flatten() {
            Some(old) => old - before[i].0 + after[i].0,
            None => after[i].0 - before[i].0,
        })
        .collect();
    let (sum, count) = after
        .iter()
        .zip(&before)
        .fold((0.0, 0.0), |(s, c), (a, b)| {
            if a.2 >= b.2 {
                (s + a.1 - b.1, c + a.2 - b.2)
            } else {
                (s + a.1, c + a.2)
            }
        });
    let ca_rotated = match (&ca_before, &ca_after) {
        (Some(b), Some(a)) => b != a,
        _ => false,
    };
    eprintln!(
        "bench-admission {label}: {} sent in {secs:.1} s, {failed} failed",
        samples.len()
    );
    Step {
        label: label.to_string(),
        baseline: false,
        rate,
        secs,
        sent: samples.len(),
        latencies_ms,
        by_shape,
        failed,
        errors,
        lag_max_ms,
        per_replica,
        webhook_mean_ms: if count > 0.0 {
            1000.0 * sum / count
        } else {
            f64::NAN
        },
        ca_rotated,
        rss,
        connections,
        notes,
    }
}

/// deploy/webhook.yaml's MutatingWebhookConfiguration with every webhook's `clientConfig` the
/// front's URL, confined to `ns` (the shipped selectors stay in force).
fn configuration(url: &str, ns: &str) -> Value {
    let text = std::fs::read_to_string(support::repo().join("deploy/webhook.yaml"))
        .expect("deploy/webhook.yaml");
    let mut mwc = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <Value as serde::Deserialize>::deserialize(d).ok())
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("MutatingWebhookConfiguration in deploy/webhook.yaml");
    for h in mwc["webhooks"].as_array_mut().expect("webhooks") {
        h["clientConfig"] = json!({ "url": url });
        let mut sel = h["namespaceSelector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        sel.insert(
            "matchExpressions".into(),
            json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]),
        );
        h["namespaceSelector"] = Value::Object(sel);
    }
    mwc
}

async fn install(client: &Client, mwc: &Value) {
    support::install_webhook_configuration(client, mwc, "kaic-bench").await;
}

/// A pod over a limit, sent once: how long the refusal took and what it said.
struct OverLimit {
    what: String,
    bytes: usize,
    took_ms: f64,
    answer: Result<(), String>,
}

async fn over_limit(load: &Load, what: &str, vars: usize) -> OverLimit {
    let body = serde_json::to_vec(&oversized_pod(vars)).expect("pod json");
    let bytes = body.len();
    let request = http::Request::post(&load.path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("request");
    let t = Instant::now();
    let answer = load.client.request_text(request).await;
    OverLimit {
        what: what.to_string(),
        bytes,
        took_ms: t.elapsed().as_secs_f64() * 1000.0,
        answer: answer.map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// The message the webhook refuses a pod over its limit with (`review::MAX_REVIEW_BYTES`).
const TOO_LARGE: &str = "the pod is too large for the kube-aws-iam-controller webhook";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "admission").await;
    let sts = StsDouble::start().await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role(ROLE, ROLE, 3600))
        .await
        .expect("create the AWSIAMRole");
    let kubeconfig = match args.identity {
        Identity::ServiceAccount => {
            support::apply_manifest(&client, "deploy/rbac.yaml", None, false).await;
            support::apply_manifest(&client, "deploy/webhook-rbac.yaml", None, false).await;
            Some(sa_kubeconfig(env, &client, RBAC_NAMESPACE, RBAC_SERVICE_ACCOUNT).await)
        }
        Identity::Admin => None,
    };

    // The CA rotation step comes right after the rate steps: the leader stages the next CA
    // when a third of the CA's lifetime is left, so the lifetime is 1.5 times the time from
    // the CA's creation until then (the start of the second replica, the warm-up, the steps
    // and a margin the benchmark waits out).
    let before_rotation = 10.0
        + args.warmup_secs
        + (args.rates.len() + args.baseline_rates.len()) as f64 * (args.step_secs + 1.5)
        + args.rotation_margin_secs;
    let ca_lifetime = (1.5 * before_rotation).ceil() as u64;
    let ports = [free_port(), free_port()];
    let front = Front::start(&ports).await;
    install(
        &client,
        &configuration(&format!("https://{}/mutate", front.addr), &ns),
    )
    .await;
    let mut replicas = Replicas {
        env,
        ns: ns.clone(),
        sts_endpoint: sts.endpoint.clone(),
        flags: vec![
            "--webhook".into(),
            "--webhook-san=127.0.0.1".into(),
            format!("--webhook-namespace={RBAC_NAMESPACE}"),
            format!("--webhook-configuration={CONFIGURATION}"),
            format!("--webhook-secret={TLS_SECRET}"),
            format!("--webhook-ca-lifetime={ca_lifetime}s"),
            format!("--webhook-cert-overlap={}s", args.ca_overlap_secs),
            "--webhook-check-interval=1s".into(),
            format!("--lease-namespace={RBAC_NAMESPACE}"),
            "--log-level=warn".into(),
        ],
        launch: Launch {
            kubeconfig,
            ..Launch::default()
        },
        list: ports
            .iter()
            .map(|&port| Replica { port, bin: None })
            .collect(),
    };
    for i in 0..replicas.list.len() {
        replicas.start(i).await;
        front.set_ready(i, true);
    }
    support::ready_role(&roles, ROLE, "True", None).await;

    let bodies = SHAPES
        .iter()
        .map(|s| serde_json::to_vec(&pod(s)).expect("pod json"))
        .collect();
    let load = Arc::new(Load {
        client: client.clone(),
        path: format!("/api/v1/namespaces/{ns}/pods?dryRun=All"),
        bodies,
        max_in_flight: args.max_in_flight,
        wired: true,
        only_shape: args.only_shape.map(|k| usize::from(k) - 1),
        backends: front.backends.clone(),
    });
    let baseline_ns = env.namespace(&client, "admission-baseline").await;
    let baseline_load = Arc::new(Load {
        path: format!("/api/v1/namespaces/{baseline_ns}/pods?dryRun=All"),
        bodies: load.bodies.clone(),
        wired: false,
        only_shape: load.only_shape,
        client: client.clone(),
        max_in_flight: args.max_in_flight,
        backends: front.backends.clone(),
    });
    support::wait_for("the API server to call the webhook", || async {
        admit(&load, 0).await.error.is_none().then_some(())
    })
    .await;
    let mut admitted_bytes = Vec::new();
    for (k, shape) in SHAPES.iter().enumerate() {
        let sample = admit_shape(&load, k).await;
        if let Some(e) = sample.error {
            panic!("{}: {e}", shape.name);
        }
        admitted_bytes.push(sample.bytes);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), RBAC_NAMESPACE);
    let stage_at = {
        let ca = webhook::material(&secrets.get(TLS_SECRET).await.expect("TLS Secret"))
            .and_then(|m| m.ca)
            .expect("the webhook's CA");
        ca.not_after - chrono::Duration::seconds((ca_lifetime / 3) as i64)
    };

    // Warm-up, not counted: connections, caches, the allocator's first pages.
    let nothing = async |_: &mut Replicas| During::default();
    step(
        "warm-up",
        &load,
        args.rates.first().copied().unwrap_or(25.0),
        args.warmup_secs,
        &mut replicas,
        &secrets,
        nothing,
    )
    .await;
    let rss_start: Vec<f64> = (0..2).map(|i| rss_bytes(replicas.bin(i))).collect();

    let mut steps = Vec::new();
    // The rising rates, then the API server alone: the same pods where no webhook is called.
    let plain = args.rates.iter().map(|&r| (r, false));
    let baseline = args.baseline_rates.iter().map(|&r| (r, true));
    for (rate, alone) in plain.chain(baseline) {
        let (label, load) = match alone {
            false => (format!("{rate}/s"), &load),
            true => (format!("{rate}/s, API server alone"), &baseline_load),
        };
        let mut s = step(
            &label,
            load,
            rate,
            args.step_secs,
            &mut replicas,
            &secrets,
            nothing,
        )
        .await;
        s.baseline = alone;
        steps.push(s);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The CA rotation: from a few seconds before the leader stages the next CA until the new
    // one signs alone.
    let wait = (stage_at - chrono::Utc::now() - chrono::Duration::seconds(3))
        .to_std()
        .unwrap_or(Duration::ZERO);
    eprintln!(
        "bench-admission: waiting {:.0} s for the CA rotation",
        wait.as_secs_f64()
    );
    tokio::time::sleep(wait).await;
    let first_ca = ca_state(&secrets)
        .await
        .map(|(cn, _)| cn)
        .unwrap_or_default();
    let overlap = args.ca_overlap_secs;
    let secrets_ref = &secrets;
    let rotation = async move |_: &mut Replicas| {
        let t = Instant::now();
        let (mut staged, mut promoted) = (None, None);
        let limit = Duration::from_secs(60 + 4 * overlap);
        let retired = loop {
            if t.elapsed() > limit {
                break None;
            }
            if let Some(m) = secrets_ref
                .get(TLS_SECRET)
                .await
                .ok()
                .and_then(|s| webhook::material(&s))
            {
                let signing = m.ca.as_ref().map(|c| c.common_name.as_str());
                if staged.is_none() && m.next_ca.is_some() {
                    staged = Some(t.elapsed().as_secs_f64());
                }
                if promoted.is_none() && signing != Some(first_ca.as_str()) {
                    promoted = Some(t.elapsed().as_secs_f64());
                }
                if promoted.is_some() && m.previous_ca.is_none() && m.next_ca.is_none() {
                    break Some(t.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // A few seconds on the new CA alone: every replica must be serving its certificate.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let at = |x: Option<f64>| x.map_or("never".to_string(), |s| format!("{s:.1} s"));
        During {
            notes: vec![format!(
                "CA rotation ({overlap} s overlaps): the next CA in the caBundle at {}, signing at {}, the old CA out of the caBundle at {} into the step",
                at(staged),
                at(promoted),
                at(retired)
            )],
            counted_before_stop: Vec::new(),
        }
    };
    let s = step(
        &format!("{}/s, CA rotation", args.fault_rate),
        &load,
        args.fault_rate,
        0.0,
        &mut replicas,
        &secrets,
        rotation,
    )
    .await;
    let rotation_done = s.notes.iter().all(|n| !n.contains("never"));
    steps.push(s);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A rolling restart of the leader, a quarter into the step.
    let restarted = replicas.leader().await.unwrap_or(0);
    let mut rss_restart = (f64::NAN, f64::NAN);
    let quarter = Duration::from_secs_f64(args.step_secs / 4.0);
    let endpoint_delay = Duration::from_millis(args.endpoint_delay_ms);
    let (front_ref, rss_ref) = (&front, &mut rss_restart);
    let restart = async move |r: &mut Replicas| {
        tokio::time::sleep(quarter).await;
        let mut counted_before_stop = vec![None; r.list.len()];
        counted_before_stop[restarted] = r.counters().await.get(restarted).map(|c| c.0);
        rss_ref.0 = rss_bytes(r.bin(restarted));
        let t = Instant::now();
        let bin = r.list[restarted].bin.take().expect("running");
        let pid = bin.pid().expect("the replica's pid");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        // The pod is terminating: its endpoint leaves the Service a moment later.
        tokio::time::sleep(endpoint_delay).await;
        front_ref.set_ready(restarted, false);
        let status = tokio::task::spawn_blocking(move || {
            let mut bin = bin;
            let status = bin.child.wait();
            (status, bin)
        })
        .await
        .expect("wait for the replica")
        .0
        .map_or_else(|e| e.to_string(), |s| s.to_string());
        let stopped = t.elapsed().as_secs_f64();
        r.start(restarted).await;
        front_ref.set_ready(restarted, true);
        let ready = t.elapsed().as_secs_f64();
        rss_ref.1 = rss_bytes(r.bin(restarted));
        // Some load on both replicas again before the step ends.
        tokio::time::sleep(Duration::from_secs(3)).await;
        During {
            notes: vec![format!(
                "replica {restarted} (the leader) restarted: SIGTERM {:.1} s into the step, out of the front's rotation {:.1} s later, exited ({status}) {stopped:.2} s after the SIGTERM, ready and back in the rotation {ready:.2} s after it",
                quarter.as_secs_f64(),
                endpoint_delay.as_secs_f64()
            )],
            counted_before_stop,
        }
    };
    let s = step(
        &format!("{}/s, leader restarts", args.fault_rate),
        &load,
        args.fault_rate,
        args.step_secs,
        &mut replicas,
        &secrets,
        restart,
    )
    .await;
    steps.push(s);

    // Pods over a limit: one over the webhook's 1 MiB AdmissionReview limit but within the API
    // server's 3 MiB request limit, one over the webhook server's 2 MiB body limit.
    let limits = vec![
        over_limit(&load, "1.2 MiB pod", 15_000).await,
        over_limit(&load, "2.5 MiB pod", 31_000).await,
    ];

    let rss_end: Vec<f64> = (0..2).map(|i| rss_bytes(replicas.bin(i))).collect();
    let refused = front.refused.load(Ordering::SeqCst);
    let connections: Vec<usize> = front
        .backends
        .iter()
        .map(|b| b.connections.load(Ordering::SeqCst))
        .collect();
    for r in &mut replicas.list {
        if let Some(bin) = r.bin.take() {
            bin.kill();
        }
    }

    let report = Report {
        args: &args,
        steps: &steps,
        limits: &limits,
        restarted,
        rss_start,
        rss_end,
        rss_restart,
        rotation_done,
    };
    let (text, missed) = report.render();
    println!(
        "bench-admission: dry-run pod creates (dryRun=All) through the API server, 2 replicas behind a TCP front; controller identity {:?}; CA lifetime {ca_lifetime} s, overlap {} s\n",
        args.identity, args.ca_overlap_secs
    );
    println!(
        "pod mix (share of admissions: shape, pod JSON size, admitted pod with its managed fields, about the AdmissionReview's size):"
    );
    for (k, ((s, body), admitted)) in SHAPES
        .iter()
        .zip(&load.bodies)
        .zip(&admitted_bytes)
        .enumerate()
    {
        let share = match load.only_shape {
            Some(only) if only == k => 100,
            Some(_) => 0,
            None => s.weight,
        };
        println!(
            "- {share} %: {} ({:.0} KiB, admitted {:.0} KiB)",
            s.name,
            body.len() as f64 / 1024.0,
            *admitted as f64 / 1024.0
        );
    }
    println!("\n{text}");
    for s in &steps {
        for n in &s.notes {
            println!("- {n}");
        }
        for e in &s.errors {
            println!("- {}: failed: {}", s.label, one_line(e, 400));
        }
    }
    println!(
        "- front: connections per replica {connections:?}; connections refused or without a ready replica: {refused}"
    );
    if missed > 0 {
        println!("\nbench-admission: {missed} target(s) missed");
        std::process::exit(1);
    }
    println!("\nbench-admission: every target met");
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

struct Report<'a> {
    args: &'a Args,
    steps: &'a [Step],
    limits: &'a [OverLimit],
    restarted: usize,
    rss_start: Vec<f64>,
    rss_end: Vec<f64>,
    /// The restarted replica before its stop and after its restart.
    rss_restart: (f64, f64),
    rotation_done: bool,
}

impl Report<'_> {
    fn render(&self) -> (String, usize) {
        let mut out = String::new();
        let mut missed = 0;
        let mut cell = |ok: Option<bool>| match ok {
            Some(true) => " ✓",
            Some(false) => {
                missed += 1;
                " ✗"
            }
            None => "",
        };
        let _ = write!(out, "| measure | target |");
        for s in self.steps {
            let _ = write!(out, " {} |", s.label);
        }
        let _ = write!(out, "\n|---|---|");
        for _ in self.steps {
            out.push_str("---|");
        }
        out.push('\n');
        type Cell<'b> = &'b dyn Fn(&Step) -> (String, Option<bool>);
        let p99 = |s: &Step| {
            let p99 = s.quantile(0.99);
            let judged = !s.baseline && (s.rate - self.args.target_rate).abs() < 1e-9;
            (
                format!("{p99:.1}"),
                judged.then_some(p99 <= self.args.p99_target_ms),
            )
        };
        let ca_rotated = |s: &Step| {
            let want = s.label.contains("CA rotation");
            let ok = if want {
                s.ca_rotated && self.rotation_done
            } else {
                !s.ca_rotated
            };
            (if s.ca_rotated { "yes" } else { "no" }.into(), Some(ok))
        };
        let rows: Vec<(&str, String, Cell)> = vec![
            ("admissions sent", String::new(), &|s: &Step| {
                (format!("{} in {:.1} s", s.sent, s.secs), None)
            }),
            ("failed admissions", "0".into(), &|s: &Step| {
                (s.failed.to_string(), (!s.baseline).then_some(s.failed == 0))
            }),
            (
                "p50 (ms, API server included)",
                String::new(),
                &|s: &Step| (format!("{:.1}", s.quantile(0.5)), None),
            ),
            (
                "p99 (ms, API server included)",
                format!(
                    "≤ {:.0} at {:.0}/s",
                    self.args.p99_target_ms, self.args.target_rate
                ),
                &p99,
            ),
            (
                "p50 / p99, 1-container pods (ms)",
                String::new(),
                &|s: &Step| {
                    let v = &s.by_shape[0];
                    (
                        format!("{:.1} / {:.1}", quantile(v, 0.5), quantile(v, 0.99)),
                        None,
                    )
                },
            ),
            (
                "p50 / p99, 50-container pods (ms)",
                String::new(),
                &|s: &Step| {
                    let v = &s.by_shape[SHAPES.len() - 1];
                    (
                        format!("{:.1} / {:.1}", quantile(v, 0.5), quantile(v, 0.99)),
                        None,
                    )
                },
            ),
            ("max (ms)", String::new(), &|s: &Step| {
                (format!("{:.1}", s.quantile(1.0)), None)
            }),
            (
                "webhook's own time, mean (ms)",
                String::new(),
                &|s: &Step| (format!("{:.2}", s.webhook_mean_ms), None),
            ),
            ("admissions per replica", String::new(), &|s: &Step| {
                let v: Vec<String> = s.per_replica.iter().map(|x| format!("{x:.0}")).collect();
                (v.join(" / "), None)
            }),
            (
                "connections the API server opened",
                String::new(),
                &|s: &Step| (s.connections.to_string(), None),
            ),
            (
                "RSS at the step's end, per replica (MiB)",
                String::new(),
                &|s: &Step| {
                    let v: Vec<String> = s.rss.iter().map(|x| format!("{:.1}", x / MIB)).collect();
                    (v.join(" / "), None)
                },
            ),
            ("generator lag, max (ms)", String::new(), &|s: &Step| {
                (format!("{:.1}", s.lag_max_ms), None)
            }),
            (
                "CA rotated in the step",
                "in the rotation step only".into(),
                &ca_rotated,
            ),
        ];
        for (measure, target, f) in rows {
            let _ = write!(out, "| {measure} | {target} |");
            for s in self.steps {
                let (v, ok) = f(s);
                let _ = write!(out, " {v}{} |", cell(ok));
            }
            out.push('\n');
        }
        let target = self.args.rss_growth_target_mib;
        let _ = write!(
            out,
            "\n| replica RSS (VmRSS, MiB) | after the warm-up | at the end | growth (target ≤ {target:.0}) |\n|---|---|---|---|\n"
        );
        for i in 0..self.rss_start.len() {
            let (label, start, end) = if i == self.restarted {
                (
                    format!("replica {i} (restarted): old process until its stop"),
                    self.rss_start[i],
                    self.rss_restart.0,
                )
            } else {
                (format!("replica {i}"), self.rss_start[i], self.rss_end[i])
            };
            let growth = (end - start) / MIB;
            let _ = writeln!(
                out,
                "| {label} | {:.1} | {:.1} | {growth:+.1}{} |",
                start / MIB,
                end / MIB,
                cell(Some(growth <= target))
            );
            if i == self.restarted {
                let growth = (self.rss_end[i] - self.rss_restart.1) / MIB;
                let _ = writeln!(
                    out,
                    "| replica {i} (restarted): new process from ready | {:.1} | {:.1} | {growth:+.1}{} |",
                    self.rss_restart.1 / MIB,
                    self.rss_end[i] / MIB,
                    cell(Some(growth <= target))
                );
            }
        }
        let _ = write!(
            out,
            "\n| pod over a limit | pod JSON | target | answer |\n|---|---|---|---|\n"
        );
        for l in self.limits {
            let (answer, ok) = match &l.answer {
                Ok(()) => ("admitted".to_string(), false),
                Err(e) => (
                    format!("refused in {:.0} ms: {}", l.took_ms, one_line(e, 300)),
                    e.contains(TOO_LARGE),
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {:.2} MiB | refused with the webhook's message | {answer}{} |",
                l.what,
                l.bytes as f64 / MIB,
                cell(Some(ok))
            );
        }
        (out, missed)
    }
}
