//! STS request options end to end: the binary with the options' flags against the STS double,
//! which records every parameter as it arrives: session tags, SourceIdentity, ExternalId,
//! session policies, the role-chaining cap under --assume-role, and client-side pacing.

mod support;

use support::{Scene, scene};

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::{RecordedRequest, StsDouble};
use support::{
    Controller, data, ready_role, role, secret, start_binary, sts_issuer, test_settings,
    wait_for_within,
};

const PREFIX: &str = "arn:aws:iam::123456789012:role/";
const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::reports/*"}]}"#;
const READ_ONLY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";
const TEAM_POLICY: &str = "arn:aws:iam::123456789012:policy/team/s3-read";

fn assume_requests(sts: &StsDouble, arn: &str) -> Vec<RecordedRequest> {
    sts.requests()
        .into_iter()
        .filter(|r| r.action == "AssumeRole" && r.role_arn.as_deref() == Some(arn))
        .collect()
}

fn tags(r: &RecordedRequest) -> Vec<(&str, &str)> {
    r.tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn tags_source_identity_external_id_and_policies_arrive_as_sent() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("opts").await;
    let sts = StsDouble::start().await;
    let bin = start_binary(
        env,
        &ns,
        &sts.endpoint,
        &[
            "--session-tags",
            "--cluster-name=kaic-test",
            "--external-id=kaic-ext-42",
            "--source-identity={namespace}@{name}",
        ],
    )
    .await;
    let mut scoped = role("scoped", "reports-reader", 3600);
    scoped.spec.policy = Some(POLICY.into());
    scoped.spec.policy_arns = vec![READ_ONLY.into(), TEAM_POLICY.into()];
    roles
        .create(&PostParams::default(), &scoped)
        .await
        .expect("create scoped");
    roles
        .create(&PostParams::default(), &role("plain", "plain", 3600))
        .await
        .expect("create plain");
    secret(&secrets, "scoped").await;
    secret(&secrets, "plain").await;

    let scoped = assume_requests(&sts, &format!("{PREFIX}reports-reader"));
    assert_eq!(scoped.len(), 1);
    let r = &scoped[0];
    assert_eq!(r.status, 200);
    assert_eq!(
        tags(r),
        vec![
            ("kubernetes-namespace", ns.as_str()),
            ("kubernetes-awsiamrole", "scoped"),
            ("kubernetes-cluster", "kaic-test"),
        ]
    );
    assert!(r.transitive_tag_keys.is_empty(), "not asked for");
    assert_eq!(
        r.source_identity.as_deref(),
        Some(format!("{ns}@scoped").as_str())
    );
    assert_eq!(r.external_id.as_deref(), Some("kaic-ext-42"));
    assert_eq!(r.policy.as_deref(), Some(POLICY));
    assert_eq!(r.policy_arns, vec![READ_ONLY, TEAM_POLICY]);
    assert_eq!(
        r.session_name.as_deref(),
        Some(format!("{ns}@scoped").as_str())
    );

    let plain = assume_requests(&sts, &format!("{PREFIX}plain"));
    assert_eq!(plain.len(), 1);
    let r = &plain[0];
    assert_eq!(tags(r)[1], ("kubernetes-awsiamrole", "plain"));
    assert_eq!(r.external_id.as_deref(), Some("kaic-ext-42"));
    assert_eq!(r.policy, None);
    assert!(r.policy_arns.is_empty());
    bin.kill();
}

#[tokio::test]
async fn tags_are_transitive_only_when_asked_and_nothing_is_sent_by_default() {
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("transitive").await;
    let sts = StsDouble::start().await;
    let bin = start_binary(
        env,
        &ns,
        &sts.endpoint,
        &["--session-tags", "--transitive-session-tags"],
    )
    .await;
    roles
        .create(&PostParams::default(), &role("chain", "chain", 3600))
        .await
        .expect("create");
    secret(&secrets, "chain").await;
    let r = &assume_requests(&sts, &format!("{PREFIX}chain"))[0];
    assert_eq!(
        tags(r),
        vec![
            ("kubernetes-namespace", ns.as_str()),
            ("kubernetes-awsiamrole", "chain")
        ]
    );
    assert_eq!(
        r.transitive_tag_keys,
        vec!["kubernetes-namespace", "kubernetes-awsiamrole"]
    );
    assert_eq!(
        (r.external_id.as_deref(), r.source_identity.as_deref()),
        (None, None)
    );
    bin.kill();

    // Without the flags the request carries none of the options.
    let ns = env.namespace(&client, "nooptions").await;
    let bin = start_binary(env, &ns, &sts.endpoint, &[]).await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("bare", "bare", 3600))
        .await
        .expect("create");
    secret(&secrets, "bare").await;
    let r = &assume_requests(&sts, &format!("{PREFIX}bare"))[0];
    assert!(r.tags.is_empty() && r.transitive_tag_keys.is_empty());
    assert_eq!(
        (
            r.external_id.as_deref(),
            r.source_identity.as_deref(),
            r.policy.as_deref()
        ),
        (None, None, None)
    );
    bin.kill();
}

#[tokio::test]
async fn invalid_session_policies_are_reported_without_calling_sts() {
    let Scene {
        client, ns, roles, ..
    } = scene("badpolicy").await;
    let sts = StsDouble::start().await;

    // The CRD's schema turns away what is not a managed policy ARN at all.
    let mut not_arn = role("not-arn", "app", 3600);
    not_arn.spec.policy_arns = vec!["ReadOnlyAccess".into()];
    let err = roles
        .create(&PostParams::default(), &not_arn)
        .await
        .expect_err("the API server must reject it");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 422),
        "{err}"
    );

    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let mut not_json = role("not-json", "app", 3600);
    not_json.spec.policy = Some("Allow everything".into());
    let mut gov = role("gov-policy", "app", 3600);
    gov.spec.policy_arns = vec!["arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess".into()];
    for r in [&not_json, &gov] {
        roles
            .create(&PostParams::default(), r)
            .await
            .expect("create");
    }
    for (name, needle) in [("not-json", "spec.policy"), ("gov-policy", "partition")] {
        let r = ready_role(&roles, name, "False", None).await;
        let c = r.ready_condition().expect("condition");
        assert_eq!(c.reason, "InvalidSessionPolicy");
        assert!(c.message.contains(needle), "{}", c.message);
    }
    assert_eq!(sts.total_calls(), 0);
    ctl.stop().await;
}

#[tokio::test]
async fn under_assume_role_long_sessions_are_capped_to_one_hour_and_the_session_is_renewed() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("chained").await;
    let sts = StsDouble::start().await;
    let controller_arn = format!("{PREFIX}kaic-controller");
    let long_arn = format!("{PREFIX}long-sessions");
    // Unchained, this role would allow 2 h: only role chaining limits it.
    sts.max_session(&long_arn, 7200);
    // The controller's own session lives 25 s, so the test sees it renewed.
    sts.lifetime(&controller_arn, Duration::from_secs(25));
    let bin = start_binary(env, &ns, &sts.endpoint, &["--assume-role=kaic-controller"]).await;
    roles
        .create(&PostParams::default(), &role("long", "long-sessions", 7200))
        .await
        .expect("create");
    let s = secret(&secrets, "long").await;
    let r = ready_role(&roles, "long", "True", None).await;
    let message = r.ready_condition().expect("condition").message.clone();
    assert!(
        message.contains("roleSessionDuration 7200s was capped to 3600s"),
        "{message}"
    );
    let expire = chrono::DateTime::parse_from_rfc3339(&data(&s, "expire")).expect("expire");
    let left = expire
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((3500..=3600).contains(&left), "expires in {left} s");

    let first_session = sts.issued_keys(&controller_arn);
    assert_eq!(
        first_session.len(),
        1,
        "the controller's role is assumed once"
    );
    let calls = assume_requests(&sts, &long_arn);
    assert_eq!(calls.len(), 1, "no error loop: {calls:?}");
    assert_eq!(calls[0].duration_seconds, Some(3600));
    assert_eq!(calls[0].status, 200);
    assert_eq!(calls[0].caller_access_key, first_session.first().cloned());
    let base_call = &assume_requests(&sts, &controller_arn)[0];
    assert_eq!(
        base_call.caller_access_key.as_deref(),
        Some("AKIDCONTROLLER000000"),
        "--assume-role is assumed with the base credentials"
    );

    // After the first controller session has expired, a new AWSIAMRole is issued from a
    // renewed session, without a failed request in between.
    let started = base_call.received_at;
    let wait = Duration::from_secs(26).saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    roles
        .create(&PostParams::default(), &role("later", "later", 3600))
        .await
        .expect("create");
    secret(&secrets, "later").await;
    let later = &assume_requests(&sts, &format!("{PREFIX}later"))[0];
    assert_eq!(later.status, 200);
    let keys = sts.issued_keys(&controller_arn);
    assert!(keys.len() >= 2, "the controller's session was renewed");
    assert_ne!(later.caller_access_key, first_session.first().cloned());
    assert!(
        later
            .caller_access_key
            .as_ref()
            .is_some_and(|k| keys.contains(k))
    );
    let failed: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.status != 200)
        .collect();
    assert!(failed.is_empty(), "failed STS requests: {failed:?}");
    bin.kill();
}

/// The most requests that arrived within any `window`.
fn densest(times: &[Instant], window: Duration) -> usize {
    times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_cold_start_of_many_roles_is_paced_by_the_client_side_rate_limit() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("qps").await;
    let sts = StsDouble::start().await;
    let names: Vec<String> = (0..10).map(|i| format!("cold-{i}")).collect();
    // Created before the controller starts: all of them are due at once.
    for n in &names {
        roles
            .create(&PostParams::default(), &role(n, n, 3600))
            .await
            .expect("create");
    }
    let bin = start_binary(env, &ns, &sts.endpoint, &["--sts-qps=4", "--sts-burst=2"]).await;
    for n in &names {
        wait_for_within(&format!("secret {n}"), Duration::from_secs(120), || async {
            secrets.get_opt(n).await.ok().flatten()
        })
        .await;
    }
    let mut times: Vec<Instant> = sts
        .requests()
        .iter()
        .filter(|r| r.action == "AssumeRole")
        .map(|r| r.received_at)
        .collect();
    times.sort();
    assert_eq!(times.len(), 10, "one call per role");
    // 2 at once, then 4 per second: the 10 calls take at least 2 s, and no second holds
    // more than burst + rate.
    let span = times[9].duration_since(times[0]);
    assert!(span >= Duration::from_millis(1900), "spread over {span:?}");
    let most = densest(&times, Duration::from_secs(1));
    assert!(most <= 6, "{most} calls within one second");
    bin.kill();
}

#[tokio::test]
async fn calls_in_flight_are_capped() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("inflight").await;
    let sts = StsDouble::start().await;
    let names: Vec<String> = (0..4).map(|i| format!("slow-{i}")).collect();
    for n in &names {
        sts.latency(&format!("{PREFIX}{n}"), Duration::from_millis(500));
        roles
            .create(&PostParams::default(), &role(n, n, 3600))
            .await
            .expect("create");
    }
    let bin = start_binary(env, &ns, &sts.endpoint, &["--sts-max-in-flight=1"]).await;
    for n in &names {
        secret(&secrets, n).await;
    }
    let mut times: Vec<Instant> = sts
        .requests()
        .iter()
        .filter(|r| r.action == "AssumeRole")
        .map(|r| r.received_at)
        .collect();
    times.sort();
    assert_eq!(times.len(), 4);
    // Each call waits for the one before to answer (500 ms).
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(480),
            "calls overlapped: {gap:?}"
        );
    }
    bin.kill();
}

#[tokio::test]
async fn moto_accepts_requests_with_every_option_and_the_credentials_work() {
    use kube_aws_iam_controller::aws::options::{StsOptions, TagSettings};
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("optsmoto").await;
    let mut settings = test_settings();
    settings.sts_options = StsOptions {
        external_id: Some("kaic-ext-42".into()),
        tags: Some(TagSettings {
            cluster_name: Some("kaic-test".into()),
            transitive: true,
        }),
        source_identity: Some("{namespace}@{name}".parse().expect("template")),
    };
    let ctl = Controller::builder(&client, &ns, sts_issuer(&env.moto_endpoint))
        .settings(settings)
        .start()
        .await;
    let mut scoped = role("scoped", "reports-reader", 3600);
    scoped.spec.policy = Some(POLICY.into());
    scoped.spec.policy_arns = vec![READ_ONLY.into()];
    roles
        .create(&PostParams::default(), &scoped)
        .await
        .expect("create");
    let s = secret(&secrets, "scoped").await;
    ready_role(&roles, "scoped", "True", None).await;
    // boto3 with the Secret's `credentials` file is the assumed role.
    let arn = support::boto3_identity_from_secret(env, &s);
    assert_eq!(
        arn,
        format!("arn:aws:sts::123456789012:assumed-role/reports-reader/{ns}@scoped")
    );
    ctl.stop().await;
}

#[tokio::test]
async fn a_controller_role_that_cannot_be_assumed_is_reported_as_such_not_as_a_network_error() {
    let Scene { env, ns, roles, .. } = scene("ctrldenied").await;
    let sts = StsDouble::start().await;
    let controller_arn = format!("{PREFIX}kaic-controller");
    sts.deny(&controller_arn);
    let bin = start_binary(env, &ns, &sts.endpoint, &["--assume-role=kaic-controller"]).await;
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let r = ready_role(&roles, "app", "False", None).await;
    let c = r.ready_condition().expect("condition");
    assert_eq!(c.reason, "ControllerCredentialsInvalid", "{}", c.message);
    assert!(c.message.contains("--assume-role"), "{}", c.message);
    assert_eq!(
        assume_requests(&sts, &format!("{PREFIX}app")).len(),
        0,
        "no AWSIAMRole is assumed without the controller's session"
    );
    bin.kill();
}
