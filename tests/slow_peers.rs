//! Slow and broken peers (issue 24). STS: an endpoint that accepts the connection and never
//! answers, one whose `AssumeRole` never answers, and one that answers one byte a second: every
//! call ends within `--sts-timeout`, no worker is stuck behind such a role, and the other roles
//! keep renewing. The API server: watches answered with garbage or cut off in the middle of an
//! event: the controller watches again and keeps serving. Each test prints what it measured.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube_aws_iam_controller::crd::AWSIAMRole;
use tokio::net::TcpListener;

use kube_aws_iam_controller::aws::sts::StsIssuer;
use kube_aws_iam_controller::aws::{CredentialIssuer, IssueRequest, RequestOptions};
use support::sts_double::StsDouble;
use support::watch_fault::{Fault, Faults};
use support::{Controller, Scene, data, role, sdk_config, sts_issuer, test_settings, wait_for};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Far more than any bounded call needs past its timeout (the SDK's own cleanup, two busy
/// cores): a call that hangs would take minutes.
const SLACK: Duration = Duration::from_secs(5);

/// Accepts connections and never reads or writes: a peer that is there but silent.
async fn silent_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            // Bounded: a test makes a handful of connections.
            if held.len() < 1_000 {
                held.push(socket);
            }
        }
    });
    (format!("http://{addr}"), task)
}

fn request(arn: &str) -> IssueRequest {
    IssueRequest {
        role_arn: arn.parse().expect("arn"),
        session_name: "slow@peer".into(),
        duration_seconds: 900,
        options: RequestOptions::default(),
    }
}

/// One `AssumeRole` through the controller's STS client: its error code and how long it took.
async fn call(endpoint: &str, arn: &str) -> (String, Duration) {
    let issuer = StsIssuer::new(&sdk_config(endpoint), TIMEOUT);
    let started = Instant::now();
    let result = issuer.assume_role(request(arn)).await;
    let took = started.elapsed();
    let code = match result {
        Ok(_) => "Ok".to_string(),
        Err(e) => e.code,
    };
    (code, took)
}

#[tokio::test]
async fn every_sts_call_to_a_silent_or_trickling_peer_ends_at_the_timeout() {
    let (silent, listener) = silent_endpoint().await;
    let sts = StsDouble::start().await;
    let hung = "arn:aws:iam::123456789012:role/hung";
    let trickled = "arn:aws:iam::123456789012:role/trickled";
    sts.latency(hung, Duration::from_secs(3600));
    sts.trickle(trickled, true);
    for (what, endpoint, arn) in [
        ("connection accepted, never answered", silent.as_str(), hung),
        ("AssumeRole never answered", sts.endpoint.as_str(), hung),
        (
            "answer at one byte a second",
            sts.endpoint.as_str(),
            trickled,
        ),
    ] {
        let (code, took) = call(endpoint, arn).await;
        println!(
            "slow STS, {what}: {code} after {:.2} s (timeout {} s)",
            took.as_secs_f64(),
            TIMEOUT.as_secs()
        );
        assert_eq!(code, "Timeout", "{what}");
        assert!(took < TIMEOUT + SLACK, "{what}: the call took {took:?}");
    }
    // The trickle is real: the double answered 200 and was still sending the body when the
    // client gave up.
    let answered = sts
        .requests()
        .iter()
        .filter(|r| r.role_arn.as_deref() == Some(trickled) && r.status == 200)
        .count();
    assert!(answered >= 1, "the trickled role was never answered");
    listener.abort();
}

#[tokio::test]
async fn roles_whose_sts_calls_hang_or_trickle_do_not_stop_the_others_renewing() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = support::scene("slow-sts").await;
    // An unchecked double: the stuck roles are retried at the per-object backoff's pace,
    // which this test measures instead of holding to the suite's two calls a minute.
    let sts = Arc::new(StsDouble::start().await);
    let arn = |name: &str| format!("arn:aws:iam::123456789012:role/{name}");
    sts.latency(&arn("hung"), Duration::from_secs(3600));
    sts.trickle(&arn("trickled"), true);
    let healthy = ["a", "b", "c"];
    for name in healthy {
        // Renewed 5 s before expiry: every 10 s.
        sts.lifetime(&arn(name), Duration::from_secs(15));
    }
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(5);
    let issuer: Arc<dyn CredentialIssuer> =
        Arc::new(StsIssuer::new(&sdk_config(&sts.endpoint), TIMEOUT));
    let ctl = Controller::builder(&client, &ns, issuer)
        .settings(settings)
        .start()
        .await;
    let started = Instant::now();
    for name in ["hung", "trickled"].iter().chain(healthy.iter()) {
        roles
            .create(&PostParams::default(), &role(name, &arn(name), 900))
            .await
            .expect("create");
    }
    // Each healthy role is issued, then renewed twice, while the stuck ones keep failing.
    for name in healthy {
        wait_for("a healthy role renewed twice beside the stuck ones", || {
            let sts = sts.clone();
            let arn = arn(name);
            async move { (sts.assume_role_calls(&arn) >= 3).then_some(()) }
        })
        .await;
    }
    let window = started.elapsed();
    for name in healthy {
        let secret = secrets.get(name).await.expect("secret");
        assert!(data(&secret, "credentials.json").contains("AccessKeyId"));
    }
    for name in ["hung", "trickled"] {
        let r = roles.get(name).await.expect("role");
        let ready = r.ready_condition().cloned();
        println!(
            "slow STS, {name}: {} calls in {:.1} s, Ready {:?} ({:?})",
            sts.assume_role_calls(&arn(name)),
            window.as_secs_f64(),
            ready.as_ref().map(|c| c.status.as_str()),
            ready.as_ref().map(|c| c.message.as_str()),
        );
        let ready = ready.expect("a Ready condition");
        assert_eq!(ready.status, "False", "{name}");
        assert!(
            ready.message.contains("did not answer within"),
            "{name}: {}",
            ready.message
        );
        // Retried (no worker stuck on it), never in a hot loop: at most one call per timeout.
        let calls = sts.assume_role_calls(&arn(name));
        assert!(calls >= 2, "{name}: {calls} calls");
        assert!(
            calls as f64 <= window.as_secs_f64() / TIMEOUT.as_secs_f64() + 1.0,
            "{name}: {calls} calls in {window:?}"
        );
    }
    for name in healthy {
        println!(
            "slow STS, healthy {name}: {} issuances in {:.1} s",
            sts.assume_role_calls(&arn(name)),
            window.as_secs_f64()
        );
    }
    ctl.stop().await;
}

#[tokio::test]
async fn watches_answered_with_garbage_or_cut_short_are_recovered_and_the_controller_keeps_serving()
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let env = support::env().await;
    let admin = env.client().await;
    let ns = env.namespace(&admin, "watch-fault").await;
    // Unchecked: each deleted Secret is issued again, more than twice a minute for one role.
    let sts = StsDouble::start().await;
    let faults = Arc::new(Faults::default());
    let client = env.faulty_client(faults.clone());
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret_uid = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.metadata.uid)
        }
    };
    roles
        .create(&PostParams::default(), &role("before", "before", 900))
        .await
        .expect("create");
    wait_for("the first Secret", || secret_uid("before")).await;
    let (lists, watches) = (
        faults.lists.load(Ordering::Relaxed),
        faults.watches.load(Ordering::Relaxed),
    );
    for (round, fault) in [Fault::Garbage, Fault::Truncate].into_iter().enumerate() {
        // The watches streaming now, and the next four new ones.
        faults.inject_live(fault);
        faults.corrupt_next(fault, 4);
        let started = Instant::now();
        let name = format!("after-{round}");
        roles
            .create(&PostParams::default(), &role(&name, &name, 900))
            .await
            .expect("create");
        wait_for("a role created after the fault served", || {
            let secrets = secrets.clone();
            let name = name.clone();
            async move { secrets.get_opt(&name).await.ok().flatten().map(|_| ()) }
        })
        .await;
        let created = started.elapsed();
        let old = secret_uid("before").await.expect("uid");
        secrets
            .delete("before", &DeleteParams::default())
            .await
            .expect("delete the Secret");
        wait_for("the deleted Secret written again", || async {
            secret_uid("before").await.filter(|uid| *uid != old)
        })
        .await;
        let rewritten = started.elapsed();
        println!(
            "watch {fault:?}: a new role served after {:.1} s, a deleted Secret written again after {:.1} s; corrupted responses so far {}, new ones still pending {}",
            created.as_secs_f64(),
            rewritten.as_secs_f64(),
            faults.corrupted.load(Ordering::Relaxed),
            faults.pending(),
        );
        // Each watch backs off on its own errors (0.8 s, doubling: 12 s for all four new
        // faults on one watch), not the half-minute stalls of one backoff shared by all.
        assert!(
            rewritten < Duration::from_secs(25),
            "{fault:?}: the controller served again only after {rewritten:?}"
        );
    }
    println!(
        "watch faults: {} lists and {} watches after the first Secret (the controller's watches: AWSIAMRoles, Secrets, Namespaces)",
        faults.lists.load(Ordering::Relaxed) - lists,
        faults.watches.load(Ordering::Relaxed) - watches,
    );
    // Every live fault reached a streaming watch, and the watches were made again.
    assert!(faults.corrupted.load(Ordering::Relaxed) >= 2);
    assert!(faults.watches.load(Ordering::Relaxed) > watches);
    assert!(!ctl.is_finished(), "the controller stopped");
    ctl.stop().await;
}
