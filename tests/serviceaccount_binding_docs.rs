//! The ServiceAccount binding's documented commands, carried out as written on the real API
//! server: docs/migration.md's audit-first steps (Warn and Audit, then Deny) and the recommended
//! RBAC of docs/security.md. A binary of its own: the steps change a cluster-wide binding.

mod support;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::webhook::binding;
use serde_json::{Value, json};
use support::{env, role, wait_for};

const BINDING: &str = "kube-aws-iam-controller-serviceaccount-binding";

/// The commands of the first fenced block after `heading` in `doc`.
fn commands(doc: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(support::repo().join(doc)).expect("doc");
    let section = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("{doc} has no {heading}"))
        .1;
    let block = section.split("```").nth(1).expect("a fenced block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubectl "))
        .map(String::from)
        .collect()
}

/// The `-p '<json>'` of a `kubectl patch` line.
fn patch_of(command: &str) -> Value {
    let json = command
        .split_once("-p '")
        .and_then(|(_, rest)| rest.strip_suffix('\''))
        .expect("-p '...'");
    serde_json::from_str(json).expect("the patch is JSON")
}

async fn admit(client: &kube::Client, ns: &str, name: &str) -> (u16, Vec<String>, String) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"serviceAccountName": "other", "containers": [{"name": "app", "image": "app"}],
                 "volumes": [{"name": "aws", "secret": {"secretName": "billing"}}]}});
    support::raw::post(client, &format!("/api/v1/namespaces/{ns}/pods"), &pod).await
}

#[tokio::test]
async fn the_documented_audit_first_steps_warn_then_refuse() {
    let env = env().await;
    let client = env.client().await;
    let steps = commands(
        "docs/migration.md",
        "## Turning on the ServiceAccount binding",
    );
    assert_eq!(
        steps,
        [
            "kubectl apply --server-side -f deploy/serviceaccount-binding.yaml",
            r#"kubectl patch validatingadmissionpolicybinding kube-aws-iam-controller-serviceaccount-binding --type=merge -p '{"spec":{"validationActions":["Warn","Audit"]}}'"#,
            r#"kubectl patch validatingadmissionpolicybinding kube-aws-iam-controller-serviceaccount-binding --type=merge -p '{"spec":{"validationActions":["Deny"]}}'"#,
        ],
        "docs/migration.md's steps changed: update this test"
    );
    assert_eq!(
        commands("docs/security.md", "It is enforced inside the API server"),
        [steps[0].clone()],
        "docs/security.md installs the policy as migration.md does"
    );
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let pp = PatchParams::default();

    // 1. Install; 2. report only; then bind a role.
    support::apply_manifest(&client, "deploy/serviceaccount-binding.yaml", None, false).await;
    bindings
        .patch(BINDING, &pp, &Patch::Merge(&patch_of(&steps[1])))
        .await
        .expect("step 2");
    let ns = env.namespace(&client, "sabm").await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let mut r = role("billing", "billing", 3600);
    r.spec.service_account_names = Some(vec!["billing-api".into()]);
    roles
        .create(&PostParams::default(), &r)
        .await
        .expect("role");
    let message = binding::message(&ns, "billing", "other", &["billing-api".to_string()]);
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let warnings = wait_for("a warning instead of a refusal", || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let (status, warnings, text) = admit(&client, &ns, &format!("audit-{n}")).await;
            assert_eq!(status, 201, "Warn and Audit admit: {text}");
            (!warnings.is_empty()).then_some(warnings)
        }
    })
    .await;
    assert!(
        warnings.iter().any(|w| w.contains(&message)),
        "{warnings:?}"
    );

    // 3. Enforce.
    bindings
        .patch(BINDING, &pp, &Patch::Merge(&patch_of(&steps[2])))
        .await
        .expect("step 3");
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let refused = wait_for("the refusal", || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let (status, _, text) = admit(&client, &ns, &format!("enforce-{n}")).await;
            (status == 403).then_some(text)
        }
    })
    .await;
    assert!(refused.contains(&message), "{refused}");
}

async fn allowed(
    client: &kube::Client,
    group: &str,
    ns: &str,
    attrs: (&str, &str, &str, &str),
) -> bool {
    let (api_group, resource, subresource, verb) = attrs;
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("someone".into()),
            groups: Some(vec![group.into(), "system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                group: Some(api_group.into()),
                resource: Some(resource.into()),
                subresource: (!subresource.is_empty()).then(|| subresource.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("status")
        .allowed
}

#[tokio::test]
async fn the_recommended_rbac_keeps_readers_from_secrets_exec_and_pods_and_lets_owners_bind() {
    let env = env().await;
    let client = env.client().await;
    let documented = commands("docs/security.md", "### Recommended RBAC");
    assert_eq!(
        documented,
        ["kubectl apply -n team-a -f examples/serviceaccount-binding-rbac.yaml"],
        "docs/security.md's RBAC command changed: update this test"
    );
    // Applied as written, into a namespace of the test's.
    let ns = env.namespace(&client, "sabr").await;
    support::apply_manifest(
        &client,
        "examples/serviceaccount-binding-rbac.yaml",
        Some(&ns),
        false,
    )
    .await;
    let readers = "team-a-readers";
    let owners = "team-a-owners";
    for (what, group, attrs, want) in [
        ("readers list pods", readers, ("", "pods", "", "list"), true),
        (
            "readers get Secrets",
            readers,
            ("", "secrets", "", "get"),
            false,
        ),
        (
            "readers list Secrets",
            readers,
            ("", "secrets", "", "list"),
            false,
        ),
        (
            "readers watch Secrets",
            readers,
            ("", "secrets", "", "watch"),
            false,
        ),
        (
            "readers create pods",
            readers,
            ("", "pods", "", "create"),
            false,
        ),
        (
            "readers create Deployments",
            readers,
            ("apps", "deployments", "", "create"),
            false,
        ),
        (
            "readers exec",
            readers,
            ("", "pods", "exec", "create"),
            false,
        ),
        (
            "readers attach",
            readers,
            ("", "pods", "attach", "create"),
            false,
        ),
        (
            "readers add ephemeral containers",
            readers,
            ("", "pods", "ephemeralcontainers", "patch"),
            false,
        ),
        (
            "readers edit AWSIAMRoles",
            readers,
            ("zalando.org", "awsiamroles", "", "patch"),
            false,
        ),
        (
            "owners edit AWSIAMRoles",
            owners,
            ("zalando.org", "awsiamroles", "", "patch"),
            true,
        ),
        (
            "owners get Secrets",
            owners,
            ("", "secrets", "", "get"),
            false,
        ),
    ] {
        assert_eq!(allowed(&client, group, &ns, attrs).await, want, "{what}");
    }
}
