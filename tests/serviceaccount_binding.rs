//! The ServiceAccount binding (`spec.serviceAccountNames`): one table of pod shapes (each way to
//! reach a Secret, each container kind, listed and unlisted ServiceAccounts, the default
//! ServiceAccount, a role without the field) runs on the real API server with the shipped
//! ValidatingAdmissionPolicies (deploy/serviceaccount-binding.yaml) and through the webhook's
//! pure decision (`review::respond`), and both give the same answer, with the same message, row
//! by row. Workloads get a warning and their pods are refused; a pod at the request size limit
//! stays within the CEL budget; the controller shows the binding in status. A test binary of
//! its own: the policies are cluster-wide.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::webhook::binding;
use kube_aws_iam_controller::webhook::mutate::{self, Choice, Injection};
use kube_aws_iam_controller::webhook::review::{self, Facts, RoleState};
use serde_json::{Value, json};
use support::{env, role, wait_for};

const MANIFEST: &str = "deploy/serviceaccount-binding.yaml";

/// The roles of the table's namespace: name and `spec.serviceAccountNames`.
fn roles() -> Vec<(&'static str, Option<Vec<&'static str>>)> {
    vec![
        ("open", None),
        ("bound", Some(vec!["app", "worker"])),
        ("for-default", Some(vec!["default"])),
        ("locked", Some(vec![])),
    ]
}

/// One pod shape.
struct Row {
    what: &'static str,
    service_account: Option<&'static str>,
    /// The pod's spec, without its ServiceAccount.
    spec: Value,
    /// Ephemeral containers added afterwards through `pods/ephemeralcontainers`.
    ephemeral: Option<Value>,
    /// The webhook wires the pod with this role (the pod's label).
    label: Option<&'static str>,
    /// The role whose binding refuses the pod, if any.
    refused_by: Option<&'static str>,
}

fn app() -> Value {
    json!({"name": "app", "image": "app"})
}

fn volume(secret: &str) -> Value {
    json!({"containers": [app()], "volumes": [{"name": "v", "secret": {"secretName": secret}}]})
}

fn projected(secret: &str) -> Value {
    json!({"containers": [app()], "volumes": [{"name": "v", "projected": {"sources": [
        {"configMap": {"name": "settings"}}, {"secret": {"name": secret}}]}}]})
}

fn key_ref(secret: &str) -> Value {
    json!([{"name": "AWS_SECRET", "valueFrom": {"secretKeyRef": {"name": secret, "key": "credentials"}}}])
}

fn secret_ref(secret: &str) -> Value {
    json!([{"prefix": "AWS_", "secretRef": {"name": secret}}])
}

/// A container (`containers`) or init container (`initContainers`) with `field` (`env` or
/// `envFrom`) set to `value`.
fn in_container(kind: &str, field: &str, value: Value) -> Value {
    let mut c = json!({"name": "c", "image": "app"});
    c[field] = value;
    if kind == "containers" {
        json!({"containers": [c]})
    } else {
        json!({"containers": [app()], "initContainers": [c]})
    }
}

fn ephemeral(field: &str, value: Value) -> Option<Value> {
    let mut c = json!({"name": "debug", "image": "debug", "targetContainerName": "app"});
    c[field] = value;
    Some(json!([c]))
}

fn row(
    what: &'static str,
    sa: Option<&'static str>,
    spec: Value,
    refused_by: Option<&'static str>,
) -> Row {
    Row {
        what,
        service_account: sa,
        spec,
        ephemeral: None,
        label: None,
        refused_by,
    }
}

fn table() -> Vec<Row> {
    let plain = || json!({"containers": [app()]});
    let mut rows = vec![
        row("volume, listed", Some("app"), volume("bound"), None),
        row(
            "volume, second listed",
            Some("worker"),
            volume("bound"),
            None,
        ),
        row(
            "volume, unlisted",
            Some("other"),
            volume("bound"),
            Some("bound"),
        ),
        row("projected, listed", Some("app"), projected("bound"), None),
        row(
            "projected, unlisted",
            Some("other"),
            projected("bound"),
            Some("bound"),
        ),
        row(
            "container env, listed",
            Some("app"),
            in_container("containers", "env", key_ref("bound")),
            None,
        ),
        row(
            "container env, unlisted",
            Some("other"),
            in_container("containers", "env", key_ref("bound")),
            Some("bound"),
        ),
        row(
            "container envFrom, listed",
            Some("worker"),
            in_container("containers", "envFrom", secret_ref("bound")),
            None,
        ),
        row(
            "container envFrom, unlisted",
            Some("other"),
            in_container("containers", "envFrom", secret_ref("bound")),
            Some("bound"),
        ),
        row(
            "init env, listed",
            Some("app"),
            in_container("initContainers", "env", key_ref("bound")),
            None,
        ),
        row(
            "init env, unlisted",
            Some("other"),
            in_container("initContainers", "env", key_ref("bound")),
            Some("bound"),
        ),
        row(
            "init envFrom, listed",
            Some("app"),
            in_container("initContainers", "envFrom", secret_ref("bound")),
            None,
        ),
        row(
            "init envFrom, unlisted",
            Some("other"),
            in_container("initContainers", "envFrom", secret_ref("bound")),
            Some("bound"),
        ),
        row(
            "default ServiceAccount, not listed",
            None,
            volume("bound"),
            Some("bound"),
        ),
        row(
            "default ServiceAccount, listed",
            None,
            volume("for-default"),
            None,
        ),
        row(
            "default ServiceAccount by name, listed",
            Some("default"),
            in_container("containers", "env", key_ref("for-default")),
            None,
        ),
        row(
            "unlisted ServiceAccount, role for default",
            Some("app"),
            volume("for-default"),
            Some("for-default"),
        ),
        row(
            "role without the field",
            Some("other"),
            volume("open"),
            None,
        ),
        row(
            "role without the field, env",
            None,
            in_container("containers", "envFrom", secret_ref("open")),
            None,
        ),
        row(
            "role listing nobody",
            Some("app"),
            projected("locked"),
            Some("locked"),
        ),
        row(
            "a Secret that is no role's",
            Some("other"),
            volume("unrelated"),
            None,
        ),
        row("no Secret at all", Some("other"), plain(), None),
        row(
            "two roles, one refuses",
            Some("app"),
            json!({"containers": [app()], "volumes": [
                {"name": "a", "secret": {"secretName": "bound"}},
                {"name": "b", "secret": {"secretName": "for-default"}}]}),
            Some("for-default"),
        ),
    ];
    for (what, sa, field, value, refused_by) in [
        (
            "ephemeral env, listed",
            "app",
            "env",
            key_ref("bound"),
            None,
        ),
        (
            "ephemeral env, unlisted",
            "other",
            "env",
            key_ref("bound"),
            Some("bound"),
        ),
        (
            "ephemeral envFrom, listed",
            "worker",
            "envFrom",
            secret_ref("bound"),
            None,
        ),
        (
            "ephemeral envFrom, unlisted",
            "other",
            "envFrom",
            secret_ref("bound"),
            Some("bound"),
        ),
        (
            "ephemeral, role without the field",
            "other",
            "env",
            key_ref("open"),
            None,
        ),
    ] {
        rows.push(Row {
            ephemeral: ephemeral(field, value),
            ..row(what, Some(sa), plain(), refused_by)
        });
    }
    for (what, sa, refused_by) in [
        ("wired by the webhook, listed", "app", None),
        ("wired by the webhook, unlisted", "other", Some("bound")),
    ] {
        rows.push(Row {
            label: Some("bound"),
            ..row(what, Some(sa), plain(), refused_by)
        });
    }
    rows
}

/// The pod of `row` as created (before any ephemeral container), named `name`.
fn pod(row: &Row, name: &str) -> Value {
    let mut pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": row.spec});
    if let Some(sa) = row.service_account {
        pod["spec"]["serviceAccountName"] = json!(sa);
    }
    if let Some(label) = row.label {
        pod["metadata"]["labels"] = json!({mutate::ROLE_LABEL: label});
    }
    pod
}

/// What the webhook answers for `row`: `None` admitted, `Some(message)` refused.
fn webhook_decision(
    row: &Row,
    ns: &str,
    bindings: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let mut object = pod(row, "p");
    let mut operation = "CREATE";
    let mut sub_resource = None;
    if let Some(containers) = &row.ephemeral {
        object["spec"]["ephemeralContainers"] = containers.clone();
        operation = "UPDATE";
        sub_resource = Some("ephemeralcontainers");
    }
    let review: AdmissionReview<Pod> = serde_json::from_value(support::admission_review(
        ns,
        operation,
        sub_resource,
        object,
    ))
    .expect("review");
    let req: AdmissionRequest<Pod> = review.try_into().expect("request");
    let choice = match row.label {
        Some(label) if operation == "CREATE" => Choice::Pod(label.to_string()),
        _ => Choice::None,
    };
    let facts = Facts {
        choice,
        role: RoleState::Ready,
        not_permitted: None,
        bindings: bindings.clone(),
    };
    let (res, _) = review::respond(&req, &facts, None, &Default::default());
    (!res.allowed).then_some(res.result.message)
}

/// Creates `row`'s pod on the API server, as the webhook would have wired it for a labelled
/// row, then adds its ephemeral containers: `None` admitted, `Some(error)` refused.
async fn api_decision(pods: &Api<Pod>, row: &Row, name: &str) -> Option<String> {
    let mut object = pod(row, name);
    if let Some(label) = row.label {
        let typed: Pod = serde_json::from_value(object.clone()).expect("pod");
        let m = mutate::mutate(
            &typed,
            &Injection {
                role: label.to_string(),
                region: None,
            },
        );
        json_patch::patch(&mut object, &m.patch).expect("the webhook's patch applies");
    }
    let typed: Pod = serde_json::from_value(object).expect("pod");
    if let Err(e) = pods.create(&PostParams::default(), &typed).await {
        return Some(e.to_string());
    }
    let containers = row.ephemeral.as_ref()?;
    pods.patch_subresource(
        "ephemeralcontainers",
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"ephemeralContainers": containers}})),
    )
    .await
    .err()
    .map(|e| e.to_string())
}

#[tokio::test]
async fn pods_reach_a_bound_roles_secret_only_as_a_listed_service_account_and_admission_agrees_with_the_webhook()
 {
    let env = env().await;
    let client = env.client().await;
    // `kubectl apply -f deploy/serviceaccount-binding.yaml` (docs/security.md).
    support::apply_manifest(&client, MANIFEST, None, false).await;
    let ns = env.namespace(&client, "sab").await;
    let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    for (name, accounts) in roles() {
        let mut r = role(name, name, 3600);
        r.spec.service_account_names = accounts.map(|a| a.iter().map(|s| s.to_string()).collect());
        api.create(&PostParams::default(), &r)
            .await
            .expect("create role");
    }
    // The bindings the webhook's cache would hold, from the objects as stored.
    let bindings: BTreeMap<String, Vec<String>> = api
        .list(&ListParams::default())
        .await
        .expect("list roles")
        .items
        .into_iter()
        .filter_map(|r| Some((r.metadata.name.clone()?, r.spec.service_account_names?)))
        .collect();
    assert_eq!(bindings.len(), 3, "{bindings:?}");

    // The API server loads policies and params asynchronously: wait until the last role
    // created refuses a probe.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe: Pod = serde_json::from_value(pod(
        &row("probe", Some("app"), volume("locked"), None),
        "probe",
    ))
    .expect("probe");
    wait_for("the binding policy to be in force", || async {
        pods.create(&dry, &probe).await.is_err().then_some(())
    })
    .await;

    let accounts: BTreeMap<&str, Vec<String>> = bindings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    for (i, r) in table().iter().enumerate() {
        let account = r.service_account.unwrap_or("default");
        let expected = r
            .refused_by
            .map(|role| binding::message(&ns, role, account, &accounts[role]));
        let webhook = webhook_decision(r, &ns, &bindings);
        assert_eq!(webhook, expected, "row {i} ({}): the webhook", r.what);
        let admission = api_decision(&pods, r, &format!("row-{i}")).await;
        match (&expected, &admission) {
            (None, None) => {}
            (Some(message), Some(error)) => assert!(
                error.contains(message) && error.contains("serviceaccount-binding"),
                "row {i} ({}): refused for another reason: {error}",
                r.what
            ),
            _ => panic!(
                "row {i} ({}): admission {admission:?}, the table and webhook {expected:?}",
                r.what
            ),
        }
    }
}

#[tokio::test]
async fn a_workload_whose_service_account_is_not_listed_gets_a_warning_and_its_pods_are_refused() {
    let env = env().await;
    let client = env.client().await;
    support::apply_manifest(&client, MANIFEST, None, false).await;
    let ns = env.namespace(&client, "sabw").await;
    let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let mut r = role("bound", "bound", 3600);
    r.spec.service_account_names = Some(vec!["app".into()]);
    api.create(&PostParams::default(), &r)
        .await
        .expect("create role");

    let template = |sa: &str| {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"serviceAccountName": sa, "containers": [app()],
                     "volumes": [{"name": "aws", "secret": {"secretName": "bound"}}]}
        })
    };
    let deployment = |name: &str, sa: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template(sa)}})
    };
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let message = binding::message(&ns, "bound", "other", &["app".to_string()]);
    // Policies and params load asynchronously: the first unlisted Deployment to warn.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let warnings = wait_for("the workload warning", || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (client, path, body) = (
            client.clone(),
            path.clone(),
            deployment(&format!("web-{n}"), "other"),
        );
        async move {
            let (status, warnings, text) = support::raw::post(&client, &path, &body).await;
            assert_eq!(
                status, 201,
                "the Deployment is stored despite the warning: {text}"
            );
            (!warnings.is_empty()).then_some(warnings)
        }
    })
    .await;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&message)
                && w.contains("the pods of this Deployment will be refused")),
        "{warnings:?}"
    );
    let (status, warnings, text) =
        support::raw::post(&client, &path, &deployment("listed", "app")).await;
    assert_eq!(
        (status, warnings.len()),
        (201, 0),
        "a listed ServiceAccount: {warnings:?} {text}"
    );

    // A CronJob's template is one level deeper.
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "serviceAccountName": "other", "containers": [app()],
                     "volumes": [{"name": "aws", "secret": {"secretName": "bound"}}]}}}}}});
    let (status, warnings, text) = support::raw::post(
        &client,
        &format!("/apis/batch/v1/namespaces/{ns}/cronjobs"),
        &cron,
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&message) && w.contains("CronJob")),
        "{warnings:?}"
    );

    // No controller-manager here: create the pod the ReplicaSet would make from the template.
    let mut pod = template("other");
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!("web-6d4cf56db6-x7k2p");
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let refused = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("the Deployment's pod is refused");
    assert!(refused.to_string().contains(&message), "{refused}");
}

/// A pod at the API server's request size limit with the role's Secret in the last variable of
/// its last container: the binding is judged within the CEL cost budget (a cost error would
/// refuse it with another message, and would refuse the listed ServiceAccount too).
#[tokio::test]
async fn a_pod_near_the_request_size_limit_is_judged_within_the_cel_budget() {
    let env = env().await;
    let client = env.client().await;
    support::apply_manifest(&client, MANIFEST, None, false).await;
    let ns = env.namespace(&client, "sabc").await;
    let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let mut r = role("bound", "bound", 3600);
    r.spec.service_account_names = Some(vec!["app".into()]);
    api.create(&PostParams::default(), &r)
        .await
        .expect("create role");
    let containers = 40;
    let per = 1000;
    let big = |sa: &str| {
        let cs: Vec<Value> = (0..containers)
            .map(|i| {
                let mut env: Vec<Value> = (0..per)
                    .map(|j| json!({"name": format!("V{j}"), "valueFrom": {"secretKeyRef": {"name": format!("s{j}"), "key": "k"}}}))
                    .collect();
                if i + 1 == containers {
                    env.push(json!({"name": "AWS", "valueFrom": {"secretKeyRef": {"name": "bound", "key": "k"}}}));
                }
                json!({"name": format!("c{i}"), "image": "app", "env": env})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
               "spec": {"serviceAccountName": sa, "containers": cs}})
    };
    let bytes = serde_json::to_vec(&big("other")).expect("json").len();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let message = binding::message(&ns, "bound", "other", &["app".to_string()]);
    let unlisted: Pod = serde_json::from_value(big("other")).expect("pod");
    let refused = wait_for("the refusal", || async {
        pods.create(&dry, &unlisted)
            .await
            .err()
            .map(|e| e.to_string())
    })
    .await;
    eprintln!(
        "pod of {bytes} bytes, {containers} containers x {per} env: {}",
        &refused[..refused.len().min(400)]
    );
    assert!(refused.contains(&message), "{bytes} bytes: {refused}");
    let listed: Pod = serde_json::from_value(big("app")).expect("pod");
    pods.create(&dry, &listed)
        .await
        .expect("the listed ServiceAccount's big pod is admitted");
}

/// `status.serviceAccounts` (the `ServiceAccounts` column) follows `spec.serviceAccountNames`,
/// without new credentials.
#[tokio::test]
async fn the_controller_shows_the_binding_in_status_without_calling_sts_again() {
    let support::Scene {
        client,
        ns,
        roles,
        sts,
        ..
    } = support::scene("sabs").await;
    let ctl = support::Controller::builder(&client, &ns, support::sts_issuer(&sts.endpoint))
        .start()
        .await;
    let shown = |want: Option<&'static str>| {
        let roles = roles.clone();
        async move {
            wait_for(&format!("status.serviceAccounts {want:?}"), || async {
                let r = roles.get("app").await.ok()?;
                let status = r.status.clone()?;
                let ready = r.ready_condition().is_some_and(|c| c.status == "True");
                (ready
                    && status.observed_generation == r.metadata.generation
                    && status.service_accounts.as_deref() == want)
                    .then_some(())
            })
            .await
        }
    };
    let mut r = role("app", "app", 3600);
    r.spec.service_account_names = Some(vec!["web".into()]);
    roles
        .create(&PostParams::default(), &r)
        .await
        .expect("create");
    shown(Some("web")).await;
    for (names, want) in [
        (json!(["web", "worker"]), Some("web,worker")),
        (json!([]), Some("<none>")),
        (Value::Null, None),
    ] {
        roles
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"serviceAccountNames": names}})),
            )
            .await
            .expect("patch");
        shown(want).await;
    }
    assert_eq!(
        sts.assume_role_calls(&format!("{}app", support::BASE_ROLE_ARN)),
        1,
        "changing the binding changes nothing STS is asked for"
    );
    ctl.stop().await;
}
