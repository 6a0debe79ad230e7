//! Operability under faults: STS outages, SIGKILL at random points, two replicas with leader
//! election, graceful shutdown. (The API-server restart has its own test binary, since it
//! restarts the server all tests of a binary share.)

mod support;

use support::{Scene, scene};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{
    Binary, Controller, data, metric, role, start_binary, sts_issuer, test_settings, wait_for,
};

const ARN_PREFIX: &str = "arn:aws:iam::123456789012:role/";

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
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
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
    // The reconcile that wrote the status counts its backoff after its Events: a moment later.
    wait_for("the role counted in backoff", || async {
        let metrics = ctl.ctx.metrics.render();
        (metric(&metrics, "kaic_objects_in_backoff") == 1.0).then_some(())
    })
    .await;
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
    // Seeded, and the seed printed: a failing run can be replayed with KAIC_SEED.
    let seed: u64 = std::env::var("KAIC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("controller_killed_at_random_points_converges_after_restart: KAIC_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
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
        let log = bin.log.clone();
        let status = bin.signal("KILL");
        // The watchdog exits with the controller's status: 128 + 9 when SIGKILL ended it. Any
        // other status means it had already exited (or crashed) on its own.
        assert_eq!(
            status.code(),
            Some(137),
            "round {round} (KAIC_SEED={seed}): the controller was not running when killed: {status:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let bin = start_binary(env, &ns, &env.moto_endpoint, &["--leader-elect=false"]).await;
    wait_for(
        &format!("every role converged, no orphaned Secret (KAIC_SEED={seed})"),
        || converged(&client, &ns),
    )
    .await;
    bin.kill();
}

/// The holder named in the controller's Lease, if any.
async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("kube-aws-iam-controller")
        .await
        .expect("read lease")?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
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
        client,
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
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder_before = lease_holder(&leases)
        .await
        .expect("the leader holds the lease");
    let t = Instant::now();
    let status = first.signal("TERM");
    assert!(status.success(), "graceful exit: {status:?}");
    // Event, not time: as soon as the leader has exited, the Lease no longer names it (it was
    // released; a 60 s lease cannot have expired meanwhile).
    let holder_after = lease_holder(&leases).await;
    assert_ne!(
        holder_after.as_deref(),
        Some(holder_before.as_str()),
        "the lease was not released\nleader log:\n{}\nfollower log:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        second.logs()
    );
    wait_for("the follower to take over", || async {
        (second.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = t.elapsed();
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

#[tokio::test]
async fn sigterm_releases_the_lease_only_after_in_flight_reconciles_finished() {
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("drain").await;
    let sts = StsDouble::start().await;
    let arn = format!("{ARN_PREFIX}slow");
    // Long enough that a follower would take over (released lease: within a poll) and issue
    // while the leader's AssumeRole still hangs.
    sts.latency(&arn, Duration::from_secs(8));
    let lease = [
        "--lease-duration=60s",
        "--lease-grace=10s",
        "--shutdown-timeout=60s",
    ];
    let a = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let b = start_binary(env, &ns, &sts.endpoint, &lease).await;
    let leader = wait_for("a leader", || async { leader_of(&[&a, &b]).await }).await;
    let (first, second) = if leader == 0 { (a, b) } else { (b, a) };
    roles
        .create(&PostParams::default(), &role("slow", "slow", 3600))
        .await
        .expect("create");
    wait_for("the leader's AssumeRole to be in flight", || async {
        sts.requests()
            .iter()
            .any(|r| r.action == "AssumeRole")
            .then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = lease_holder(&leases).await.expect("held");
    let first_log = first.log.clone();
    // Off the test's runtime thread: the STS double answering the leader runs on it.
    let status = tokio::task::spawn_blocking(move || first.signal("TERM"))
        .await
        .expect("signal");
    assert!(status.success(), "graceful exit: {status:?}");
    // The leader finished its reconcile (the Secret is written) before it let go of the Lease.
    let written = secrets
        .get_opt("slow")
        .await
        .expect("get")
        .unwrap_or_else(|| {
            panic!(
                "the leader exited without finishing its reconcile:\n{}",
                std::fs::read_to_string(&first_log).unwrap_or_default()
            )
        });
    assert_ne!(lease_holder(&leases).await, Some(holder), "lease released");
    wait_for("the follower to take over", || async {
        (second.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;
    roles
        .create(&PostParams::default(), &role("next", "next", 3600))
        .await
        .expect("create");
    wait_for("the new leader works", || async {
        secrets.get_opt("next").await.ok().flatten()
    })
    .await;
    // One writer at a time: the follower found the Secret in place and issued nothing for it.
    assert_eq!(sts.assume_role_calls(&arn), 1, "issued once");
    let now = secrets.get("slow").await.expect("get");
    assert_eq!(now.data, written.data, "the follower did not rewrite it");
    second.kill();
}

#[tokio::test]
async fn the_controller_is_healthy_and_ready_while_discovery_retries_and_bare_names_follow() {
    let Scene {
        env,
        roles,
        secrets,
        ns,
        ..
    } = scene("discovery").await;
    let sts = StsDouble::start().await;
    // No IMDS (the harness disables it) and no GetCallerIdentity: discovery keeps retrying.
    sts.caller_identity_unavailable(true);
    let bin = support::start_binary_with(
        env,
        &ns,
        &sts.endpoint,
        &[],
        support::Launch {
            discover_base_role_arn: true,
            ..support::Launch::default()
        },
    )
    .await;
    // start_binary_with returned: /healthz answered 200 although discovery has not finished,
    // and the watches run: ready.
    wait_for("ready while discovery retries", || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let full = format!("{ARN_PREFIX}by-arn");
    roles
        .create(&PostParams::default(), &role("by-arn", &full, 3600))
        .await
        .expect("create");
    roles
        .create(&PostParams::default(), &role("by-name", "by-name", 3600))
        .await
        .expect("create");
    assert!(
        !bin.logs().contains("base role ARN discovered"),
        "discovery must still be failing here:\n{}",
        bin.logs()
    );
    // Meanwhile the roles say what they wait for, instead of nothing at all.
    let waiting =
        support::ready_role(&roles, "by-arn", "False", Some("ControllerIdentityUnknown")).await;
    println!(
        "waiting for the controller's identity: {:?}",
        waiting.ready_condition().map(|c| c.message.clone())
    );
    // Nothing is issued before the controller knows its own identity (the namespace role
    // policy's guard needs GetCallerIdentity too); once STS answers, the bare name resolves
    // against the discovered base without any change to the AWSIAMRole.
    sts.caller_identity_unavailable(false);
    let s = wait_for("the role given as a full ARN", || async {
        secrets.get_opt("by-arn").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&s, "role-arn"), full);
    let s = wait_for("the bare role name once discovery succeeded", || async {
        secrets.get_opt("by-name").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&s, "role-arn"), format!("{ARN_PREFIX}by-name"));
    bin.kill();
}

#[tokio::test]
#[should_panic(expected = "the controller panicked")]
async fn stopping_a_controller_that_panicked_fails_the_test() {
    let task = tokio::spawn(async { panic!("the controller panicked") });
    support::join_controller(task, Duration::from_secs(30)).await;
}

#[tokio::test]
#[should_panic(expected = "did not stop within")]
async fn stopping_a_controller_that_does_not_stop_fails_the_test() {
    let task = tokio::spawn(std::future::pending::<()>());
    support::join_controller(task, Duration::from_millis(100)).await;
}

#[test]
#[should_panic(expected = "no series kaic_renamed")]
fn an_absent_metric_fails_instead_of_reading_zero() {
    metric("kaic_leader 1\n", "kaic_renamed");
}

/// `scripts/test.sh` fails when a process of its run outlives the tests. It must find the
/// processes this run started, and only those: a cluster someone else started from the same
/// cached binaries once failed a passing run (the old check matched any process run from the
/// cache's paths).
#[test]
fn the_leftover_check_lists_the_processes_of_its_own_run_only() {
    let start = |run: &str| {
        std::process::Command::new("sleep")
            .arg("60")
            .env("KAIC_RUN_ID", run)
            .spawn()
            .expect("sleep")
    };
    let mut ours = start("leftover-check-ours");
    let mut theirs = start("leftover-check-theirs");
    let out = std::process::Command::new(support::repo().join("scripts/leftovers.sh"))
        .arg("leftover-check-ours")
        .env("KAIC_RUN_ID", "leftover-check-ours")
        .output()
        .expect("scripts/leftovers.sh runs");
    let _ = (ours.kill(), theirs.kill(), ours.wait(), theirs.wait());
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(listed, vec![ours.id()], "{out:?}");
}
