//! The Helm chart, proven with Helm itself and the real API server: lint, the values schema, a
//! matrix of values dry-run applied, install and upgrade, the plain manifests rendered from it,
//! and a contract test that runs the binary exactly as the rendered Deployment says.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use support::helm::{CHART, helm, helm_ok, helm_path, template};
use support::pod::{Entrypoint, Pod, container, deployment, wait_for_probes};
use support::{Env, data, role, scene, wait_for};

/// Every values file the chart is checked with: its defaults and each file in ci/.
fn values_files() -> Vec<Option<String>> {
    let mut files: Vec<Option<String>> = std::fs::read_dir(support::repo().join(CHART).join("ci"))
        .expect("chart ci/")
        .map(|e| {
            Some(format!(
                "{CHART}/ci/{}",
                e.expect("entry").file_name().to_string_lossy()
            ))
        })
        .collect();
    files.sort();
    files.insert(0, None);
    files
}

#[test]
fn helm_lint_passes_for_every_values_file() {
    for file in values_files() {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(f) = &file {
            args.extend(["--values", f]);
        }
        helm_ok(&args);
    }
}

#[test]
fn the_values_schema_rejects_wrong_values_with_a_message() {
    for (set, says) in [
        ("replicas=0", "replicas"),
        ("replica=2", "replica"),
        ("baseRoleARN=my-role", "baseRoleARN"),
        ("sts.qps=-1", "qps"),
        ("adminPort=70000", "adminPort"),
        ("logFormat=xml", "logFormat"),
        ("image.digest=latest", "digest"),
        ("leaderElection.leaseDuration=soon", "leaseDuration"),
        ("extraArgs[0]=verbose", "extraArgs"),
    ] {
        let out = helm(&["template", "x", CHART, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            err.contains("schema") && err.contains(says),
            "{set}: the error does not name {says}:\n{err}"
        );
    }
    // A rule the schema cannot express: more than one replica without a leader.
    let out = helm(&[
        "template",
        "x",
        CHART,
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs leaderElection.enabled"));
}

#[test]
fn the_chart_version_follows_the_crate() {
    let chart = std::fs::read_to_string(support::repo().join(CHART).join("Chart.yaml"))
        .expect("Chart.yaml");
    let chart: serde_json::Value = serde_yaml::from_str(&chart).expect("yaml");
    let crate_version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"], crate_version);
    assert_eq!(chart["appVersion"], crate_version);
}

#[tokio::test]
async fn every_values_file_renders_objects_the_api_server_accepts() {
    let s = scene("chart-matrix").await;
    install_monitoring_crds(&s.client).await;
    // The namespace that ci/all-options-values.yaml watches.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client.clone());
    let mut team = k8s_openapi::api::core::v1::Namespace::default();
    team.metadata.name = Some("team-a".into());
    let _ = namespaces.create(&PostParams::default(), &team).await;
    for file in values_files() {
        let mut extra = vec![];
        if let Some(f) = &file {
            extra.extend(["--values", f.as_str()]);
        }
        let rendered = template("kaic-matrix", &s.ns, &extra);
        let what = file.as_deref().unwrap_or("default values");
        support::apply_yaml(&s.client, &rendered, what, Some(&s.ns), true).await;
        // The Deployment's pods are hardened whatever the values.
        let d = deployment(&rendered);
        let pod = d.spec.template.spec.expect("pod spec");
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .clone()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()]),
            "{what}"
        );
        let psc = pod.security_context.expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{what}");
        assert_eq!(
            psc.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".to_string()),
            "{what}"
        );
    }
}

/// The Prometheus Operator's CRDs (scripts/monitoring-crds.sh), for the ServiceMonitor and
/// PrometheusRule the chart renders.
async fn install_monitoring_crds(client: &kube::Client) {
    let out = Command::new(support::repo().join("scripts/monitoring-crds.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/monitoring-crds.sh runs");
    assert!(out.status.success(), "scripts/monitoring-crds.sh failed");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for f in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).expect("crd");
        support::apply_yaml(client, &text, f, None, false).await;
    }
    let ar = kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PrometheusRule",
    ));
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    wait_for("the monitoring CRDs to be served", || async {
        api.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
}

#[test]
fn deploy_manifests_are_rendered_from_the_chart() {
    let out = tempfile::tempdir().expect("tmp");
    let status = Command::new(support::repo().join("scripts/render-manifests.sh"))
        .arg(out.path())
        .env("HELM", helm_path())
        .status()
        .expect("scripts/render-manifests.sh runs");
    assert!(status.success());
    for file in [
        "deploy/rbac.yaml",
        "deploy/deployment.yaml",
        "deploy/deployment-with-role.yaml",
        "deploy/webhook.yaml",
        "deploy/webhook-rbac.yaml",
        "deploy/serviceaccount-binding.yaml",
        "charts/kube-aws-iam-controller/crds/awsiamroles.zalando.org.yaml",
        "charts/kube-aws-iam-controller/files/alerts.yaml",
    ] {
        let fresh = std::fs::read_to_string(out.path().join(file)).expect("rendered");
        let committed = std::fs::read_to_string(support::repo().join(file)).unwrap_or_default();
        assert!(
            fresh == committed,
            "{file} differs from what the chart renders: run scripts/render-manifests.sh"
        );
    }
}

fn kubeconfig(env: &Env) -> String {
    env.kubeconfig.display().to_string()
}

#[tokio::test]
async fn helm_installs_and_upgrades_the_chart_on_the_api_server() {
    let s = scene("chart-install").await;
    let kc = kubeconfig(s.env);
    let release = format!("kube-aws-iam-controller-{}", support::rand_suffix());
    helm_ok(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let d = deployments
        .get(&release)
        .await
        .expect("installed Deployment");
    assert_eq!(d.spec.replicas, Some(2));
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), &s.ns);
    sas.get(&release).await.expect("installed ServiceAccount");

    helm_ok(&[
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
        "--set",
        "replicas=3",
        "--set",
        "baseRoleARN=arn:aws:iam::123456789012:role/",
    ]);
    let d = deployments
        .get(&release)
        .await
        .expect("upgraded Deployment");
    assert_eq!(d.spec.replicas, Some(3));
    let args = container(&d).args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--base-role-arn=arn:aws:iam::123456789012:role/".to_string()),
        "{args:?}"
    );
    let status = helm_ok(&[
        "status",
        &release,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
    assert!(status.contains("deployed"), "{status}");
    let history = helm_ok(&[
        "history",
        &release,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
    assert!(history.lines().count() >= 3, "two revisions:\n{history}");
    helm_ok(&[
        "uninstall",
        &release,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
    wait_for("Deployment removed by uninstall", || async {
        matches!(deployments.get_opt(&release).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_rendered_deployment_runs_as_the_binary_and_issues_a_secret() {
    let s = scene("chart-contract").await;
    let release = format!("kube-aws-iam-controller-{}", support::rand_suffix());
    let port = support::free_port().to_string();
    let sets = [
        format!("adminPort={port}"),
        format!("sts.endpoint={}", s.env.moto_endpoint),
        "sts.region=us-east-1".into(),
        format!("baseRoleARN={}", support::BASE_ROLE_ARN),
        "extraEnv[0].name=AWS_ACCESS_KEY_ID".into(),
        "extraEnv[0].value=AKIDCONTROLLER000000".into(),
        "extraEnv[1].name=AWS_SECRET_ACCESS_KEY".into(),
        "extraEnv[1].value=controller-secret".into(),
        "extraEnv[2].name=AWS_EC2_METADATA_DISABLED".into(),
        "extraEnv[2].value=true".into(),
    ];
    let mut args = vec!["install", &release, CHART, "--namespace", &s.ns];
    let kc = kubeconfig(s.env);
    args.extend(["--kubeconfig", &kc]);
    for set in &sets {
        // Environment values stay strings ("true" would become a boolean with --set).
        let flag = if set.starts_with("extraEnv") {
            "--set-string"
        } else {
            "--set"
        };
        args.extend([flag, set]);
    }
    helm_ok(&args);
    let manifest = helm_ok(&[
        "get",
        "manifest",
        &release,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
    let d = deployment(&manifest);
    let pod = Pod {
        env: s.env,
        client: &s.client,
        namespace: &s.ns,
        name: &format!("{release}-0"),
        deployment: &d,
        volumes: BTreeMap::new(),
        entrypoint: Entrypoint::Binary,
    };
    let bin = pod.run().await;
    wait_for_probes(container(&d)).await;
    let annotations = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let scrape_port: u16 = annotations["prometheus.io/port"].parse().expect("port");
    let metrics = support::http_get(scrape_port, &annotations["prometheus.io/path"])
        .await
        .expect("metrics");
    assert!(metrics.starts_with("200"), "{metrics}");
    wait_for("leader as the chart's ServiceAccount", || async {
        (bin.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;

    s.roles
        .create(
            &PostParams::default(),
            &role("chart-app", "chart-app", 3600),
        )
        .await
        .expect("create");
    let secret = wait_for("secret issued", || async {
        s.secrets.get_opt("chart-app").await.ok().flatten()
    })
    .await;
    assert_eq!(
        data(&secret, "role-arn"),
        format!("{}chart-app", support::BASE_ROLE_ARN)
    );
    let logs = bin.logs();
    assert!(
        !logs.contains("forbidden"),
        "RBAC denied something:\n{logs}"
    );
    bin.kill();
    helm_ok(&[
        "uninstall",
        &release,
        "--namespace",
        &s.ns,
        "--kubeconfig",
        &kc,
    ]);
}
