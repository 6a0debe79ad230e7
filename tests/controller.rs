//! The controller against the real API server: moto for the happy paths, the STS double for
//! failures, short lifetimes and call counting.

mod support;

use support::{Scene, scene};

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{data, role, run_controller, sts_issuer, test_settings, wait_for};

const ARN_PREFIX: &str = "arn:aws:iam::123456789012:role/";

async fn secret_where(api: &Api<Secret>, name: &str, pred: impl Fn(&Secret) -> bool) -> Secret {
    wait_for(&format!("secret {name}"), || async {
        api.get_opt(name).await.ok().flatten().filter(|s| pred(s))
    })
    .await
}

async fn ready_role(
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

async fn events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .collect()
}

fn reasons(evs: &[Event], reason: &str) -> usize {
    evs.iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.count.unwrap_or(1).max(1) as usize)
        .sum()
}

#[tokio::test]
async fn new_role_gets_a_secret_whose_credentials_boto3_uses_as_the_role() {
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
    } = scene("create").await;
    let ctl = run_controller(
        &client,
        &ns,
        sts_issuer(&env.moto_endpoint),
        test_settings(),
    )
    .await;
    let mut r = role("reader", "team/s3-reader", 3600);
    r.metadata.labels = Some([("application".to_string(), "shop".to_string())].into());
    let created = roles
        .create(&PostParams::default(), &r)
        .await
        .expect("create");

    let s = secret_where(&secrets, "reader", |_| true).await;
    let keys: Vec<&String> = s.data.as_ref().expect("data").keys().collect();
    assert_eq!(
        keys,
        vec![
            "awsiamrole-generation",
            "credentials",
            "credentials.json",
            "credentials.process",
            "expire",
            "role-arn"
        ]
    );
    assert_eq!(data(&s, "role-arn"), format!("{ARN_PREFIX}team/s3-reader"));
    assert_eq!(data(&s, "awsiamrole-generation"), "1");
    assert_eq!(
        data(&s, "credentials.process"),
        "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n"
    );
    let labels = s.labels();
    assert_eq!(labels["heritage"], "kube-aws-iam-controller");
    assert_eq!(labels["type"], "awsiamrole");
    assert_eq!(labels["application"], "shop");
    let owner = &s.owner_references()[0];
    assert_eq!(Some(owner.uid.clone()), created.metadata.uid);
    assert_eq!(owner.controller, Some(true));

    let r = ready_role(&roles, "reader", "True", Some("CredentialsIssued")).await;
    let st = r.status.clone().expect("status");
    assert_eq!(
        st.role_arn.as_deref(),
        Some(format!("{ARN_PREFIX}team/s3-reader").as_str())
    );
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.expiration.as_deref(), Some(data(&s, "expire").as_str()));
    let evs = wait_for("CreateCredentials event", || async {
        let evs = events(&client, &ns, "reader").await;
        (reasons(&evs, "CreateCredentials") == 1).then_some(evs)
    })
    .await;
    assert_eq!(reasons(&evs, "GetCredentialsFailed"), 0);

    // boto3 reads the `credentials` file the Secret provides and is the role.
    let arn = support::boto3_identity_from_secret(env, &s);
    assert_eq!(
        arn,
        format!("arn:aws:sts::123456789012:assumed-role/s3-reader/{ns}@reader")
    );
    ctl.stop().await;
}

#[tokio::test]
async fn credentials_are_renewed_before_expiry_with_the_minimum_of_sts_calls() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("renew").await;
    let sts = StsDouble::start().await;
    let arn = format!("{ARN_PREFIX}renewed");
    // Credentials live 12 s; renew 5 s before expiry: about one renewal every 7 s.
    sts.lifetime(&arn, Duration::from_secs(12));
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(5);
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), settings).await;
    roles
        .create(&PostParams::default(), &role("renewed", "renewed", 900))
        .await
        .expect("create");
    let first = secret_where(&secrets, "renewed", |_| true).await;
    let first_key = data(&first, "credentials.json");
    let first_expire = data(&first, "expire");
    let mut seen = vec![first_key.clone()];
    for _ in 0..2 {
        let last = seen.last().cloned().unwrap_or_default();
        let s = secret_where(&secrets, "renewed", |s| data(s, "credentials.json") != last).await;
        seen.push(data(&s, "credentials.json"));
    }
    let now = secrets.get("renewed").await.expect("secret");
    assert!(data(&now, "expire") > first_expire, "expiry moved forward");
    let r = ready_role(&roles, "renewed", "True", None).await;
    assert!(r.status.and_then(|s| s.expiration).expect("expiration") > first_expire);
    // Three issuances seen; at most one more may be in flight: never a call per reconcile.
    let calls = sts.assume_role_calls(&arn);
    assert!((3..=4).contains(&calls), "AssumeRole calls: {calls}");
    ctl.stop().await;
}

#[tokio::test]
async fn spec_change_issues_new_credentials_at_once() {
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
    } = scene("spec").await;
    let ctl = run_controller(
        &client,
        &ns,
        sts_issuer(&env.moto_endpoint),
        test_settings(),
    )
    .await;
    roles
        .create(&PostParams::default(), &role("app", "first", 3600))
        .await
        .expect("create");
    secret_where(&secrets, "app", |_| true).await;
    roles
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"roleReference": "arn:aws:iam::210987654321:role/second"}}),
            ),
        )
        .await
        .expect("patch");
    let s = secret_where(&secrets, "app", |s| data(s, "awsiamrole-generation") == "2").await;
    assert_eq!(
        data(&s, "role-arn"),
        "arn:aws:iam::210987654321:role/second"
    );
    let r = ready_role(&roles, "app", "True", None).await;
    assert_eq!(r.status.expect("status").observed_generation, Some(2));
    ctl.stop().await;
}

#[tokio::test]
async fn deleted_or_edited_secret_is_restored() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("restore").await;
    let sts = StsDouble::start().await;
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let original = secret_where(&secrets, "app", |_| true).await;

    // Edited: credentials.process changed and a label removed. Restored from the stored credentials.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"application": "x"}},
                "stringData": {"credentials.process": "[default]\ncredential_process = evil\n"}
            })),
        )
        .await
        .expect("edit");
    let restored = secret_where(&secrets, "app", |s| {
        data(s, "credentials.process").contains("cat /meta/aws-iam")
    })
    .await;
    assert_eq!(
        data(&restored, "credentials.json"),
        data(&original, "credentials.json")
    );
    assert_eq!(
        sts.assume_role_calls(&format!("{ARN_PREFIX}app")),
        1,
        "repair needs no STS call"
    );

    // Deleted: recreated.
    secrets
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete");
    let recreated = secret_where(&secrets, "app", |s| s.uid() != original.uid()).await;
    assert!(!data(&recreated, "credentials.json").is_empty());
    ctl.stop().await;
}

#[tokio::test]
async fn deleting_the_role_removes_its_secret_without_a_garbage_collector() {
    let Scene {
        env,
        client,
        ns,
        roles,
        secrets,
    } = scene("delete").await;
    let ctl = run_controller(
        &client,
        &ns,
        sts_issuer(&env.moto_endpoint),
        test_settings(),
    )
    .await;
    roles
        .create(&PostParams::default(), &role("gone", "gone", 3600))
        .await
        .expect("create");
    secret_where(&secrets, "gone", |_| true).await;
    roles
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete role");
    wait_for("secret removed", || async {
        matches!(secrets.get_opt("gone").await, Ok(None)).then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn a_foreign_secret_of_the_same_name_is_never_touched() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("foreign").await;
    let sts = StsDouble::start().await;
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("db".into());
    foreign.string_data = Some([("password".to_string(), "hunter2".to_string())].into());
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create secret");
    roles
        .create(&PostParams::default(), &role("db", "db-role", 3600))
        .await
        .expect("create role");
    let r = ready_role(&roles, "db", "False", Some("SecretConflict")).await;
    assert!(
        r.ready_condition()
            .expect("cond")
            .message
            .contains("not managed")
    );
    wait_for("SecretConflict event", || async {
        (reasons(&events(&client, &ns, "db").await, "SecretConflict") >= 1).then_some(())
    })
    .await;
    let after = secrets.get("db").await.expect("secret");
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "untouched"
    );
    assert_eq!(
        sts.total_calls(),
        0,
        "no credentials issued for a conflicting name"
    );
    // Deleting the role leaves the foreign Secret alone too.
    roles
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete role");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(secrets.get_opt("db").await.expect("get").is_some());
    ctl.stop().await;
}

#[tokio::test]
async fn a_denied_role_is_not_ready_gets_no_secret_and_is_not_retried_hot() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("denied").await;
    let sts = StsDouble::start().await;
    let arn = format!("{ARN_PREFIX}forbidden");
    sts.deny(&arn);
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    roles
        .create(&PostParams::default(), &role("nope", "forbidden", 3600))
        .await
        .expect("create");
    let r = ready_role(&roles, "nope", "False", Some("AccessDenied")).await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("AccessDenied")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(secrets.get_opt("nope").await.expect("get").is_none());
    // Permanent failures requeue at the slow rate (5 s in tests): 3 s later still one call.
    assert_eq!(sts.assume_role_calls(&arn), 1);
    let evs = events(&client, &ns, "nope").await;
    assert_eq!(reasons(&evs, "GetCredentialsFailed"), 1);
    ctl.stop().await;
}

#[tokio::test]
async fn invalid_references_are_reported_without_calling_sts() {
    let Scene {
        client, ns, roles, ..
    } = scene("invalid").await;
    let sts = StsDouble::start().await;
    // The schema refuses malformed ARNs (tests/malformed.rs); a bare name without a base role
    // ARN passes it and is still unusable.
    let ctl = support::run_controller_without_base(
        &client,
        &ns,
        sts_issuer(&sts.endpoint),
        test_settings(),
    )
    .await;
    roles
        .create(&PostParams::default(), &role("bad", "bare-name", 3600))
        .await
        .expect("create");
    let r = ready_role(&roles, "bad", "False", Some("InvalidRoleReference")).await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("base role ARN")
    );
    assert_eq!(sts.total_calls(), 0);
    ctl.stop().await;
}

#[tokio::test]
async fn transient_sts_errors_back_off_and_keep_the_last_valid_credentials() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("transient").await;
    let sts = StsDouble::start().await;
    let arn = format!("{ARN_PREFIX}flaky");
    sts.lifetime(&arn, Duration::from_secs(60));
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(55);
    settings.backoff_base = Duration::from_secs(1);
    settings.max_backoff = Duration::from_secs(4);
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), settings).await;
    roles
        .create(&PostParams::default(), &role("flaky", "flaky", 900))
        .await
        .expect("create");
    let good = secret_where(&secrets, "flaky", |_| true).await;
    sts.throttle(&arn, true);
    let r = ready_role(&roles, "flaky", "False", Some("Throttled")).await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("keeps the previous credentials")
    );
    let calls_at_failure = sts.assume_role_calls(&arn);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = secrets.get("flaky").await.expect("secret");
    assert_eq!(
        data(&during, "credentials.json"),
        data(&good, "credentials.json"),
        "old credentials intact"
    );
    // Backoff 1,2,4,4 s (x0.5-1 jitter) in 10 s: a handful of reconciles, each with the SDK's 3 attempts.
    let retries = sts.assume_role_calls(&arn) - calls_at_failure;
    assert!(
        retries <= 30,
        "{retries} AssumeRole requests in 10 s is a hot loop"
    );
    sts.throttle(&arn, false);
    let renewed = secret_where(&secrets, "flaky", |s| {
        data(s, "credentials.json") != data(&good, "credentials.json")
    })
    .await;
    assert!(data(&renewed, "expire") > data(&good, "expire"));
    ready_role(&roles, "flaky", "True", None).await;
    ctl.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_does_not_reissue_valid_credentials() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        ..
    } = scene("restart").await;
    let sts = StsDouble::start().await;
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    for name in ["one", "two", "six"] {
        roles
            .create(&PostParams::default(), &role(name, name, 3600))
            .await
            .expect("create");
    }
    for name in ["one", "two", "six"] {
        secret_where(&secrets, name, |_| true).await;
        ready_role(&roles, name, "True", None).await;
    }
    ctl.stop().await;
    let before = sts.total_calls();
    assert_eq!(before, 3);
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    wait_for("caches synced", || async {
        ctl.ready
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sts.total_calls(),
        before,
        "no STS call for credentials that are still valid"
    );
    ctl.stop().await;
}
