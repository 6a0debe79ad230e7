//! Least privilege, proven on the real API server: the shipped ServiceAccount holds exactly the
//! verbs the controller needs and nothing else (SelfSubjectRulesReview, minus what every
//! authenticated user holds), and the namespaced mode (deploy/rbac-namespaced.yaml,
//! `--namespace`) does the whole job in its namespace while being denied Secrets elsewhere.
//! A test binary of its own: it installs cluster-wide RBAC.

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, Config};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::{Env, Launch, data, env, role, wait_for};

/// One granted (apiGroup, resource, resourceName or "*", verb).
type Grant = (String, String, String, String);

fn grants(review: &SelfSubjectRulesReview) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in &review.status.as_ref().expect("status").resource_rules {
        let names = rule
            .resource_names
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| vec!["*".into()]);
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for n in &names {
                    for v in &rule.verbs {
                        out.insert((g.clone(), r.clone(), n.clone(), v.clone()));
                    }
                }
            }
        }
    }
    out
}

async fn rules_in(env: &Env, kubeconfig: &std::path::Path, ns: &str) -> BTreeSet<Grant> {
    let _ = env;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    let api: Api<SelfSubjectRulesReview> = Api::all(client);
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(ns.into()),
        },
        ..Default::default()
    };
    let got = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview");
    grants(&got)
}

fn set(items: &[(&str, &str, &str, &str)]) -> BTreeSet<Grant> {
    items
        .iter()
        .map(|(g, r, n, v)| (g.to_string(), r.to_string(), n.to_string(), v.to_string()))
        .collect()
}

/// What the controller needs in a namespace it serves (the ClusterRole or the Role).
const SERVED: &[(&str, &str, &str, &str)] = &[
    ("zalando.org", "awsiamroles", "*", "get"),
    ("zalando.org", "awsiamroles", "*", "list"),
    ("zalando.org", "awsiamroles", "*", "watch"),
    ("zalando.org", "awsiamroles/status", "*", "get"),
    ("zalando.org", "awsiamroles/status", "*", "patch"),
    ("zalando.org", "awsiamroles/finalizers", "*", "update"),
    ("", "secrets", "*", "get"),
    ("", "secrets", "*", "list"),
    ("", "secrets", "*", "watch"),
    ("", "secrets", "*", "create"),
    ("", "secrets", "*", "patch"),
    ("", "secrets", "*", "delete"),
    ("events.k8s.io", "events", "*", "create"),
    ("events.k8s.io", "events", "*", "patch"),
    ("", "events", "*", "create"),
    ("", "events", "*", "patch"),
];

/// The Lease: created, read and renewed (or released) by name only.
const LEASE: &[(&str, &str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "*", "create"),
    (
        "coordination.k8s.io",
        "leases",
        "kube-aws-iam-controller",
        "get",
    ),
    (
        "coordination.k8s.io",
        "leases",
        "kube-aws-iam-controller",
        "patch",
    ),
];

async fn service_account(admin: &Client, ns: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some(name.into());
    let _ = api.create(&PostParams::default(), &sa).await;
}

async fn allowed(admin: &Client, user: &str, attrs: ResourceAttributes) -> bool {
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(attrs),
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

fn attrs(
    ns: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> ResourceAttributes {
    ResourceAttributes {
        namespace: ns.map(Into::into),
        group: Some(group.into()),
        resource: Some(resource.into()),
        verb: Some(verb.into()),
        name: name.map(Into::into),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_shipped_service_account_holds_exactly_the_verbs_it_needs() {
    let env = env().await;
    let admin = env.client().await;
    support::apply_manifest(&admin, "deploy/rbac.yaml", None, false).await;
    let tenant = env.namespace(&admin, "tenant").await;
    // What any authenticated ServiceAccount holds without bindings (discovery, self reviews).
    service_account(&admin, "kube-system", "nobody").await;
    let nobody = support::sa_kubeconfig(env, &admin, "kube-system", "nobody").await;
    let ours = support::sa_kubeconfig(env, &admin, "kube-system", "kube-aws-iam-controller").await;

    for (ns, expected) in [
        (tenant.as_str(), set(SERVED)),
        (
            "kube-system",
            set(SERVED).union(&set(LEASE)).cloned().collect(),
        ),
    ] {
        let baseline = rules_in(env, &nobody, ns).await;
        let held: BTreeSet<Grant> = rules_in(env, &ours, ns)
            .await
            .difference(&baseline)
            .cloned()
            .collect();
        // Namespaces are cluster-scoped and show in every namespace's review.
        let mut expected = expected;
        for v in ["get", "list", "watch"] {
            expected.insert(("".into(), "namespaces".into(), "*".into(), v.into()));
        }
        let missing: Vec<_> = expected.difference(&held).collect();
        let extra: Vec<_> = held.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "namespace {ns}: missing {missing:?}, extra {extra:?}"
        );
    }

    let sa = "system:serviceaccount:kube-system:kube-aws-iam-controller";
    for (what, a) in [
        ("read pods", attrs(Some(&tenant), "", "pods", "get", None)),
        ("list pods", attrs(Some(&tenant), "", "pods", "list", None)),
        (
            "exec into pods",
            attrs(Some(&tenant), "", "pods/exec", "create", None),
        ),
        (
            "update Secrets",
            attrs(Some(&tenant), "", "secrets", "update", None),
        ),
        (
            "write AWSIAMRoles",
            attrs(Some(&tenant), "zalando.org", "awsiamroles", "create", None),
        ),
        (
            "patch Namespaces",
            attrs(None, "", "namespaces", "patch", Some(&tenant)),
        ),
        (
            "renew another Lease",
            attrs(
                Some("kube-system"),
                "coordination.k8s.io",
                "leases",
                "patch",
                Some("other"),
            ),
        ),
        (
            "write Leases outside kube-system",
            attrs(
                Some(&tenant),
                "coordination.k8s.io",
                "leases",
                "create",
                None,
            ),
        ),
    ] {
        assert!(!allowed(&admin, sa, a).await, "the controller may {what}");
    }
    assert!(
        allowed(
            &admin,
            sa,
            attrs(
                Some("kube-system"),
                "coordination.k8s.io",
                "leases",
                "patch",
                Some("kube-aws-iam-controller")
            )
        )
        .await,
        "the controller must renew its own Lease"
    );
}

#[tokio::test]
async fn the_namespaced_mode_does_its_job_in_its_namespace_and_is_denied_secrets_elsewhere() {
    let env = env().await;
    let admin = env.client().await;
    // deploy/rbac-namespaced.yaml serves namespace `team`, annotated to permit the test role.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let mut team = k8s_openapi::api::core::v1::Namespace::default();
    team.metadata.name = Some("team".into());
    team.metadata.annotations = Some(
        [(
            kube_aws_iam_controller::policy::PERMITTED_ANNOTATION.to_string(),
            "team-app".to_string(),
        )]
        .into(),
    );
    namespaces
        .create(&PostParams::default(), &team)
        .await
        .expect("namespace team");
    support::apply_manifest(&admin, "deploy/rbac-namespaced.yaml", None, false).await;
    let other = env.namespace(&admin, "other").await;
    let kubeconfig = support::sa_kubeconfig(env, &admin, "team", "kube-aws-iam-controller").await;

    let held = rules_in(env, &kubeconfig, &other).await;
    assert!(
        !held
            .iter()
            .any(|(_, r, _, _)| r == "secrets" || r == "awsiamroles"),
        "the namespaced controller holds rights outside its namespace: {held:?}"
    );
    let sa = "system:serviceaccount:team:kube-aws-iam-controller";
    for verb in ["get", "list", "create", "delete"] {
        assert!(
            !allowed(&admin, sa, attrs(Some(&other), "", "secrets", verb, None)).await,
            "the namespaced controller may {verb} Secrets in {other}"
        );
    }

    let bin = support::start_binary_with(
        env,
        "team",
        &env.moto_endpoint,
        &[],
        Launch {
            kubeconfig: Some(kubeconfig),
            ..Launch::default()
        },
    )
    .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(admin.clone(), "team");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "team");
    roles
        .create(&PostParams::default(), &role("team-app", "team-app", 3600))
        .await
        .expect("create");
    let s = wait_for("the namespaced controller issues the Secret", || async {
        secrets.get_opt("team-app").await.ok().flatten()
    })
    .await;
    assert_eq!(
        data(&s, "role-arn"),
        format!("{}team-app", support::BASE_ROLE_ARN)
    );
    let logs = bin.logs();
    assert!(
        !logs.contains("forbidden"),
        "RBAC denied something:\n{logs}"
    );
    bin.kill();
}
