//! Benchmark: how the controller's cost grows with the number of AWSIAMRoles (targets P1–P5 and
//! a restart), measured with the release binary against the real local API server and the STS
//! test double answering with a fixed latency. Prints one Markdown table and exits 1 when a
//! target is missed. Run through `scripts/bench.sh [FLAGS]`; `--help` lists the flags.
//!
//! Per size N, in one fresh namespace and with one fresh STS double:
//! 1. N AWSIAMRoles (1 h sessions) are created through the API, concurrently (bounded).
//! 2. **P2** the controller starts: time until all N Secrets exist, time until every role was
//!    reconciled (status and Event written too), and the API requests that took, per role.
//! 3. **restart** it is killed and started again: time to ready, time until every role was
//!    reconciled, and AssumeRole calls for roles whose credentials were still outside the
//!    refresh window (target 0).
//! 4. **P1** new AWSIAMRoles are created one at a time while N exist: time from the create call
//!    to the Secret, STS latency subtracted.
//! 5. **P3/P4/P5** steady state, in compressed time: the double issues credentials that live
//!    `period + refresh limit` seconds and the controller runs with that refresh limit, so each
//!    role is renewed once per `period` instead of once per 45 minutes. Over a window of
//!    `--steady-periods` periods (4/3 of a period stands for an hour of 1 h sessions) it reads
//!    the API server's own `apiserver_request_total` and `apiserver_response_sizes`, the
//!    double's AssumeRole calls and the controller's RSS.
//!
//! The controller runs as it does in a cluster: as the ServiceAccount of deploy/rbac.yaml with a
//! bound token (`--identity admin`: the harness's system:masters client certificate).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::bench::{quantile, rss_bytes};
use support::sts_double::StsDouble;
use support::{
    BASE_ROLE_ARN, Binary, Env, Launch, env, role, sa_kubeconfig, start_binary_with,
    wait_for_within,
};

/// Session length of the roles the benchmark creates, and the default refresh limit: the real
/// refresh rule renews such a session every `3600 - 900` s.
const SESSION_SECS: i64 = 3600;
const DEFAULT_REFRESH_LIMIT_SECS: f64 = 900.0;
/// The writes one renewal needs: the Secret, the AWSIAMRole's status and the Event saying so.
const WRITES_PER_RENEWAL: f64 = 3.0;
/// The requests a new role needs: the GET that rules out a foreign Secret of its name, the
/// Secret's create, the status patch and the `CreateCredentials` Event.
const REQUESTS_PER_NEW_ROLE: f64 = 4.0;
const WRITE_VERBS: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// A renewal's writes follow its AssumeRole call within this long: renewals whose call is this
/// close to an edge of the steady window may have their call and their writes counted on
/// different sides of it.
const RENEWAL_SPAN: Duration = Duration::from_secs(1);
/// The ServiceAccount deploy/rbac.yaml grants the controller's permissions to: its namespace
/// and name.
const RBAC_NAMESPACE: &str = "kube-system";
const RBAC_SERVICE_ACCOUNT: &str = "kube-aws-iam-controller";
/// The API resources the controller reads and writes (leases are left out: the benchmark runs
/// it with `--leader-elect=false`, and the API server renews its own lease every 10 s).
const CONTROLLER_RESOURCES: &[&str] = &["secrets", "awsiamroles", "events", "namespaces"];

#[derive(Parser, Debug, Clone)]
#[command(about = "Prints how the controller's cost grows with the number of AWSIAMRoles")]
struct Args {
    /// Numbers of AWSIAMRoles, one column each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,2000,10000")]
    sizes: Vec<usize>,
    /// Latency of every AssumeRole answer of the STS double.
    #[arg(long, default_value_t = 50)]
    sts_latency_ms: u64,
    /// New AWSIAMRoles timed for P1 (one at a time).
    #[arg(long, default_value_t = 30)]
    p1_samples: usize,
    /// `--refresh-limit` given to the controller in compressed time (seconds).
    #[arg(long, default_value_t = 10)]
    refresh_limit_secs: u64,
    /// Compressed renewal period: this many seconds per 1,000 roles (longer than the cold
    /// start, so the first renewals do not overlap it) ...
    #[arg(long, default_value_t = 60)]
    period_per_1000_secs: u64,
    /// ... but at least this many.
    #[arg(long, default_value_t = 30)]
    min_period_secs: u64,
    /// Length of the steady-state window in renewal periods (4/3 is an hour of 1 h sessions).
    #[arg(long, default_value_t = 4.0 / 3.0)]
    steady_periods: f64,
    /// AWSIAMRoles created through the API at once while setting up.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// The controller's identity: `service-account` (the shipped ServiceAccount and RBAC of
    /// deploy/rbac.yaml, a bound token, as it runs in a cluster) or `admin` (the harness's
    /// client certificate, system:masters).
    #[arg(long, value_enum, default_value_t = Identity::ServiceAccount)]
    identity: Identity,
    /// Extra flag for the controller (repeatable), e.g. `--controller-arg=--concurrency=32`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// Target P1: p99 of a new role's time to its Secret, STS latency subtracted (ms).
    #[arg(long, default_value_t = 250.0)]
    p1_target_ms: f64,
    /// Target P2: cold-start rate (roles per second; 200 is 2,000 roles in 10 s). Sizes under
    /// 2,000 get the time 2,000 would get.
    #[arg(long, default_value_t = 200.0)]
    p2_target_roles_per_sec: f64,
    /// Target P4: controller RSS (MiB) after the cold start and after the renewals.
    #[arg(long, default_value_t = 64.0)]
    rss_target_mib: f64,
    /// Target P5: the measured renewal interval may differ from the rule's by this fraction.
    #[arg(long, default_value_t = 0.05)]
    p5_tolerance: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    ServiceAccount,
    Admin,
}

impl Args {
    fn period(&self, n: usize) -> Duration {
        Duration::from_secs((self.period_per_1000_secs * n as u64 / 1000).max(self.min_period_secs))
    }
}

/// Request counts and response bytes by verb, from the API server's `/metrics`.
#[derive(Clone, Debug, Default)]
struct ApiCounts {
    requests: BTreeMap<String, f64>,
    bytes: BTreeMap<String, f64>,
    /// Requests the API server answered with an error (a conflict, 4xx, 5xx), by verb.
    failed: BTreeMap<String, f64>,
}

impl ApiCounts {
    fn parse(text: &str) -> ApiCounts {
        let mut c = ApiCounts::default();
        for line in text.lines() {
            let (map, rest) = if let Some(rest) = line.strip_prefix("apiserver_request_total{") {
                (&mut c.requests, rest)
            } else if let Some(rest) = line.strip_prefix("apiserver_response_sizes_sum{") {
                (&mut c.bytes, rest)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |k: &str| {
                labels.split(',').find_map(|kv| {
                    kv.strip_prefix(k)
                        .and_then(|v| v.strip_prefix("=\""))
                        .map(|v| v.trim_end_matches('"'))
                })
            };
            let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
                continue;
            };
            if !CONTROLLER_RESOURCES.contains(&resource) {
                continue;
            }
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            if line.starts_with("apiserver_request_total{")
                && label("code").is_some_and(|code| !code.starts_with('2'))
            {
                *c.failed.entry(verb.to_string()).or_default() += v;
            }
            *map.entry(verb.to_string()).or_default() += v;
        }
        c
    }

    fn minus(&self, earlier: &ApiCounts) -> ApiCounts {
        let sub = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        };
        ApiCounts {
            requests: sub(&self.requests, &earlier.requests),
            bytes: sub(&self.bytes, &earlier.bytes),
            failed: sub(&self.failed, &earlier.failed),
        }
    }

    fn req(&self, verb: &str) -> f64 {
        self.requests.get(verb).copied().unwrap_or(0.0)
    }

    /// Write requests the API server refused (conflicts and errors): writes wasted.
    fn failed_writes(&self) -> f64 {
        WRITE_VERBS
            .iter()
            .map(|v| self.failed.get(*v).copied().unwrap_or(0.0))
            .sum()
    }

    fn writes(&self) -> f64 {
        WRITE_VERBS.iter().map(|v| self.req(v)).sum()
    }
}

async fn api_counts(client: &Client) -> ApiCounts {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("GET /metrics request");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    ApiCounts::parse(&text)
}

/// When each of the namespace's Secrets was first seen, from a metadata-only watch.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, Instant>>>);

impl Seen {
    fn watch(&self, client: &Client, ns: &str) -> tokio::task::JoinHandle<()> {
        let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), ns);
        let seen = self.clone();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(s)) = stream.try_next().await {
                let mut map = seen.0.lock().unwrap_or_else(|e| e.into_inner());
                map.entry(s.name_any()).or_insert_with(Instant::now);
            }
        })
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    fn get(&self, name: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }
}

/// AssumeRole calls received (the controller's start-up GetCallerIdentity is not one).
fn assume_role_calls(sts: &StsDouble) -> usize {
    sts.requests()
        .iter()
        .filter(|r| r.action == "AssumeRole")
        .count()
}

/// Successful AssumeRole calls by role ARN, in arrival order.
fn issues_by_role(sts: &StsDouble) -> HashMap<String, Vec<Instant>> {
    let mut by: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in sts.requests() {
        if r.action == "AssumeRole"
            && r.status == 200
            && let Some(arn) = r.role_arn
        {
            by.entry(arn).or_default().push(r.received_at);
        }
    }
    by
}

/// Everything measured for one size.
#[derive(Clone, Debug, Default)]
struct Row {
    n: usize,
    period_s: f64,
    p1_p50_ms: f64,
    p1_p99_ms: f64,
    cold_s: f64,
    /// Until every role was reconciled (its status and Event written too).
    cold_settled_s: f64,
    /// The API requests of the cold start, from the controller's start until every role was
    /// reconciled.
    cold_api: ApiCounts,
    cold_sts: usize,
    rss_cold: f64,
    restart_ready_s: f64,
    restart_settled_s: f64,
    restart_sts: usize,
    restart_sts_early: usize,
    rss_restart: f64,
    window_s: f64,
    api: ApiCounts,
    renewals: usize,
    /// AssumeRole calls within [`RENEWAL_SPAN`] of either edge of the steady window.
    edge_renewals: usize,
    rss_steady: f64,
    interval_mean_s: f64,
    interval_min_s: f64,
    intervals: usize,
}

async fn run_size(env: &'static Env, client: &Client, args: &Args, n: usize) -> Row {
    let latency = Duration::from_millis(args.sts_latency_ms);
    let period = args.period(n);
    let refresh_limit = Duration::from_secs(args.refresh_limit_secs);
    let ns = env.namespace(client, &format!("bench{n}")).await;
    let sts = StsDouble::start().await;
    let names: Vec<String> = (0..n + args.p1_samples)
        .map(|i| format!("bench-{i}"))
        .collect();
    for name in &names {
        let arn = format!("{BASE_ROLE_ARN}{name}");
        sts.latency(&arn, latency);
        sts.lifetime(&arn, period + refresh_limit);
    }
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    futures::stream::iter(&names[..n])
        .map(|name| {
            let roles = roles.clone();
            async move {
                roles
                    .create(&PostParams::default(), &role(name, name, SESSION_SECS))
                    .await
                    .expect("create AWSIAMRole");
            }
        })
        .buffer_unordered(args.create_concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "bench N={n}: created {n} AWSIAMRoles in {:.1} s; renewal period {period:?}",
        t.elapsed().as_secs_f64()
    );

    let seen = Seen::default();
    let watch = seen.watch(client, &ns);
    let refresh_flag = format!("--refresh-limit={}s", args.refresh_limit_secs);
    let mut flags: Vec<&str> = vec![
        "--leader-elect=false",
        "--log-level=warn",
        refresh_flag.as_str(),
        // The requeue floor is the backoff base: compressed like the sessions, or it alone
        // would make a 30 s renewal period up to 5 s late.
        "--backoff-base=1s",
    ];
    flags.extend(args.controller_args.iter().map(String::as_str));
    let long = Duration::from_secs(3600);
    let launch = Launch {
        // A fresh token per size: a bound token lives an hour.
        kubeconfig: match args.identity {
            Identity::ServiceAccount => {
                Some(sa_kubeconfig(env, client, RBAC_NAMESPACE, RBAC_SERVICE_ACCOUNT).await)
            }
            Identity::Admin => None,
        },
        ..Launch::default()
    };
    let start = || start_binary_with(env, &ns, &sts.endpoint, &flags, launch.clone());

    // P2: cold start.
    let api_before = api_counts(client).await;
    let t = Instant::now();
    let bin = start().await;
    wait_for_within("all Secrets (cold start)", long, || async {
        (seen.len() >= n).then_some(())
    })
    .await;
    let cold_s = t.elapsed().as_secs_f64();
    wait_for_reconciled(&bin, n).await;
    let cold_settled_s = t.elapsed().as_secs_f64();
    let cold_api = api_counts(client).await.minus(&api_before);
    let cold_sts = assume_role_calls(&sts);
    let rss_cold = rss_bytes(&bin);
    eprintln!(
        "bench N={n}: cold start {cold_s:.2} s (every role reconciled {cold_settled_s:.2} s), {cold_sts} STS calls, requests {:?}",
        cold_api.requests
    );
    bin.kill();

    // Restart.
    let before = assume_role_calls(&sts);
    let t = Instant::now();
    let bin = start().await;
    wait_for_within("ready after restart", long, || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let restart_ready_s = t.elapsed().as_secs_f64();
    wait_for_reconciled(&bin, n).await;
    let restart_settled_s = t.elapsed().as_secs_f64();
    let restart_sts = assume_role_calls(&sts) - before;
    // A call is due when the role's previous credentials reached the refresh window.
    let restart_start = t;
    let due_after = period.saturating_sub(Duration::from_millis(1500));
    let restart_sts_early = issues_by_role(&sts)
        .values()
        .flat_map(|times| times.windows(2))
        .filter(|w| w[1] >= restart_start && w[1].duration_since(w[0]) < due_after)
        .count();
    let rss_restart = rss_bytes(&bin);
    eprintln!(
        "bench N={n}: restart ready {restart_ready_s:.2} s, settled {restart_settled_s:.2} s, {restart_sts} STS calls"
    );

    // P1: new roles while N exist.
    let mut p1 = Vec::new();
    for name in &names[n..] {
        let t = Instant::now();
        roles
            .create(&PostParams::default(), &role(name, name, SESSION_SECS))
            .await
            .expect("create AWSIAMRole");
        let at = wait_for_p1(&seen, name).await;
        p1.push((at.duration_since(t).saturating_sub(latency)).as_secs_f64() * 1000.0);
    }
    p1.sort_by(f64::total_cmp);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in &names[n..] {
        let s = secrets.get(name).await.expect("P1 Secret");
        assert!(
            support::data(&s, "credentials").contains("aws_session_token"),
            "the Secret of {name} holds no credentials"
        );
    }
    // Nothing of the benchmark's own may run through the steady-state window.
    watch.abort();
    let _ = watch.await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // P3, P4, P5: steady state.
    let all = n + args.p1_samples;
    let window = period.mul_f64(args.steady_periods);
    let api_before = api_counts(client).await;
    let sts_before = assume_role_calls(&sts);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let api_after = api_counts(client).await;
    let window_s = t.elapsed().as_secs_f64();
    let t_end = Instant::now();
    let renewals = assume_role_calls(&sts) - sts_before;
    tokio::time::sleep(RENEWAL_SPAN).await;
    let near =
        |at: Instant, edge: Instant| at.max(edge).duration_since(at.min(edge)) <= RENEWAL_SPAN;
    let edge_renewals = sts
        .requests()
        .iter()
        .filter(|r| {
            r.action == "AssumeRole" && (near(r.received_at, t) || near(r.received_at, t_end))
        })
        .count();
    let rss_steady = rss_bytes(&bin);
    let by_role = issues_by_role(&sts);
    let intervals: Vec<f64> = by_role
        .values()
        .flat_map(|times| times.windows(2))
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    bin.kill();
    let interval_mean_s = intervals.iter().sum::<f64>() / intervals.len().max(1) as f64;
    let interval_min_s = intervals.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "bench N={n}: steady {window_s:.0} s, {renewals} renewals of {all} roles, {} intervals, mean {interval_mean_s:.2} s",
        intervals.len()
    );
    Row {
        n,
        period_s: period.as_secs_f64(),
        p1_p50_ms: quantile(&p1, 0.5),
        p1_p99_ms: quantile(&p1, 0.99),
        cold_s,
        cold_settled_s,
        cold_api,
        cold_sts,
        rss_cold,
        restart_ready_s,
        restart_settled_s,
        restart_sts,
        restart_sts_early,
        rss_restart,
        window_s,
        api: api_after.minus(&api_before),
        edge_renewals,
        renewals,
        rss_steady,
        interval_mean_s,
        interval_min_s,
        intervals: intervals.len(),
    }
}

/// Waits until the controller counts `n` successful reconciles (`kaic_reconciles_total`).
async fn wait_for_reconciled(bin: &Binary, n: usize) {
    wait_for_within(
        "every role reconciled",
        Duration::from_secs(3600),
        || async {
            let m = bin.admin("/metrics").await;
            let ok: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("kaic_reconciles_total{result=\"ok\"} "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            (ok as usize >= n).then_some(())
        },
    )
    .await;
}

async fn wait_for_p1(seen: &Seen, name: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(at) = seen.get(name) {
            return at;
        }
        assert!(Instant::now() < deadline, "no Secret for {name} in 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One line of the table: a measure, its target, and per size a value and whether it meets it.
struct Line {
    measure: String,
    target: String,
    cells: Vec<(String, Option<bool>)>,
}

const MIB: f64 = 1024.0 * 1024.0;

fn lines(args: &Args, rows: &[Row]) -> Vec<Line> {
    let line = |measure: &str, target: &str, f: &dyn Fn(&Row) -> (String, Option<bool>)| Line {
        measure: measure.into(),
        target: target.into(),
        cells: rows.iter().map(f).collect(),
    };
    // The rule's renewals per role per hour for 1 h sessions and the default 15 min limit.
    let real_period = SESSION_SECS as f64 - DEFAULT_REFRESH_LIMIT_SECS;
    let per_real_hour = |r: &Row, x: f64| {
        // x per renewal, times the renewals N roles need in a real hour.
        x / r.renewals.max(1) as f64 * (r.n + args.p1_samples) as f64 * 3600.0 / real_period
    };
    let p2_limit = |r: &Row| r.n.max(2000) as f64 / args.p2_target_roles_per_sec;
    vec![
        line(
            "P1 new role → Secret, p50 (ms, STS latency subtracted)",
            "",
            &|r| (format!("{:.0}", r.p1_p50_ms), None),
        ),
        line(
            "P1 new role → Secret, p99 (ms, STS latency subtracted)",
            &format!("≤ {:.0}", args.p1_target_ms),
            &|r| {
                (
                    format!("{:.0}", r.p1_p99_ms),
                    Some(r.p1_p99_ms <= args.p1_target_ms),
                )
            },
        ),
        line(
            &format!("P2 cold start, {} ms STS latency (s)", args.sts_latency_ms),
            &format!(
                "≤ N/{:.0} s (2,000 in ≤ {:.0} s)",
                args.p2_target_roles_per_sec,
                2000.0 / args.p2_target_roles_per_sec
            ),
            &|r| (format!("{:.2}", r.cold_s), Some(r.cold_s <= p2_limit(r))),
        ),
        line("P2 cold start (roles/s)", "", &|r| {
            (format!("{:.0}", r.n as f64 / r.cold_s), None)
        }),
        line(
            "P2 every role reconciled (status and Event too) (s)",
            "",
            &|r| (format!("{:.2}", r.cold_settled_s), None),
        ),
        line(
            "P2 API requests per role (besides the start's LISTs and WATCHes)",
            &format!("≤ {REQUESTS_PER_NEW_ROLE:.0} (GET, Secret, status, Event)"),
            &|r| {
                let per_role = r
                    .cold_api
                    .requests
                    .iter()
                    .filter(|(verb, _)| !matches!(verb.as_str(), "LIST" | "WATCH"))
                    .fold(0.0, |a, (_, c)| a + c)
                    / r.n.max(1) as f64;
                (
                    format!("{per_role:.3}"),
                    Some(per_role <= REQUESTS_PER_NEW_ROLE),
                )
            },
        ),
        line("P2 LIST requests at the start", "", &|r| {
            (format!("{:.0}", r.cold_api.req("LIST")), None)
        }),
        line("P2 AssumeRole calls", "N", &|r| {
            (r.cold_sts.to_string(), Some(r.cold_sts == r.n))
        }),
        line("P3 LIST requests in the steady window", "0", &|r| {
            (
                format!("{:.0}", r.api.req("LIST")),
                Some(r.api.req("LIST") == 0.0),
            )
        }),
        line("P3 renewals in the steady window", "", &|r| {
            (r.renewals.to_string(), None)
        }),
        line(
            "P3 writes per renewal (Secret, status, Event)",
            &format!("≤ {WRITES_PER_RENEWAL:.0} (± renewals at the window's edges)"),
            &|r| {
                let renewals = r.renewals.max(1) as f64;
                let w = r.api.writes() / renewals;
                let edge = WRITES_PER_RENEWAL * r.edge_renewals as f64 / renewals;
                (
                    format!("{w:.3} (± {edge:.3})"),
                    Some(w <= WRITES_PER_RENEWAL + edge),
                )
            },
        ),
        line("P3 failed writes (conflicts, errors)", "0", &|r| {
            let f = r.api.failed_writes();
            (format!("{f:.0}"), Some(f == 0.0))
        }),
        line("P3 GETs per renewal", "", &|r| {
            (
                format!("{:.2}", r.api.req("GET") / r.renewals.max(1) as f64),
                None,
            )
        }),
        line("P3 WATCH requests per hour (wall clock)", "", &|r| {
            (
                format!("{:.0}", r.api.req("WATCH") * 3600.0 / r.window_s),
                None,
            )
        }),
        line("P3 non-WATCH requests per hour at 1 h sessions", "", &|r| {
            let total: f64 = r
                .api
                .requests
                .iter()
                .filter(|(v, _)| v.as_str() != "WATCH")
                .map(|(_, c)| c)
                .sum();
            (format!("{:.0}", per_real_hour(r, total)), None)
        }),
        line("P3 response bytes per hour at 1 h sessions", "", &|r| {
            // Not `sum()`: an empty f64 sum is -0.0, printed "-0".
            let total = r.api.bytes.values().fold(0.0, |a, b| a + b);
            (format!("{:.0}", per_real_hour(r, total)), None)
        }),
        line(
            "P4 RSS after the cold start (MiB)",
            &format!("≤ {:.0}", args.rss_target_mib),
            &|r| {
                (
                    format!("{:.1}", r.rss_cold / MIB),
                    Some(r.rss_cold / MIB <= args.rss_target_mib),
                )
            },
        ),
        line(
            "P4 RSS after an hour of renewals (MiB)",
            &format!("≤ {:.0}", args.rss_target_mib),
            &|r| {
                (
                    format!("{:.1}", r.rss_steady / MIB),
                    Some(r.rss_steady / MIB <= args.rss_target_mib),
                )
            },
        ),
        line("P4 RSS per role after renewals (KiB)", "", &|r| {
            (
                format!(
                    "{:.1}",
                    r.rss_steady / 1024.0 / (r.n + args.p1_samples) as f64
                ),
                None,
            )
        }),
        line(
            "P5 mean renewal interval / the rule's (compressed time)",
            &format!("1 ± {:.2}", args.p5_tolerance),
            &|r| {
                let ratio = r.interval_mean_s / r.period_s;
                (
                    format!(
                        "{ratio:.3} ({:.1} s / {:.0} s)",
                        r.interval_mean_s, r.period_s
                    ),
                    Some(r.intervals > 0 && (ratio - 1.0).abs() <= args.p5_tolerance),
                )
            },
        ),
        line(
            "P5 shortest renewal interval (s)",
            "≥ period − 1.5 s",
            &|r| {
                (
                    format!("{:.1}", r.interval_min_s),
                    Some(r.interval_min_s >= r.period_s - 1.5),
                )
            },
        ),
        line(
            "P5 AssumeRole per role per hour at 1 h sessions",
            &format!("{:.3} (the rule)", 3600.0 / real_period),
            &|r| {
                let ratio = r.interval_mean_s / r.period_s;
                (format!("{:.3}", 3600.0 / real_period / ratio), None)
            },
        ),
        line("restart: time to ready (s)", "", &|r| {
            (format!("{:.2}", r.restart_ready_s), None)
        }),
        line("restart: every role reconciled (s)", "", &|r| {
            (format!("{:.2}", r.restart_settled_s), None)
        }),
        line(
            "restart: AssumeRole calls (all / for valid credentials)",
            "0 for valid",
            &|r| {
                (
                    format!("{} / {}", r.restart_sts, r.restart_sts_early),
                    Some(r.restart_sts_early == 0),
                )
            },
        ),
        line("restart: RSS (MiB)", "", &|r| {
            (format!("{:.1}", r.rss_restart / MIB), None)
        }),
    ]
}

fn table(args: &Args, rows: &[Row]) -> (String, usize) {
    let mut out = String::new();
    let _ = write!(out, "| measure | target |");
    for r in rows {
        let _ = write!(out, " N = {} |", r.n);
    }
    let _ = write!(out, "\n|---|---|");
    for _ in rows {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    let mut missed = 0;
    for l in lines(args, rows) {
        let _ = write!(out, "| {} | {} |", l.measure, l.target);
        for (value, ok) in l.cells {
            let mark = match ok {
                Some(true) => " ✓",
                Some(false) => {
                    missed += 1;
                    " ✗"
                }
                None => "",
            };
            let _ = write!(out, " {value}{mark} |");
        }
        out.push('\n');
    }
    (out, missed)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let env = env().await;
    let client = env.client().await;
    if args.identity == Identity::ServiceAccount {
        support::apply_manifest(&client, "deploy/rbac.yaml", None, false).await;
    }
    let mut rows = Vec::new();
    for &n in &args.sizes {
        rows.push(run_size(env, &client, &args, n).await);
    }
    let (text, missed) = table(&args, &rows);
    println!(
        "bench: STS latency {} ms, refresh limit {} s in compressed time, steady window {} periods, controller identity {:?}, controller flags {:?}\n",
        args.sts_latency_ms,
        args.refresh_limit_secs,
        args.steady_periods,
        args.identity,
        args.controller_args
    );
    println!("{text}");
    for r in &rows {
        println!(
            "N = {}: steady window {:.0} s, renewal period {:.0} s, requests by verb {:?}, failed {:?}, response bytes by verb {:?}, renewals at the edges {}",
            r.n, r.window_s, r.period_s, r.api.requests, r.api.failed, r.api.bytes, r.edge_renewals
        );
    }
    for r in &rows {
        println!(
            "N = {}: cold start requests by verb {:?}, failed {:?}",
            r.n, r.cold_api.requests, r.cold_api.failed
        );
    }
    if missed > 0 {
        println!("\nbench: {missed} target(s) missed");
        std::process::exit(1);
    }
    println!("\nbench: every target met");
}
