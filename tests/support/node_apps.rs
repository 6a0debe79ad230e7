//! What users do on the real node (tests/support/node.rs), shared by tests/node.rs and the
//! demo (examples/local_demo.rs): the chart installed with `helm install` as the README says,
//! the images imported, namespaces, AWSIAMRoles and app Deployments, and reading pods.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use kube_aws_iam_controller::crd::AWSIAMRole;

use super::BASE_ROLE_ARN;
use super::helm::{CHART, helm_ok};
use super::node::{self, Node};
use super::sts_double::StsDouble;

/// The release and namespace of the README's `helm install`.
pub const RELEASE: &str = "kube-aws-iam-controller";

pub const SYSTEM: &str = "kube-system";

pub const IMAGE_REPOSITORY: &str = "kaic.local/kube-aws-iam-controller";

pub const IMAGE_TAG: &str = "test";

/// The long-term key the controller signs its STS calls with (one of the double's users).
pub const CONTROLLER_KEY: &str = "AKIDCONTROLLER000000";

/// The image built by scripts/build-image.sh (test.sh passes KAIC_IMAGE_DIR).
pub fn controller_image_layout() -> std::path::PathBuf {
    let dir = std::env::var_os("KAIC_IMAGE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let out = std::process::Command::new(super::repo().join("scripts/build-image.sh"))
                .arg(super::repo().join("target/image"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("scripts/build-image.sh runs");
            assert!(out.status.success(), "scripts/build-image.sh failed");
            std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
    dir.join("oci")
}

/// Waits up to `secs` for `check` to give a value, polling every 500 ms.
pub async fn within<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
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

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The controller's pods (the chart's selector labels).
pub async fn controller_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    pods.list(&ListParams::default().labels("app.kubernetes.io/name=kube-aws-iam-controller"))
        .await
        .expect("list controller pods")
        .items
}

pub async fn logs(client: &Client, ns: &str, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.logs(pod, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("<no logs: {e}>"))
}

/// (a) `helm install` as the README says, with values only for the image and the STS endpoint
/// reachable from the namespace (and the credentials the controller signs its STS calls with,
/// which a real cluster gives through the node's role or IRSA).
pub async fn install(node: &Node, sts: &StsDouble) -> Installed {
    let client = node.client().await;
    let started = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "controller-aws-credentials"},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": CONTROLLER_KEY,
                    "AWS_SECRET_ACCESS_KEY": "controller-secret",
                },
            }))
            .expect("secret"),
        )
        .await
        .map(|_| ())
        .or_else(|e| match e {
            // A reinstall: the credentials are the cluster's, not the release's.
            kube::Error::Api(s) if s.code == 409 => Ok(()),
            e => Err(e),
        })
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
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let holder = within(60, "one of the replicas to hold the Lease", || async {
        lease_holder(&leases).await.filter(|h| names.contains(h))
    })
    .await;
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
    Installed {
        took: installed,
        replicas: names,
        leader: holder,
    }
}

/// Imports the controller's image (scripts/build-image.sh) and the app images
/// (scripts/build-node-images.sh) into the node's containerd.
pub fn import_images(node: &Node) -> AppImages {
    node.import_layout(
        &controller_image_layout(),
        &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
    );
    let images = AppImages::load();
    for archive in &images.archives {
        node.import(archive);
    }
    images
}

/// The holder of the controller's Lease, if any.
pub async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(RELEASE)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// What [`install`] saw.
pub struct Installed {
    /// `helm install --wait`'s duration.
    pub took: Duration,
    pub replicas: BTreeSet<String>,
    pub leader: String,
}

/// The app images of scripts/build-node-images.sh (test.sh passes KAIC_NODE_IMAGES).
pub struct AppImages {
    pub busybox: String,
    pub awscli: String,
    pub rust_client: String,
    pub archives: Vec<std::path::PathBuf>,
}

impl AppImages {
    pub fn load() -> AppImages {
        let dir = std::env::var_os("KAIC_NODE_IMAGES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let out =
                    std::process::Command::new(super::repo().join("scripts/build-node-images.sh"))
                        .stderr(std::process::Stdio::inherit())
                        .output()
                        .expect("scripts/build-node-images.sh runs");
                assert!(out.status.success(), "scripts/build-node-images.sh failed");
                std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            });
        let vars = std::fs::read_to_string(dir.join("images.env")).expect("images.env");
        let var = |name: &str| {
            vars.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in images.env"))
                .trim()
                .to_string()
        };
        AppImages {
            busybox: var("BUSYBOX_IMAGE"),
            awscli: var("AWSCLI_IMAGE"),
            rust_client: var("RUST_CLIENT_IMAGE"),
            archives: ["busybox.tar", "awscli.tar", "rust-client.tar"]
                .iter()
                .map(|f| dir.join(f))
                .collect(),
        }
    }
}

/// A namespace whose role policy permits every role (kiam's annotation).
pub async fn namespace(client: &Client, name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {"iam.amazonaws.com/permitted": ".*"}},
            }))
            .expect("namespace"),
        )
        .await
        .expect("create namespace");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    within(60, "the namespace's default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
}

pub async fn create_role(client: &Client, ns: &str, name: &str, seconds: i64) {
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "zalando.org/v1",
                "kind": "AWSIAMRole",
                "metadata": {"name": name},
                "spec": {"roleReference": name, "roleSessionDuration": seconds},
            }))
            .expect("AWSIAMRole"),
        )
        .await
        .expect("create AWSIAMRole");
}

pub fn app_env(sts: &StsDouble) -> serde_json::Value {
    json!([
        {"name": "AWS_ENDPOINT_URL_STS", "value": sts.endpoint},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
        {"name": "AWS_REGION", "value": "us-east-1"},
    ])
}

pub fn deployment(
    name: &str,
    role: &str,
    annotations: serde_json::Value,
    container: serde_json::Value,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name, "zalando.org/aws-iam-role": role},
                    "annotations": annotations,
                },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [container],
                },
            },
        },
    }))
    .expect("deployment")
}

pub async fn app_pod(client: &Client, ns: &str, app: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .ok()?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
}

pub fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

pub fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}
