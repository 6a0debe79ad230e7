//! The namespace role policy, generated: the controller's `policy::evaluate` and the shipped
//! ValidatingAdmissionPolicy (deploy/namespace-policy.yaml, its CEL evaluated by the real API
//! server) agree on generated Namespace annotations and role references (issue 24). Cases
//! where they differ by a simplification the policy's header documents are counted apart;
//! any other difference fails with the case. A test binary of its own: the policy is
//! cluster-wide. `KAIC_FUZZ_POLICY_NAMESPACES` sets how many annotation sets are tried (default
//! 40, each against 8 references).

mod support;

use std::collections::BTreeMap;

use kube::api::{Api, PostParams};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use kube_aws_iam_controller::aws::arn::{self, BaseRoleArn};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::policy::{
    self, ALLOWED_ROLES_ANNOTATION, Guard, PERMITTED_ANNOTATION, PolicyInput, PolicyMode, Verdict,
};
use support::{BASE_ROLE_ARN, env, role, wait_for};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["app", "db", "team", "ci-runner", "a.p", "app+1", "x_y", "App"])
            .prop_map(str::to_string),
        // Characters of role names, less the comma (documented: patterns cannot hold one).
        1 => "[A-Za-z0-9+=.@_-]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => segment(),
        1 => prop::collection::vec(segment(), 2..4).prop_map(|v| v.join("/")),
    ]
}

/// References the CRD's schema admits (3 characters at least): names, paths, ARNs in the base
/// account and another.
fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => path(),
        2 => path().prop_map(|p| format!("{BASE_ROLE_ARN}{p}")),
        1 => (prop::sample::select(vec!["aws", "aws-cn"]), path())
            .prop_map(|(part, p)| format!("arn:{part}:iam::999999999999:role/{p}")),
    ]
    .prop_filter("the schema's minLength", |r| r.len() >= 3)
}

/// kiam regular expressions in the syntax RE2 and Rust's regex share.
fn regex() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => segment().prop_map(|s| regex::escape(&s)),
        1 => prop::sample::select(vec![
            ".*", ".+", "[a-z]+", "[^/]+", "/", "\\d", "\\w+", "(?i)app", "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::[0-9]{12}:role/", "app(", "[", "x|app", "a{2,}", "(app|db)",
        ])
        .prop_map(str::to_string),
    ];
    (
        prop::collection::vec(atom, 1..4),
        prop::sample::select(vec!["", "", "|", "/"]),
    )
        .prop_map(|(v, sep)| v.join(sep))
}

/// kube2iam's JSON lists of globs: names, paths, ARNs, `*`, spacing, and regex characters.
fn allowed_roles() -> impl Strategy<Value = String> {
    let glob = prop_oneof![
        6 => prop::collection::vec(
            prop_oneof![3 => segment(), 1 => Just("*".to_string()), 1 => Just("/".to_string())],
            1..3,
        )
        .prop_map(|v| v.concat()),
        2 => path().prop_map(|p| format!("{BASE_ROLE_ARN}{p}")),
        1 => path().prop_map(|p| format!("arn:aws:iam::999999999999:role/{p}*")),
        1 => prop::sample::select(vec![
            "*", " app", "app ", "x|app", "(app)", "a?p", "[a]pp", "^app$", "a{1}pp", "\\d",
            "app$|x", "team/*", "**",
        ])
            .prop_map(str::to_string),
    ];
    (
        prop::collection::vec(glob, 0..4),
        prop::sample::select(vec![",", ", ", " , "]),
    )
        .prop_map(|(globs, sep)| {
            let quoted: Vec<String> = globs
                .iter()
                .map(|g| serde_json::to_string(g).expect("json"))
                .collect();
            format!("[{}]", quoted.join(sep))
        })
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    (prop::option::of(regex()), prop::option::of(allowed_roles())).prop_map(|(p, a)| {
        let mut m = BTreeMap::new();
        if let Some(p) = p {
            m.insert(PERMITTED_ANNOTATION.to_string(), p);
        }
        if let Some(a) = a {
            m.insert(ALLOWED_ROLES_ANNOTATION.to_string(), a);
        }
        m
    })
}

fn controller_permits(
    annotations: &BTreeMap<String, String>,
    reference: &str,
    base: &BaseRoleArn,
) -> bool {
    let arn = arn::resolve(reference, Some(base)).expect("generated references resolve");
    policy::evaluate(&PolicyInput {
        mode: PolicyMode::Enforce,
        namespace: "ns",
        annotations: Some(annotations),
        arn: &arn,
        base: Some(base),
        guard: &Guard::default(),
        own: false,
    }) == Verdict::Permitted
}

/// kube2iam's glob (`*` any run, the rest literal), for the documented simplification.
fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i)
                        && glob_matches(tail, &text[head.len() + i..])
                })
        }
    }
}

/// Which documented simplification of the admission policy (deploy/namespace-policy.yaml,
/// docs/security.md), if any, explains that it `admits` what the controller does not, or the
/// other way round.
fn documented(
    annotations: &BTreeMap<String, String>,
    reference: &str,
    base: &BaseRoleArn,
    admits: bool,
) -> Option<&'static str> {
    let arn = arn::resolve(reference, Some(base)).ok()?;
    let bare = !reference.starts_with("arn:");
    if admits {
        // The account is not compared when the pattern or the reference is a bare name.
        let globs: Vec<String> = annotations
            .get(ALLOWED_ROLES_ANNOTATION)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let by_name = globs
            .iter()
            .map(|g| g.trim())
            .any(|g| match g.split_once(":role/") {
                Some((_, name)) if g.starts_with("arn:") => {
                    bare && glob_matches(name, &arn.path_and_name)
                }
                _ => arn.account != base.account && glob_matches(g, &arn.path_and_name),
            });
        by_name.then_some("account not compared")
    } else {
        // A bare reference is matched by kiam's expression as written, not as the ARN the
        // controller makes of it.
        let permitted = annotations.get(PERMITTED_ANNOTATION)?;
        let re = regex::Regex::new(&format!("^(?:{permitted})$")).ok()?;
        (bare && re.is_match(&arn.to_string())).then_some("bare reference not made an ARN")
    }
}

#[tokio::test]
async fn the_admission_policy_and_the_controller_agree_on_generated_namespace_policies() {
    let env = env().await;
    let client = env.client().await;
    support::apply_manifest(&client, "deploy/namespace-policy.yaml", None, false).await;
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

    let namespaces: usize = std::env::var("KAIC_FUZZ_POLICY_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let base: BaseRoleArn = BASE_ROLE_ARN.parse().expect("base");
    let mut runner = TestRunner::new(Config::default());
    let case = (annotations(), prop::collection::vec(reference(), 8));
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let (mut agreed, mut simplified, mut differ) = (0, BTreeMap::<&str, usize>::new(), Vec::new());
    let mut permitted = 0;
    for _ in 0..namespaces {
        let (annotations, references) = case
            .new_tree(&mut runner)
            .expect("generate a case")
            .current();
        let pairs: Vec<(&str, &str)> = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ns = env.namespace_with(&client, "fuzz-vap", &pairs).await;
        let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
        for (i, reference) in references.iter().enumerate() {
            let controller = controller_permits(&annotations, reference, &base);
            let admission = match api
                .create(&dry_run, &role(&format!("r{i}"), reference, 3600))
                .await
            {
                Ok(_) => true,
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => false,
                Err(e) => panic!("dry-run create of {reference} in {ns}: {e}"),
            };
            permitted += usize::from(controller);
            if controller == admission {
                agreed += 1;
            } else if let Some(why) = documented(&annotations, reference, &base, admission) {
                *simplified.entry(why).or_insert(0) += 1;
            } else {
                differ.push(format!(
                    "{annotations:?} {reference}: controller {}, admission {}",
                    if controller { "permits" } else { "denies" },
                    if admission { "admits" } else { "refuses" }
                ));
            }
        }
    }
    println!(
        "namespace policy vs ValidatingAdmissionPolicy: {} cases ({namespaces} namespaces), {agreed} agree ({permitted} permitted by the controller), {simplified:?} differ by a documented simplification, {} otherwise",
        agreed + simplified.values().sum::<usize>() + differ.len(),
        differ.len()
    );
    assert!(
        differ.is_empty(),
        "the admission policy and the controller disagree:\n{}",
        differ.join("\n")
    );
}
