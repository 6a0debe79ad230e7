//! The shipped ValidatingAdmissionPolicy (deploy/namespace-policy.yaml) refuses, at admission,
//! AWSIAMRoles whose namespace does not permit their role, on the real API server, and agrees
//! with the controller's own policy (`policy::evaluate`) on every row. A test binary of its own:
//! the policy is cluster-wide.

mod support;

use std::collections::BTreeMap;

use kube::api::{Api, PostParams};
use kube_aws_iam_controller::aws::arn;
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::policy::{
    self, ALLOWED_ROLES_ANNOTATION, Guard, PERMITTED_ANNOTATION, PolicyInput, PolicyMode, Verdict,
};
use support::{BASE_ROLE_ARN, env, role, wait_for};

const P: &str = PERMITTED_ANNOTATION;
const A: &str = ALLOWED_ROLES_ANNOTATION;

/// Namespace annotations, a roleReference, and whether the policy permits it.
type Row = (Vec<(&'static str, &'static str)>, &'static str, bool);

fn table() -> Vec<Row> {
    vec![
        (vec![], "app", false),
        (vec![], "arn:aws:iam::123456789012:role/app", false),
        (vec![(P, ".*")], "app", true),
        (vec![(P, "app")], "app", true),
        (vec![(P, "app")], "app-admin", false),
        (vec![(P, "app")], "team/app", false),
        (vec![(P, "app")], "arn:aws:iam::123456789012:role/app", true),
        (vec![(P, "x|app")], "app-admin", false),
        (vec![(P, "team/.*")], "team/app", true),
        (
            vec![(P, "team/.*")],
            "arn:aws:iam::123456789012:role/team/db",
            true,
        ),
        (vec![(P, "team/.*")], "other/app", false),
        (
            vec![(P, r"arn:aws:iam::123456789012:role/(app|db)")],
            "arn:aws:iam::123456789012:role/db",
            true,
        ),
        (vec![(P, "app(")], "app", false),
        (vec![(A, r#"["app"]"#)], "app", true),
        (
            vec![(A, r#"["app"]"#)],
            "arn:aws:iam::123456789012:role/app",
            true,
        ),
        (vec![(A, r#"["app"]"#)], "app2", false),
        (vec![(A, r#"["team/*"]"#)], "team/a/b", true),
        (vec![(A, r#"["team/*"]"#)], "teams/a", false),
        (vec![(A, r#"[ "db" , "app*" ]"#)], "app-reader", true),
        (vec![(A, r#"["a.p"]"#)], "axp", false),
        (vec![(A, r#"["a.p"]"#)], "a.p", true),
        (
            vec![(A, r#"["arn:aws:iam::123456789012:role/ci-*"]"#)],
            "arn:aws:iam::123456789012:role/ci-runner",
            true,
        ),
        (
            vec![(A, r#"["arn:aws:iam::123456789012:role/ci-*"]"#)],
            "ci-runner",
            true,
        ),
        (vec![(A, "[]")], "app", false),
        (vec![(P, "db"), (A, r#"["app"]"#)], "app", true),
        (vec![(P, "db"), (A, r#"["app"]"#)], "cache", false),
    ]
}

fn controller_verdict(annotations: &[(&str, &str)], reference: &str) -> bool {
    let base = BASE_ROLE_ARN.parse().expect("base");
    let arn = arn::resolve(reference, Some(&base)).expect("valid reference");
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let verdict = policy::evaluate(&PolicyInput {
        mode: PolicyMode::Enforce,
        namespace: "ns",
        annotations: Some(&annotations),
        arn: &arn,
        base: Some(&base),
        guard: &Guard::default(),
        own: false,
    });
    verdict == Verdict::Permitted
}

#[tokio::test]
async fn the_admission_policy_refuses_roles_the_namespace_does_not_permit_and_agrees_with_the_controller()
 {
    let env = env().await;
    let client = env.client().await;
    support::apply_manifest(&client, "deploy/namespace-policy.yaml", None, false).await;

    // The API server loads a new policy asynchronously: wait until it refuses a probe.
    let probe_ns = env.namespace_with(&client, "vap-probe", &[]).await;
    let probe: Api<AWSIAMRole> = Api::namespaced(client.clone(), &probe_ns);
    wait_for("the admission policy to be in force", || async {
        let name = format!("probe-{}", support::rand_suffix());
        probe
            .create(&PostParams::default(), &role(&name, "app", 3600))
            .await
            .is_err()
            .then_some(())
    })
    .await;

    for (i, (annotations, reference, permitted)) in table().into_iter().enumerate() {
        assert_eq!(
            controller_verdict(&annotations, reference),
            permitted,
            "row {i}: the controller's policy disagrees with the table for {annotations:?} {reference}"
        );
        let ns = env.namespace_with(&client, "vap", &annotations).await;
        let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
        let result = api
            .create(&PostParams::default(), &role("r", reference, 3600))
            .await;
        match (permitted, result) {
            (true, Ok(_)) => {}
            (false, Err(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("kube-aws-iam-controller-namespace-policy")
                        && (text.contains("is not permitted in namespace")
                            || text.contains("has no role policy")
                            || text.contains("error")),
                    "row {i}: unclear refusal: {text}"
                );
                if annotations.is_empty() {
                    assert!(text.contains(PERMITTED_ANNOTATION), "row {i}: {text}");
                }
            }
            (true, Err(e)) => panic!("row {i}: {annotations:?} {reference} refused: {e}"),
            (false, Ok(_)) => panic!("row {i}: {annotations:?} {reference} admitted"),
        }
    }

    // The controller's own AWSIAMRole (written by `bootstrap`) is not subject to it.
    let own: Api<AWSIAMRole> = Api::namespaced(client.clone(), "kube-system");
    own.create(
        &PostParams::default(),
        &role("kube-aws-iam-controller", "kube-aws-iam-controller", 3600),
    )
    .await
    .expect("the controller's own AWSIAMRole is admitted");
}
