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
use support::{
    Controller, data, ready_role, role, secret_where, sts_issuer, test_settings, wait_for,
    wait_for_within,
};

const ARN_PREFIX: &str = "arn:aws:iam::123456789012:role/";

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
        ..
    } = scene("create").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&env.moto_endpoint))
        .start()
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
    // Every write names the controller as its field manager (issue 25: the Event's was "unknown").
    let managers = |fields: Option<
        &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>,
    >|
     -> Vec<String> {
        fields
            .into_iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect()
    };
    for (what, got) in [
        ("Secret", managers(s.metadata.managed_fields.as_ref())),
        ("Event", managers(evs[0].metadata.managed_fields.as_ref())),
    ] {
        assert!(
            !got.is_empty() && got.iter().all(|m| m == "kube-aws-iam-controller"),
            "{what} written by {got:?}"
        );
    }

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
        sts,
        ..
    } = scene("renew").await;
    let arn = format!("{ARN_PREFIX}renewed");
    // Credentials live 40 s; renew 5 s before expiry: one renewal after about 35 s.
    sts.lifetime(&arn, Duration::from_secs(40));
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(5);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("renewed", "renewed", 900))
        .await
        .expect("create");
    let first = secret_where(&secrets, "renewed", |_| true).await;
    let first_key = data(&first, "credentials.json");
    let first_expire = data(&first, "expire");
    let renewed = secret_where(&secrets, "renewed", |s| {
        data(s, "credentials.json") != first_key
    })
    .await;
    assert!(
        data(&renewed, "expire") > first_expire,
        "expiry moved forward"
    );
    let r = wait_for("status of the renewed credentials", || async {
        let r = roles.get("renewed").await.ok()?;
        let exp = r.status.as_ref()?.expiration.clone()?;
        (exp > first_expire).then_some(r)
    })
    .await;
    assert_eq!(r.ready_condition().map(|c| c.status.as_str()), Some("True"));
    // Two issuances, the next one due 35 s later: never a call per reconcile.
    assert_eq!(sts.assume_role_calls(&arn), 2);
    ctl.stop().await;
}

#[tokio::test]
async fn spec_change_issues_new_credentials_at_once() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("spec").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
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
        sts,
        ..
    } = scene("restore").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
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
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("delete").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
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
        sts,
        ..
    } = scene("foreign").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
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
        sts,
        ..
    } = scene("denied").await;
    let arn = format!("{ARN_PREFIX}forbidden");
    sts.deny(&arn);
    // Permanent failures requeue after --max-backoff (spread over its upper fifth): 24 to 30 s.
    let mut settings = test_settings();
    settings.max_backoff = Duration::from_secs(30);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
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
    // Permanent failures requeue at the slow rate: 3 s later still one call.
    assert_eq!(sts.assume_role_calls(&arn), 1);
    let evs = events(&client, &ns, "nope").await;
    assert_eq!(reasons(&evs, "GetCredentialsFailed"), 1);
    ctl.stop().await;
}

/// A start reconciles each AWSIAMRole once. Its own initial list triggers it; neither the
/// Namespaces' initial list (the role policy watches their annotations) nor the Secrets' may
/// trigger it again, as each did whenever it reached the controller after the AWSIAMRole cache
/// was filled (or, for the Secret, before the first reconcile had read it): a second reconcile
/// right after the first (for a denied role a second AssumeRole call, for a new one a second
/// live read of its Secret). Several starts, as the order of the lists varies; the credentials
/// of the first start stay valid, so only it calls STS.
#[tokio::test]
async fn a_start_reconciles_each_role_once_whatever_the_order_of_the_initial_lists() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("once").await;
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    for start in 1..=6 {
        let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
            .start()
            .await;
        if start == 1 {
            secret_where(&secrets, "app", |_| true).await;
        }
        wait_for("the start's reconcile", || async {
            // (The series appears with the first reconcile.)
            let text = ctl.ctx.metrics.render();
            text.contains("kaic_reconciles_total{result=\"ok\"} ")
                .then_some(())
        })
        .await;
        // Let a second reconcile, if any, happen.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = ctl.ctx.metrics.render();
        ctl.stop().await;
        assert_eq!(
            support::metric(&text, "kaic_reconciles_total{result=\"ok\"}"),
            1.0,
            "start {start}: one reconcile\n{text}"
        );
    }
    assert_eq!(
        sts.total_calls(),
        1,
        "only the first start issues credentials"
    );
}

#[tokio::test]
async fn invalid_references_are_reported_without_calling_sts() {
    let Scene {
        client,
        ns,
        roles,
        sts,
        ..
    } = scene("invalid").await;
    // The schema refuses malformed ARNs (tests/malformed.rs); a bare name without a base role
    // ARN passes it and is still unusable.
    let ctl = support::Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .without_base_role_arn()
        .start()
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
        sts,
        ..
    } = scene("transient").await;
    let arn = format!("{ARN_PREFIX}flaky");
    // Credentials live 120 s: renewed at half-life, 54 to 60 s after issue. A failed renewal
    // is retried after 15 to 30 s of backoff: at most 2 calls in any minute.
    sts.lifetime(&arn, Duration::from_secs(120));
    let mut settings = test_settings();
    settings.backoff_base = Duration::from_secs(30);
    settings.max_backoff = Duration::from_secs(30);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("flaky", "flaky", 900))
        .await
        .expect("create");
    let good = secret_where(&secrets, "flaky", |_| true).await;
    sts.throttle(&arn, true);
    // Renewal is due about a minute after issue: a generous safety net on a loaded machine.
    let r = wait_for_within(
        "flaky Ready=False Throttled",
        Duration::from_secs(300),
        || async {
            let r = roles.get("flaky").await.ok()?;
            let c = r.ready_condition()?;
            (c.status == "False" && c.reason == "Throttled").then_some(r)
        },
    )
    .await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("keeps the previous credentials")
    );
    let during = secrets.get("flaky").await.expect("secret");
    assert_eq!(
        data(&during, "credentials.json"),
        data(&good, "credentials.json"),
        "old credentials intact"
    );
    assert_eq!(
        sts.assume_role_call_times()[&arn].len(),
        2,
        "one failed call, retried later"
    );
    sts.throttle(&arn, false);
    let renewed = wait_for_within("renewed credentials", Duration::from_secs(300), || async {
        secrets
            .get_opt("flaky")
            .await
            .ok()
            .flatten()
            .filter(|s| data(s, "credentials.json") != data(&good, "credentials.json"))
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
        sts,
        ..
    } = scene("restart").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
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
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
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

#[tokio::test]
async fn a_role_recreated_under_the_same_name_gets_a_secret_owned_by_it_within_seconds() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("recreate").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let first = roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let old = secret_where(&secrets, "app", |_| true).await;
    ready_role(&roles, "app", "True", None).await;
    // Deleted and created again at once; no garbage collector removes the old Secret.
    roles
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete");
    let second = roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create again");
    assert_ne!(first.uid(), second.uid());
    let new_uid = second.uid().expect("uid");
    let s = secret_where(&secrets, "app", |s| {
        s.owner_references().iter().any(|o| o.uid == new_uid)
    })
    .await;
    let owners: Vec<&str> = s
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    assert_eq!(
        owners,
        vec![new_uid.as_str()],
        "only the new AWSIAMRole owns it"
    );
    assert_eq!(
        s.annotations()["awsiamrole.zalando.org/owner-uid"],
        new_uid,
        "issued for the new object"
    );
    assert_ne!(
        data(&s, "credentials.json"),
        data(&old, "credentials.json"),
        "new credentials for the new object"
    );
    let r = ready_role(&roles, "app", "True", Some("CredentialsIssued")).await;
    assert_eq!(r.status.expect("status").observed_generation, Some(1));
    assert_eq!(sts.assume_role_calls(&format!("{ARN_PREFIX}app")), 2);
    ctl.stop().await;
}

#[tokio::test]
async fn labels_removed_from_the_role_disappear_from_its_secret_without_an_sts_call() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("labels").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let mut r = role("app", "app", 3600);
    r.metadata.labels = Some(
        [
            ("application".to_string(), "shop".to_string()),
            ("team".to_string(), "checkout".to_string()),
        ]
        .into(),
    );
    roles
        .create(&PostParams::default(), &r)
        .await
        .expect("create");
    let s = secret_where(&secrets, "app", |s| s.labels().contains_key("team")).await;
    // Someone else's label on the Secret stays.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"backup": "no"}}})),
        )
        .await
        .expect("label secret");
    roles
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
        )
        .await
        .expect("unlabel role");
    let after = secret_where(&secrets, "app", |s| !s.labels().contains_key("team")).await;
    assert_eq!(after.labels()["application"], "shop");
    assert_eq!(after.labels()["backup"], "no");
    assert_eq!(after.labels()["heritage"], "kube-aws-iam-controller");
    assert_eq!(
        data(&after, "credentials.json"),
        data(&s, "credentials.json")
    );
    assert_eq!(sts.assume_role_calls(&format!("{ARN_PREFIX}app")), 1);
    ctl.stop().await;
}

#[tokio::test]
async fn changed_session_options_reissue_and_nothing_else_does() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("options").await;
    let arn = format!("{ARN_PREFIX}app");
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let first = secret_where(&secrets, "app", |_| true).await;
    ready_role(&roles, "app", "True", None).await;
    // An annotation and a label change nothing STS is asked for.
    roles
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"note": "x"}, "labels": {"a": "b"}}}),
            ),
        )
        .await
        .expect("annotate");
    secret_where(&secrets, "app", |s| s.labels().contains_key("a")).await;
    ctl.stop().await;
    assert_eq!(sts.assume_role_calls(&arn), 1);
    // The operator adds an external id: the credentials were issued without it.
    let mut settings = test_settings();
    settings.sts_options.external_id = Some("kaic-external-1".into());
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    let reissued = secret_where(&secrets, "app", |s| {
        data(s, "credentials.json") != data(&first, "credentials.json")
    })
    .await;
    assert_ne!(
        reissued.annotations()["awsiamrole.zalando.org/request-hash"],
        first.annotations()["awsiamrole.zalando.org/request-hash"]
    );
    let last = sts
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.action == "AssumeRole");
    assert_eq!(
        last.and_then(|r| r.external_id).as_deref(),
        Some("kaic-external-1")
    );
    assert_eq!(sts.assume_role_calls(&arn), 2);
    ctl.stop().await;
}

#[tokio::test]
async fn credentials_shorter_than_asked_are_renewed_at_half_life_not_in_a_loop() {
    let Scene {
        client,
        ns,
        roles,
        sts,
        ..
    } = scene("short").await;
    let arn = format!("{ARN_PREFIX}short");
    // Asked for 900 s, given 300 s: renewed after 150 s, not at once and again and again.
    sts.lifetime(&arn, Duration::from_secs(300));
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("short", "short", 900))
        .await
        .expect("create");
    ready_role(&roles, "short", "True", None).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sts.assume_role_calls(&arn), 1);
    ctl.stop().await;
}

#[tokio::test]
async fn credentials_arriving_inside_the_refresh_window_back_off_instead_of_looping() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("skewed").await;
    let arn = format!("{ARN_PREFIX}skewed");
    // Two seconds of life (a skewed clock, a strange STS): renewing at half-life would loop.
    sts.lifetime(&arn, Duration::from_secs(2));
    let mut settings = test_settings();
    settings.backoff_base = Duration::from_secs(120);
    settings.max_backoff = Duration::from_secs(120);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("skewed", "skewed", 900))
        .await
        .expect("create");
    secret_where(&secrets, "skewed", |_| true).await;
    wait_for("ShortLivedCredentials event", || async {
        (reasons(
            &events(&client, &ns, "skewed").await,
            "ShortLivedCredentials",
        ) >= 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sts.assume_role_calls(&arn), 1, "backing off, not looping");
    ctl.stop().await;
}

#[tokio::test]
async fn a_role_reference_changed_to_a_denied_role_withdraws_the_old_credentials() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("withdraw").await;
    let denied = format!("{ARN_PREFIX}forbidden");
    sts.deny(&denied);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("app", "allowed", 3600))
        .await
        .expect("create");
    let before = secret_where(&secrets, "app", |_| true).await;
    assert!(!data(&before, "credentials.json").is_empty());
    roles
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"roleReference": "forbidden"}})),
        )
        .await
        .expect("patch");
    let r = ready_role(&roles, "app", "False", Some("AccessDenied")).await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("removed from the Secret"),
        "{:?}",
        r.ready_condition()
    );
    let after = secrets.get("app").await.expect("secret");
    for key in [
        "credentials",
        "credentials.json",
        "expire",
        "role-arn",
        "awsiamrole-generation",
    ] {
        assert!(
            after.data.as_ref().is_some_and(|d| !d.contains_key(key)),
            "{key} withdrawn"
        );
    }
    assert!(r.status.as_ref().is_some_and(|s| s.role_arn.is_none()));
    assert_eq!(sts.assume_role_calls(&denied), 1);
    ctl.stop().await;
}

/// A Secret exactly as the Go controller writes it: `expire` and `aws_expiration` in whole
/// seconds, `credentials.json`'s `Expiration` as Go's JSON time (fraction kept), an owner
/// reference without the controller flag.
fn go_controller_secret(role: &AWSIAMRole, arn: &str, expiration: &str, whole: &str) -> Secret {
    let json = format!(
        r#"{{"Version":1,"AccessKeyId":"ASIAGOCONTROLLER0001","SecretAccessKey":"gosecretgosecretgosecretgosecret00000000","SessionToken":"FwoGZXIvYXdzGOTOKEN","Expiration":"{expiration}"}}"#
    );
    let ini = format!(
        "[default]\naws_access_key_id = ASIAGOCONTROLLER0001\naws_secret_access_key = gosecretgosecretgosecretgosecret00000000\naws_session_token = FwoGZXIvYXdzGOTOKEN\naws_expiration = {whole}\n"
    );
    let mut s = Secret::default();
    s.metadata.name = Some(role.name_any());
    s.metadata.labels = Some(
        [
            (
                "heritage".to_string(),
                "kube-aws-iam-controller".to_string(),
            ),
            ("type".to_string(), "awsiamrole".to_string()),
            ("application".to_string(), "shop".to_string()),
        ]
        .into(),
    );
    s.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "zalando.org/v1".into(),
            kind: "AWSIAMRole".into(),
            name: role.name_any(),
            uid: role.uid().expect("uid"),
            ..Default::default()
        },
    ]);
    s.string_data = Some(
        [
            ("role-arn", arn.to_string()),
            ("expire", whole.to_string()),
            ("credentials", ini),
            (
                "credentials.process",
                "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n".into(),
            ),
            ("credentials.json", json),
            ("awsiamrole-generation", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    );
    s
}

#[tokio::test]
async fn taking_over_a_secret_written_by_the_go_controller_writes_nothing() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("takeover").await;
    let mut r = role("legacy", "legacy", 3600);
    r.metadata.labels = Some([("application".to_string(), "shop".to_string())].into());
    let r = roles
        .create(&PostParams::default(), &r)
        .await
        .expect("create role");
    // moto and other STS-compatible servers return fractional seconds; Go keeps them in JSON.
    let expiration = chrono::Utc::now() + chrono::Duration::minutes(50);
    let whole = expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let fractional = format!("{}.123456Z", whole.trim_end_matches('Z'));
    let go = secrets
        .create(
            &PostParams::default(),
            &go_controller_secret(&r, &format!("{ARN_PREFIX}legacy"), &fractional, &whole),
        )
        .await
        .expect("create go secret");
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let ready = ready_role(&roles, "legacy", "True", Some("CredentialsIssued")).await;
    assert_eq!(
        ready.status.and_then(|s| s.expiration).as_deref(),
        Some(whole.as_str())
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = secrets.get("legacy").await.expect("secret");
    assert_eq!(
        after.resource_version(),
        go.resource_version(),
        "the Go controller's Secret is taken over without a write"
    );
    assert_eq!(sts.total_calls(), 0);
    ctl.stop().await;
}

#[tokio::test]
async fn a_labelled_secret_without_an_owner_is_kept_for_the_grace_period() {
    let Scene {
        client,
        ns,
        secrets,
        sts,
        ..
    } = scene("grace").await;
    let mut settings = test_settings();
    settings.orphan_grace = Duration::from_secs(8);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    wait_for("caches synced", || async {
        ctl.ready
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    })
    .await;
    // A seed Secret written ahead of its AWSIAMRole.
    let mut seed = Secret::default();
    seed.metadata.name = Some("early".into());
    seed.metadata.labels = Some(
        [
            (
                "heritage".to_string(),
                "kube-aws-iam-controller".to_string(),
            ),
            ("type".to_string(), "awsiamrole".to_string()),
        ]
        .into(),
    );
    secrets
        .create(&PostParams::default(), &seed)
        .await
        .expect("create seed");
    // The janitor sweeps every 500 ms: a few sweeps leave it alone...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(secrets.get_opt("early").await.expect("get").is_some());
    // ...and once the grace period is over, with no AWSIAMRole come, it is removed.
    wait_for("seed removed after its grace period", || async {
        matches!(secrets.get_opt("early").await, Ok(None)).then_some(())
    })
    .await;
    ctl.stop().await;
}

/// A renewal is one reconcile that reads nothing live: the Secret's data is known from the
/// controller's own write (its metadata is in the watch cache; only the create reads live), the status is patched against
/// the cached AWSIAMRole, and the watch event of its own Secret write triggers no second
/// reconcile. The old controller read the Secret and the AWSIAMRole live in every reconcile
/// and reconciled again on its own write and once more before each renewal (five reconciles
/// by the end of the first renewal, where this asks for at most three).
#[tokio::test]
async fn a_renewal_is_one_reconcile_that_reads_nothing_live() {
    let Scene {
        client,
        ns,
        roles,
        secrets,
        sts,
        ..
    } = scene("lean").await;
    let arn = format!("{ARN_PREFIX}lean");
    // 60 s credentials renewed 25 s before expiry: once, 35 s after the first issue.
    sts.lifetime(&arn, Duration::from_secs(60));
    let mut settings = test_settings();
    settings.refresh_limit = Duration::from_secs(25);
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .settings(settings)
        .start()
        .await;
    roles
        .create(&PostParams::default(), &role("lean", "lean", 900))
        .await
        .expect("create");
    let first = secret_where(&secrets, "lean", |_| true).await;
    wait_for("the renewal", || async {
        (sts.assume_role_calls(&arn) >= 2).then_some(())
    })
    .await;
    let renewed = secret_where(&secrets, "lean", |s| {
        data(s, "credentials.json") != data(&first, "credentials.json")
    })
    .await;
    wait_for("the renewed status", || async {
        let status = roles.get("lean").await.ok()?.status?;
        (status.expiration.as_deref() == Some(data(&renewed, "expire").as_str())).then_some(())
    })
    .await;
    // Let a second reconcile triggered by the controller's own writes, if any, happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = ctl.ctx.metrics.render();
    let reconciles = support::metric(&text, "kaic_reconciles_total{result=\"ok\"}");
    let from_api = text
        .lines()
        .find_map(|l| l.strip_prefix("kaic_secret_observations_total{source=\"api\"} "))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(f64::NAN));
    assert!(
        reconciles <= 3.0,
        "{reconciles} reconciles for one create and one renewal"
    );
    // One live read: the new role's first reconcile, which must find any foreign Secret of
    // its name before it asks STS for credentials.
    assert_eq!(from_api, 1.0, "one live read of the Secret:\n{text}");
    assert!(support::metric(&text, "kaic_secret_observations_total{source=\"cache\"}") >= 1.0);
    assert_eq!(sts.assume_role_calls(&arn), 2);
    ctl.stop().await;
}
