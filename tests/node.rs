//! The controller as users run it, on a real single-node cluster (tests/support/node.rs):
//! the chart installed with `helm install` as the README says, the image from
//! scripts/build-image.sh, app pods from images of registry packages (scripts/build-node-images.sh),
//! the kubelet laying out and updating Secret volumes, kube-proxy routing Services, the
//! scheduler and the controller manager (garbage collector included) running.
//!
//! One test, one cluster: the test runs again inside network, mount and PID namespaces of its
//! own (`support::node::run_contained`), brings the node up once and walks through the
//! scenarios in order, each printing what it measured.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use support::BASE_ROLE_ARN;
use support::helm::{CHART, helm_ok};
use support::node::{self, NODE_IP, Node};
use support::sts_double::StsDouble;

/// The release and namespace of the README's `helm install`.
const RELEASE: &str = "kube-aws-iam-controller";
const SYSTEM: &str = "kube-system";
const IMAGE_REPOSITORY: &str = "kaic.local/kube-aws-iam-controller";
const IMAGE_TAG: &str = "test";

/// The image built by scripts/build-image.sh (test.sh passes KAIC_IMAGE_DIR).
fn controller_image_layout() -> std::path::PathBuf {
    let dir = std::env::var_os("KAIC_IMAGE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let out = std::process::Command::new(support::repo().join("scripts/build-image.sh"))
                .arg(support::repo().join("target/image"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("scripts/build-image.sh runs");
            assert!(out.status.success(), "scripts/build-image.sh failed");
            std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
    dir.join("oci")
}

/// Waits up to `secs` for `check` to give a value, polling every 500 ms.
async fn within<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The controller's pods (the chart's selector labels).
async fn controller_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    pods.list(&ListParams::default().labels("app.kubernetes.io/name=kube-aws-iam-controller"))
        .await
        .expect("list controller pods")
        .items
}

async fn logs(client: &Client, ns: &str, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.logs(pod, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("<no logs: {e}>"))
}

/// (a) `helm install` as the README says, with values only for the image and the STS endpoint
/// reachable from the namespace (and the credentials the controller signs its STS calls with,
/// which a real cluster gives through the node's role or IRSA).
async fn install(node: &Node, sts: &StsDouble) {
    let client = node.client().await;
    let started = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "controller-aws-credentials"},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": "AKIDCONTROLLER000000",
                    "AWS_SECRET_ACCESS_KEY": "controller-secret",
                },
            }))
            .expect("secret"),
        )
        .await
        .expect("create the controller's AWS credentials");
    let env = json!([
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "controller-aws-credentials", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "controller-aws-credentials", "key": "AWS_SECRET_ACCESS_KEY"}}},
    ]);
    let kubeconfig = node.env.kubeconfig.display().to_string();
    helm_ok(&[
        "install",
        RELEASE,
        CHART,
        "--namespace",
        SYSTEM,
        "--set",
        &format!("baseRoleARN={BASE_ROLE_ARN}"),
        "--set",
        &format!("image.repository={IMAGE_REPOSITORY}"),
        "--set",
        &format!("image.tag={IMAGE_TAG}"),
        "--set",
        &format!("sts.endpoint={}", sts.endpoint),
        "--set",
        "sts.region=us-east-1",
        "--set-json",
        &format!("extraEnv={env}"),
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout=60s",
    ]);
    let installed = started.elapsed();
    let pods = controller_pods(&client).await;
    assert_eq!(pods.len(), 2, "two replicas: {:?}", node::names(&pods));
    for p in &pods {
        assert!(ready(p), "{} Ready by the kubelet's probes", p.name_any());
        let sc = p.spec.as_ref().expect("spec").containers[0]
            .security_context
            .clone()
            .expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let holder = within(60, "a replica to hold the Lease", || async {
        leases
            .get_opt(RELEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    })
    .await;
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    assert!(
        names.contains(&holder),
        "the Lease holder {holder} is one of {names:?}"
    );
    for p in &names {
        let text = logs(&client, SYSTEM, p).await;
        assert!(
            !text.to_lowercase().contains("forbidden"),
            "{p} logged a forbidden request:\n{text}"
        );
    }
    println!(
        "(a) helm install --wait: {} ms; replicas {names:?} Ready; leader {holder}; no forbidden",
        installed.as_millis()
    );
}

#[test]
fn the_chart_serves_real_pods_on_a_real_node() {
    if !node::inside() {
        node::run_contained("the_chart_serves_real_pods_on_a_real_node");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let node = std::sync::Arc::new(Node::start().await);
            let run = tokio::spawn(scenarios(std::sync::Arc::clone(&node))).await;
            if let Err(e) = run {
                println!("a scenario failed; the cluster:\n{}", node.diagnose().await);
                std::panic::resume_unwind(e.into_panic());
            }
        });
}

async fn scenarios(node: std::sync::Arc<Node>) {
    {
        {
            let started = Instant::now();
            node.import_layout(
                &controller_image_layout(),
                &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
            );
            println!(
                "node: images imported in {} ms",
                started.elapsed().as_millis()
            );
            let sts = StsDouble::start_on(NODE_IP).await;
            install(&node, &sts).await;
        }
    }
}
