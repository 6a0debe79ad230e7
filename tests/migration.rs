//! Upgrade from the Go controller's install to the Helm chart, step by step as
//! docs/migration.md says: a cluster with the Go project's CRD, RBAC and Deployment and the
//! Secrets it wrote moves to the chart; the CRD is taken over, the old Deployment and RBAC are
//! removed, and the chart's controller adopts every Secret without assuming any role.
//! A test binary of its own: it replaces the cluster's CRD and uses kube-system.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::helm::helm_ok;
use support::pod::{Entrypoint, Pod, container, deployment, wait_for_probes};
use support::sts_double::StsDouble;
use support::{role, scene, wait_for};

const NAME: &str = "kube-aws-iam-controller";

/// The commands of docs/migration.md's "Moving to the Helm chart" block, in order.
fn documented_steps() -> Vec<String> {
    let doc = std::fs::read_to_string(support::repo().join("docs/migration.md")).expect("doc");
    let section = doc
        .split("### Moving to the Helm chart")
        .nth(1)
        .expect("a 'Moving to the Helm chart' section");
    let block = section
        .split("```")
        .nth(1)
        .expect("a code block in the section");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// A Secret as the Go controller writes it: its six keys, its labels, an owner reference.
fn go_secret(role: &AWSIAMRole, ns: &str, arn: &str) -> Secret {
    let expire = (chrono::Utc::now() + chrono::Duration::minutes(50))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let key = format!("ASIAGO{}", role.name_any().to_uppercase().replace('-', ""));
    let json = format!(
        r#"{{"Version":1,"AccessKeyId":"{key}","SecretAccessKey":"go-secret","SessionToken":"go-token","Expiration":"{expire}"}}"#
    );
    let ini = format!(
        "[default]\naws_access_key_id = {key}\naws_secret_access_key = go-secret\naws_session_token = go-token\naws_expiration = {expire}\n"
    );
    let data: BTreeMap<String, ByteString> = [
        ("credentials", ini),
        (
            "credentials.process",
            "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n".into(),
        ),
        ("credentials.json", json),
        ("role-arn", arn.to_string()),
        ("expire", expire),
        ("awsiamrole-generation", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let mut s = Secret::default();
    s.metadata.name = Some(role.name_any());
    s.metadata.namespace = Some(ns.to_string());
    s.metadata.labels = Some(
        [("heritage", NAME), ("type", "awsiamrole")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    s.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "zalando.org/v1".into(),
        kind: "AWSIAMRole".into(),
        name: role.name_any(),
        uid: role.uid().expect("uid"),
        ..Default::default()
    }]);
    s.data = Some(data);
    s
}

#[tokio::test]
async fn a_go_controller_install_moves_to_the_chart_and_keeps_its_secrets_without_new_credentials()
{
    let s = scene("migration").await;
    let kc = s.env.kubeconfig.display().to_string();
    // The Go controller's install and the Secrets it wrote for two AWSIAMRoles.
    support::apply_manifest(
        &s.client,
        "tests/fixtures/go-controller-install.yaml",
        None,
        false,
    )
    .await;
    let mut written = BTreeMap::new();
    for name in ["app-one", "app-two"] {
        let r = s
            .roles
            .create(&PostParams::default(), &role(name, name, 3600))
            .await
            .expect("create role");
        let secret = s
            .secrets
            .create(
                &PostParams::default(),
                &go_secret(&r, &s.ns, &format!("{}{name}", support::BASE_ROLE_ARN)),
            )
            .await
            .expect("Go-written Secret");
        written.insert(name, secret);
    }

    // The documented steps, each carried out as written (kubectl steps through the API).
    let steps = documented_steps();
    let sts = StsDouble::start().await;
    let expected = [
        "kubectl apply --server-side --force-conflicts -f charts/kube-aws-iam-controller/crds/awsiamroles.zalando.org.yaml",
        "kubectl -n kube-system delete deployment kube-aws-iam-controller",
        "kubectl delete clusterrolebinding kube-aws-iam-controller",
        "kubectl delete clusterrole kube-aws-iam-controller",
        "kubectl -n kube-system delete serviceaccount kube-aws-iam-controller",
        "helm install kube-aws-iam-controller charts/kube-aws-iam-controller --namespace kube-system --set baseRoleARN=arn:aws:iam::123456789012:role/ --set namespacePolicy=none",
    ];
    assert_eq!(
        steps, expected,
        "docs/migration.md's steps changed: update this test"
    );

    // 1. Take over the CRD (Helm does not upgrade an existing CRD from crds/).
    support::apply_manifest(
        &s.client,
        "charts/kube-aws-iam-controller/crds/awsiamroles.zalando.org.yaml",
        None,
        false,
    )
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client.clone());
    let crd = crds.get("awsiamroles.zalando.org").await.expect("crd");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    assert!(
        schema.to_string().contains("policyARNs"),
        "the chart's CRD schema is in place"
    );
    // 2. and 3. The Go Deployment and RBAC go (Helm refuses objects it did not create).
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), "kube-system");
    deployments
        .delete(NAME, &DeleteParams::default())
        .await
        .expect("delete Go Deployment");
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(s.client.clone());
    crbs.delete(NAME, &DeleteParams::default())
        .await
        .expect("delete");
    let crs: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(s.client.clone());
    crs.delete(NAME, &DeleteParams::default())
        .await
        .expect("delete");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(s.client.clone(), "kube-system");
    sas.delete(NAME, &DeleteParams::default())
        .await
        .expect("delete");
    // 4. helm install, as written; the test adds its cluster and STS endpoint.
    let mut args: Vec<String> = steps[5]
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    let port = support::free_port();
    args.extend([
        "--kubeconfig".into(),
        kc.clone(),
        "--set".into(),
        format!("adminPort={port}"),
        "--set".into(),
        format!("sts.endpoint={}", sts.endpoint),
        "--set".into(),
        "sts.region=us-east-1".into(),
        "--set-string".into(),
        "extraEnv[0].name=AWS_ACCESS_KEY_ID".into(),
        "--set-string".into(),
        "extraEnv[0].value=AKIDCONTROLLER000000".into(),
        "--set-string".into(),
        "extraEnv[1].name=AWS_SECRET_ACCESS_KEY".into(),
        "--set-string".into(),
        "extraEnv[1].value=controller-secret".into(),
        "--set-string".into(),
        "extraEnv[2].name=AWS_EC2_METADATA_DISABLED".into(),
        "--set-string".into(),
        "extraEnv[2].value=true".into(),
    ]);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helm_ok(&arg_refs);

    // The chart's controller, as its Deployment runs it, adopts both Secrets.
    let manifest = helm_ok(&[
        "get",
        "manifest",
        NAME,
        "--namespace",
        "kube-system",
        "--kubeconfig",
        &kc,
    ]);
    let d = deployment(&manifest);
    let pod = Pod {
        env: s.env,
        client: &s.client,
        namespace: "kube-system",
        name: "migrated-0",
        deployment: &d,
        volumes: BTreeMap::new(),
        entrypoint: Entrypoint::Binary,
    };
    let bin = pod.run().await;
    wait_for_probes(container(&d)).await;
    for (name, before) in &written {
        wait_for(&format!("{name} Ready after the move"), || async {
            let r = s.roles.get(name).await.ok()?;
            (r.ready_condition()?.status == "True").then_some(())
        })
        .await;
        let after = s.secrets.get(name).await.expect("secret");
        assert_eq!(
            after.data.as_ref().map(|d| &d["credentials.json"]),
            before.data.as_ref().map(|d| &d["credentials.json"]),
            "{name}: the Go controller's credentials are kept"
        );
    }
    // The controller asks STS who it is once at start-up (it never issues its own role); it
    // assumes nothing for valid Go credentials.
    let assumed: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.action != "GetCallerIdentity")
        .collect();
    assert!(
        assumed.is_empty(),
        "no AssumeRole for valid Go credentials: {assumed:?}"
    );
    let logs = bin.logs();
    assert!(!logs.contains("forbidden"), "{logs}");
    bin.kill();
}
