//! Benchmark: cold start of many AWSIAMRoles and a restart, with the controller binary against
//! the real local API server and the STS test double answering with a fixed latency.
//! Prints numbers; asserts nothing about time. Run through `scripts/bench.sh [ROLES]`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{Binary, env, role, start_binary, wait_for_within};

fn rss_kib(bin: &Binary) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", bin.pid()?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn secrets_count(api: &Api<Secret>) -> usize {
    api.list(&ListParams::default().labels("type=awsiamrole"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let roles_n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let latency = Duration::from_millis(100);
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bench").await;
    let sts = StsDouble::start().await;
    for i in 0..roles_n {
        sts.latency(&format!("{}bench-{i}", support::BASE_ROLE_ARN), latency);
    }
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for i in 0..roles_n {
        let name = format!("bench-{i}");
        roles
            .create(&PostParams::default(), &role(&name, &name, 3600))
            .await
            .expect("create");
    }
    println!("bench: {roles_n} AWSIAMRoles, STS latency {latency:?}, --concurrency 16 (default)");

    let t = Instant::now();
    let bin = start_binary(
        env,
        &ns,
        &sts.endpoint,
        &["--leader-elect=false", "--log-level=warn"],
    )
    .await;
    wait_for_within("all Secrets", Duration::from_secs(1800), || async {
        (secrets_count(&secrets).await == roles_n).then_some(())
    })
    .await;
    let cold = t.elapsed();
    println!(
        "cold start: {roles_n} Secrets in {:.2} s ({:.1} roles/s); AssumeRole calls: {}; controller RSS: {} KiB",
        cold.as_secs_f64(),
        roles_n as f64 / cold.as_secs_f64(),
        sts.total_calls(),
        rss_kib(&bin).map_or("?".into(), |v| v.to_string())
    );
    bin.kill();

    let before = sts.total_calls();
    let t = Instant::now();
    let bin = start_binary(
        env,
        &ns,
        &sts.endpoint,
        &["--leader-elect=false", "--log-level=warn"],
    )
    .await;
    wait_for_within("ready", Duration::from_secs(600), || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let ready = t.elapsed();
    // Let every role be reconciled once (a GET of its Secret each).
    wait_for_within("all roles reconciled", Duration::from_secs(600), || async {
        let m = bin.admin("/metrics").await;
        let n: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("kaic_reconciles_total{result=\"ok\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        (n as usize >= roles_n).then_some(())
    })
    .await;
    let settled = t.elapsed();
    println!(
        "restart: ready in {:.2} s, all {roles_n} roles reconciled in {:.2} s, AssumeRole calls: {}; controller RSS: {} KiB",
        ready.as_secs_f64(),
        settled.as_secs_f64(),
        sts.total_calls() - before,
        rss_kib(&bin).map_or("?".into(), |v| v.to_string())
    );
    bin.kill();
}
