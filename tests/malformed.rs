//! Hostile or careless input: a table of malformed AWSIAMRoles. What the schema refuses is
//! refused by the real API server with a message naming the field; what passes the schema and
//! is still unusable gets `Ready=False` with a bounded, sanitised message and causes no STS
//! call; the controller never panics and keeps serving a valid neighbour.

mod support;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{BASE_ROLE_ARN, Controller, Scene, scene, sts_issuer, wait_for};

fn resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("zalando.org", "v1", "AWSIAMRole"))
}

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "zalando.org/v1",
        "kind": "AWSIAMRole",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("object")
}

/// Specs the API server must refuse, with the field its message names.
fn refused() -> Vec<(Value, &'static str)> {
    let long_segment = "a".repeat(65);
    let huge = "a".repeat(100_000);
    let eleven: Vec<String> = (0..11)
        .map(|i| format!("arn:aws:iam::aws:policy/P{i}"))
        .collect();
    vec![
        (json!({}), "roleReference"),
        (json!({"roleReference": 123}), "roleReference"),
        (json!({"roleReference": null}), "roleReference"),
        (json!({"roleReference": ""}), "roleReference"),
        (json!({"roleReference": "ab"}), "roleReference"),
        (json!({"roleReference": huge}), "roleReference"),
        (json!({"roleReference": "app/"}), "roleReference"),
        (json!({"roleReference": "/app"}), "roleReference"),
        (json!({"roleReference": "team//app"}), "roleReference"),
        (json!({"roleReference": "my app"}), "roleReference"),
        (json!({"roleReference": " app"}), "roleReference"),
        (json!({"roleReference": "app\u{0}x"}), "roleReference"),
        (json!({"roleReference": "app\nrole"}), "roleReference"),
        (json!({"roleReference": "app\u{1b}[31m"}), "roleReference"),
        (json!({"roleReference": "rôle"}), "roleReference"),
        (json!({"roleReference": "app\u{1F600}"}), "roleReference"),
        (json!({"roleReference": "app\u{202e}lor"}), "roleReference"),
        (json!({"roleReference": long_segment}), "roleReference"),
        (
            json!({"roleReference": "arn:aws:iam::123456789012:user/bob"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:s3:::bucket/key"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:sts::123456789012:assumed-role/app/s"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:iam::12345:role/app"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws-foo:iam::123456789012:role/app"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:iam:eu-west-1:123456789012:role/app"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:iam::123456789012:role/"}),
            "roleReference",
        ),
        (
            json!({"roleReference": "arn:aws:iam::123456789012:role/app/"}),
            "roleReference",
        ),
        (json!({"roleReference": ["app"]}), "roleReference"),
        (
            json!({"roleReference": "app", "roleSessionDuration": "3600"}),
            "roleSessionDuration",
        ),
        (
            json!({"roleReference": "app", "roleSessionDuration": 899}),
            "roleSessionDuration",
        ),
        (
            json!({"roleReference": "app", "roleSessionDuration": 43201}),
            "roleSessionDuration",
        ),
        (
            json!({"roleReference": "app", "roleSessionDuration": -1}),
            "roleSessionDuration",
        ),
        (
            json!({"roleReference": "app", "roleSessionDuration": 1.5}),
            "roleSessionDuration",
        ),
        (
            json!({"roleReference": "app", "roleSessionDuration": 1e30}),
            "roleSessionDuration",
        ),
        (json!({"roleReference": "app", "policy": ""}), "policy"),
        (
            json!({"roleReference": "app", "policy": "x".repeat(2049)}),
            "policy",
        ),
        (json!({"roleReference": "app", "policy": 42}), "policy"),
        (
            json!({"roleReference": "app", "policyARNs": eleven}),
            "policyARNs",
        ),
        (
            json!({"roleReference": "app", "policyARNs": "arn:aws:iam::aws:policy/ReadOnlyAccess"}),
            "policyARNs",
        ),
        (
            json!({"roleReference": "app", "policyARNs": ["arn:aws:iam::123456789012:role/app"]}),
            "policyARNs",
        ),
        (
            json!({"roleReference": "app", "policyARNs": ["arn:aws:iam::aws:policy/Read Only"]}),
            "policyARNs",
        ),
    ]
}

/// Specs the schema accepts that the controller must still refuse without calling STS, with
/// the condition reason it reports.
fn unusable() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "not-json-policy",
            json!({"roleReference": "npol", "policy": "{\"Version\": \u{7}"}),
            "InvalidSessionPolicy",
        ),
        (
            "cross-partition-policy",
            json!({"roleReference": "cpol", "policyARNs": ["arn:aws-cn:iam::aws:policy/ReadOnlyAccess"]}),
            "InvalidSessionPolicy",
        ),
        (
            "huge-policy",
            json!({"roleReference": "hpol", "policy": format!("{{\"x\": \"{}\u{1b}\"", "y".repeat(2000))}),
            "InvalidSessionPolicy",
        ),
    ]
}

#[tokio::test]
async fn malformed_awsiamroles_are_refused_with_clear_messages_and_never_stall_a_valid_neighbour() {
    let Scene {
        client, ns, roles, ..
    } = scene("malformed").await;
    let sts = StsDouble::start().await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource());

    let rows = refused();
    assert!(rows.len() >= 30, "the table covers at least 30 objects");
    for (i, (spec, field)) in rows.into_iter().enumerate() {
        let shown = spec.to_string();
        let shown = &shown[..shown.len().min(120)];
        let err = raw
            .create(&PostParams::default(), &object(&format!("bad-{i}"), spec))
            .await
            .expect_err(&format!("row {i} ({shown}) must be refused by the schema"));
        let text = err.to_string();
        assert!(
            text.contains(field),
            "row {i} ({shown}): the refusal does not name {field}: {text}"
        );
    }

    for (name, spec, _) in unusable() {
        raw.create(&PostParams::default(), &object(name, spec))
            .await
            .unwrap_or_else(|e| panic!("{name} passes the schema: {e}"));
    }
    roles
        .create(&PostParams::default(), &support::role("good", "good", 3600))
        .await
        .expect("create the valid neighbour");

    for (name, _, reason) in unusable() {
        let role = wait_for(&format!("{name} reported"), || async {
            let r: AWSIAMRole = roles.get(name).await.ok()?;
            r.ready_condition()
                .filter(|c| c.status == "False")
                .is_some()
                .then_some(r)
        })
        .await;
        let c = role.ready_condition().expect("condition");
        assert_eq!(c.reason, reason, "{name}: {c:?}");
        assert!(
            c.message.len() <= 1024,
            "{name}: message of {} bytes",
            c.message.len()
        );
        assert!(
            !c.message.chars().any(char::is_control),
            "{name}: control characters in {:?}",
            c.message
        );
    }
    wait_for("the valid neighbour is ready", || async {
        let r = roles.get("good").await.ok()?;
        r.ready_condition()
            .filter(|c| c.status == "True")
            .map(|_| ())
    })
    .await;
    let calls: usize = ["npol", "cpol", "hpol"]
        .iter()
        .map(|r| sts.assume_role_calls(&format!("{BASE_ROLE_ARN}{r}")))
        .sum();
    assert_eq!(calls, 0, "refused input reached STS");
    assert_eq!(sts.assume_role_calls(&format!("{BASE_ROLE_ARN}good")), 1);
    assert!(!ctl.is_finished(), "the controller stopped");
    ctl.stop().await;
}
