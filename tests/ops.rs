//! Operability under faults: STS outages, SIGKILL at random points, two replicas with leader
//! election, graceful shutdown. (The API-server restart has its own test binary, since it
//! restarts the server all tests of a binary share.)

mod support;

use support::{Scene, scene};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use serde_json::json;

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{
    Binary, data, role, run_controller, start_binary, sts_issuer, test_settings, wait_for,
};

const ARN_PREFIX: &str = "arn:aws:iam::123456789012:role/";

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn sts_outage_keeps_the_last_credentials_backs_off_and_recovers() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("outage").await;
    let sts = StsDouble::start().await;
    let arn = format!("{ARN_PREFIX}outage");
    // Credentials live 20 s and are renewed 15 s before expiry; the outage lasts 25 s, so it
    // spans the whole refresh window and the expiry.
    sts.lifetime(&arn, Duration::from_secs(20));
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(15);
    settings.backoff_base = Duration::from_secs(1);
    settings.max_backoff = Duration::from_secs(8);
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), settings).await;
    roles
        .create(&PostParams::default(), &role("outage", "outage", 900))
        .await
        .expect("create");
    let good = wait_for("secret", || async {
        secrets.get_opt("outage").await.ok().flatten()
    })
    .await;
    sts.unavailable(true);
    let started = Instant::now();
    wait_for("Ready=False STSUnavailable", || async {
        let r = roles.get("outage").await.ok()?;
        let c = r.ready_condition()?;
        (c.status == "False" && c.reason == "STSUnavailable").then_some(())
    })
    .await;
    let requests_at_failure = sts.total_calls();
    let metrics = ctl.ctx.metrics.render();
    assert_eq!(
        metric(&metrics, "kaic_objects_in_backoff"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "kaic_awsiamroles{ready=\"false\"}"), 1.0);
    let expiry = chrono::DateTime::parse_from_rfc3339(&data(&good, "expire"))
        .expect("expire")
        .timestamp() as f64;
    assert_eq!(
        metric(
            &metrics,
            "kaic_credentials_earliest_expiry_timestamp_seconds"
        ),
        expiry
    );

    tokio::time::sleep(Duration::from_secs(25).saturating_sub(started.elapsed())).await;
    let during = secrets.get("outage").await.expect("secret");
    assert_eq!(
        during.data, good.data,
        "the Secret keeps its last credentials, never empty ones"
    );
    // Backoff 1, 2, 4, 8, 8 s (x0.5-1 jitter): at most ~10 reconciles in 25 s, each with the
    // SDK's 3 attempts. A per-tick retry (the Go controller) would be far more.
    let failed_reconciles = metric(
        &ctl.ctx.metrics.render(),
        "kaic_sts_calls_total{operation=\"AssumeRole\",result=\"STSUnavailable\"}",
    );
    assert!(
        failed_reconciles <= 12.0,
        "{failed_reconciles} AssumeRole reconciles during a 25 s outage"
    );
    assert!(sts.total_calls() - requests_at_failure <= 36);

    sts.unavailable(false);
    let renewed = wait_for("new credentials after the outage", || async {
        secrets
            .get_opt("outage")
            .await
            .ok()
            .flatten()
            .filter(|s| data(s, "expire") > data(&good, "expire"))
    })
    .await;
    assert!(!data(&renewed, "credentials.json").is_empty());
    wait_for("Ready=True", || async {
        roles
            .get("outage")
            .await
            .ok()?
            .ready_condition()
            .filter(|c| c.status == "True")
            .map(|_| ())
    })
    .await;
    wait_for("backoff cleared", || async {
        (metric(&ctl.ctx.metrics.render(), "kaic_objects_in_backoff") == 0.0).then_some(())
    })
    .await;
    ctl.stop().await;
}

/// Every AWSIAMRole has a Secret for its current generation and role; every labelled Secret
/// has its AWSIAMRole.
async fn converged(client: &Client, ns: &str) -> Option<()> {
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let roles = roles.list(&ListParams::default()).await.ok()?.items;
    let labelled = secrets
        .list(&ListParams::default().labels("heritage=kube-aws-iam-controller"))
        .await
        .ok()?
        .items;
    let by_name: BTreeMap<String, &Secret> = labelled.iter().map(|s| (s.name_any(), s)).collect();
    for r in &roles {
        let s = by_name.get(&r.name_any())?;
        let want_arn = if r.spec.role_reference.starts_with("arn:") {
            r.spec.role_reference.clone()
        } else {
            format!("{ARN_PREFIX}{}", r.spec.role_reference)
        };
        if data(s, "awsiamrole-generation") != r.metadata.generation.unwrap_or_default().to_string()
            || data(s, "role-arn") != want_arn
            || s.owner_references()
                .iter()
                .all(|o| Some(&o.uid) != r.metadata.uid.as_ref())
        {
            return None;
        }
    }
    (labelled.len() == roles.len()).then_some(())
}

#[tokio::test]
async fn controller_killed_at_random_points_converges_after_restart() {
    let Scene {
        env,
        client,
        ns,
        roles,
        ..
    } = scene("sigkill").await;
    let mut rng = rand::rng();
    let mut alive: Vec<String> = Vec::new();
    let mut next = 0;
    for round in 0..5 {
        let bin = start_binary(env, &ns, &env.moto_endpoint, &["--leader-elect=false"]).await;
        for _ in 0..4 {
            match rng.random_range(0..4) {
                0 | 1 => {
                    let name = format!("role-{next}");
                    next += 1;
                    roles
                        .create(&PostParams::default(), &role(&name, &name, 3600))
                        .await
                        .expect("create");
                    alive.push(name);
                }
                2 if !alive.is_empty() => {
                    let name = alive[rng.random_range(0..alive.len())].clone();
                    let patch = json!({"spec": {"roleReference": format!("{name}-v{round}")}});
                    roles
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .expect("patch");
                }
                _ if !alive.is_empty() => {
                    let name = alive.remove(rng.random_range(0..alive.len()));
                    roles
                        .delete(&name, &DeleteParams::default())
                        .await
                        .expect("delete");
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        }
        let status = bin.signal("KILL");
        assert!(!status.success() || status.code().is_some());
    }
    let bin = start_binary(env, &ns, &env.moto_endpoint, &["--leader-elect=false"]).await;
    wait_for("every role converged, no orphaned Secret", || {
        converged(&client, &ns)
    })
    .await;
    bin.kill();
}

async fn leader_of<'a>(bins: &'a [&'a Binary]) -> Option<usize> {
    for (i, b) in bins.iter().enumerate() {
        if b.metric("kaic_leader").await == Some(1.0) {
            return Some(i);
        }
    }
    None
}

#[tokio::test]
async fn two_replicas_issue_once_and_the_follower_takes_over() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("ha").await;
    let sts = StsDouble::start().await;
    let lease = [
        "--lease-duration=6s",
        "--lease-grace=2s",
        "--log-format=json",
    ];
    let a = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let b = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let leader = wait_for("a leader", || async { leader_of(&[&a, &b]).await }).await;
    for name in ["ha-one", "ha-two", "ha-three"] {
        roles
            .create(&PostParams::default(), &role(name, name, 3600))
            .await
            .expect("create");
    }
    for name in ["ha-one", "ha-two", "ha-three"] {
        wait_for(name, || async {
            secrets.get_opt(name).await.ok().flatten()
        })
        .await;
    }
    // Both replicas are ready (readiness never depends on leadership); only one is leader.
    for bin in [&a, &b] {
        wait_for("ready", || async {
            Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
        })
        .await;
    }
    assert_eq!(leader_of(&[&a, &b]).await, Some(leader));
    let follower_metric = [&a, &b][1 - leader].metric("kaic_leader").await;
    assert_eq!(follower_metric, Some(0.0));
    for name in ["ha-one", "ha-two", "ha-three"] {
        assert_eq!(
            sts.assume_role_calls(&format!("{ARN_PREFIX}{name}")),
            1,
            "{name} issued once"
        );
    }

    // SIGKILL the leader: the Lease is not released, the follower waits for it to expire.
    let (dead, survivor) = if leader == 0 { (a, b) } else { (b, a) };
    let dead_logs = dead.logs();
    let killed = Instant::now();
    dead.signal("KILL");
    wait_for("the follower to take over", || async {
        (survivor.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(12),
        "takeover took {takeover:?} with a 6 s lease"
    );
    roles
        .create(&PostParams::default(), &role("ha-four", "ha-four", 3600))
        .await
        .expect("create");
    wait_for("ha-four", || async {
        secrets.get_opt("ha-four").await.ok().flatten()
    })
    .await;
    for name in ["ha-one", "ha-two", "ha-three", "ha-four"] {
        assert_eq!(
            sts.assume_role_calls(&format!("{ARN_PREFIX}{name}")),
            1,
            "{name}: no duplicate issuance"
        );
    }
    eprintln!("takeover after SIGKILL of the leader: {takeover:?}");

    // No issued secret key or session token in any replica's logs.
    let logs = format!("{dead_logs}{}", survivor.logs());
    for s in secrets
        .list(&ListParams::default().labels("type=awsiamrole"))
        .await
        .expect("list")
        .items
    {
        let json: serde_json::Value =
            serde_json::from_str(&data(&s, "credentials.json")).expect("json");
        for field in ["SecretAccessKey", "SessionToken"] {
            let v = json[field].as_str().expect("field");
            assert!(!logs.contains(v), "{field} of {} in the logs", s.name_any());
        }
    }
    survivor.kill();
}

#[tokio::test]
async fn sigterm_releases_the_lease_so_the_follower_takes_over_at_once() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("term").await;
    let sts = StsDouble::start().await;
    // A long lease: only a released Lease lets the follower take over quickly.
    let lease = ["--lease-duration=60s", "--lease-grace=10s"];
    let a = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let b = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let leader = wait_for("a leader", || async { leader_of(&[&a, &b]).await }).await;
    let (first, second) = if leader == 0 { (a, b) } else { (b, a) };
    let first_log = first.log.clone();
    let t = Instant::now();
    let status = first.signal("TERM");
    assert!(status.success(), "graceful exit: {status:?}");
    wait_for("the follower to take over", || async {
        (second.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = t.elapsed();
    assert!(
        takeover < Duration::from_secs(30),
        "takeover took {takeover:?}: the lease was not released\nleader log:\n{}\nfollower log:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        second.logs()
    );
    eprintln!("takeover after SIGTERM of the leader: {takeover:?}");
    roles
        .create(&PostParams::default(), &role("after", "after", 3600))
        .await
        .expect("create");
    wait_for("after", || async {
        secrets.get_opt("after").await.ok().flatten()
    })
    .await;
    second.kill();
}
