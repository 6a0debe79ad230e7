//! The whole job on a local, self-contained setup.
//!
//! By default on a real single-node cluster (tests/support/node.rs: containerd, kubelet,
//! kube-proxy, scheduler and controller manager around a real kube-apiserver and etcd, in
//! namespaces of their own): the chart installed with `helm install` as the README says, an
//! app Deployment created before its AWSIAMRole, its pod waiting for the Secret and then
//! running, and the role the AWS CLI inside it assumed.
//!
//! Where a node cannot run (not root, no cgroup v1, ...), it says what is missing and shows the
//! controller against the API server alone: a real etcd + kube-apiserver and moto's STS on
//! 127.0.0.1, the controller binary, an AWSIAMRole, its Secret, and the AWS CLI using the
//! Secret's `credentials.process` file laid out as the kubelet does. `--api-only` asks for that
//! one; `--keep` (API server alone) leaves everything running until Ctrl-C and prints how to
//! reach it.
//!
//! Run through `scripts/demo.sh`, which builds what this needs first.

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::helm::CHART;
use support::kubelet::{SecretVolume, VolumeSpec};
use support::node::{self, NODE_IP, Node};
use support::node_apps::*;
use support::sts_double::StsDouble;
use support::{aws_cli_identity, data, env, start_binary, wait_for};

#[tokio::main]
async fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    if node::inside() {
        return node_demo().await;
    }
    if keep || std::env::args().any(|a| a == "--api-only") {
        return api_demo(keep).await;
    }
    let missing = node::missing_requirement().or_else(|| {
        std::env::var_os("KAIC_NODE_DIR")
            .is_none()
            .then(|| "the node's binaries (scripts/build-node.sh failed)".to_string())
    });
    match missing {
        Some(what) => {
            println!("==> no real node on this machine: it lacks {what}");
            println!("==> showing the controller against the API server alone instead");
            api_demo(false).await
        }
        None => tokio::task::block_in_place(|| {
            node::run_contained_with("demo", &[], "");
        }),
    }
}

/// The app of the demo: the AWS CLI asking STS who it is, once a minute.
const APP_SCRIPT: &str =
    "while true; do aws sts get-caller-identity --query Arn --output text; sleep 60; done";

async fn node_demo() {
    println!(
        "==> starting a real node: etcd, kube-apiserver, containerd, kubelet, kube-proxy, scheduler, controller manager"
    );
    let node = Node::start().await;
    let images = import_images(&node);
    println!(
        "==> images imported: {IMAGE_REPOSITORY}:{IMAGE_TAG} (scripts/build-image.sh), {} (Debian + PyPI)",
        images.awscli
    );
    let sts = StsDouble::start_on(NODE_IP).await;
    println!(
        "==> helm install {RELEASE} {CHART} --namespace {SYSTEM} (STS: the project's STS double at {})",
        sts.endpoint
    );
    let installed = install(&node, &sts).await;
    println!(
        "    {} s: replicas {:?} Ready, {} leads",
        installed.took.as_secs(),
        installed.replicas,
        installed.leader
    );
    let client = node.client().await;
    let ns = "demo";
    namespace(&client, ns).await;
    let manifest = std::fs::read_to_string(support::repo().join("examples/awsiamrole.yaml"))
        .expect("examples/awsiamrole.yaml");
    let role: AWSIAMRole = serde_yaml::from_str(&manifest).expect("AWSIAMRole manifest");
    let name = role.metadata.name.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "my-app",
                &name,
                serde_json::json!({}),
                serde_json::json!({"name": "my-app", "image": images.awscli, "command": ["sh", "-c", APP_SCRIPT], "env": app_env(&sts)}),
            ),
        )
        .await
        .expect("create the app");
    println!(
        "==> Deployment {ns}/my-app created, its pod template labelled zalando.org/aws-iam-role: {name}; the AWSIAMRole does not exist yet"
    );
    let pod = within(60, "the app's pod", || async {
        let p = app_pod(&client, ns, "my-app").await?;
        waiting_reason(&p).map(|r| (p, r))
    })
    .await;
    println!(
        "    pod {}: {} (the kubelet waits for the Secret {name})",
        pod.0.name_any(),
        pod.1
    );
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    println!(
        "==> applying examples/awsiamrole.yaml:\n{}",
        manifest.trim_end()
    );
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), ns);
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create AWSIAMRole");
    let started = std::time::Instant::now();
    let arn = within(120, "the app to print its role", || async {
        let p = app_pod(&client, ns, "my-app").await?;
        let text = logs(&client, ns, &p.name_any()).await;
        text.lines()
            .find(|l| l.contains(":assumed-role/"))
            .map(str::to_string)
    })
    .await;
    println!(
        "    pod {}: Running {} s after the AWSIAMRole was created",
        pod.0.name_any(),
        started.elapsed().as_secs()
    );
    println!("==> the AWS CLI in the pod: aws sts get-caller-identity -> {arn}");
    println!("==> done (the node and everything on it stop now)");
}

async fn api_demo(keep: bool) {
    println!("==> starting etcd, kube-apiserver and moto (STS) on 127.0.0.1");
    let env = env().await;
    println!(
        "    kube-apiserver {}  (kubeconfig: {})",
        env.api_url,
        env.kubeconfig.display()
    );
    println!("    STS (moto)     {}", env.moto_endpoint);
    let client = env.client().await;
    let ns = env.namespace(&client, "demo").await;

    println!("==> starting the controller binary for namespace {ns}");
    let bin = start_binary(env, &ns, &env.moto_endpoint, &[]).await;

    let manifest = std::fs::read_to_string(support::repo().join("examples/awsiamrole.yaml"))
        .expect("examples/awsiamrole.yaml");
    let role: AWSIAMRole = serde_yaml::from_str(&manifest).expect("AWSIAMRole manifest");
    println!(
        "==> applying examples/awsiamrole.yaml:\n{}",
        manifest.trim_end()
    );
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create AWSIAMRole");
    let name = role.metadata.name.clone().unwrap_or_default();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = wait_for("the Secret", || async {
        secrets.get_opt(&name).await.ok().flatten()
    })
    .await;
    let mut keys: Vec<String> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    keys.sort();
    println!("==> Secret {ns}/{name} written with keys {keys:?}");
    println!("    role-arn: {}", data(&secret, "role-arn"));
    println!("    expire:   {}", data(&secret, "expire"));
    let status = wait_for("Ready", || async {
        roles
            .get(&name)
            .await
            .ok()
            .filter(|r| r.ready_condition().is_some_and(|c| c.status == "True"))
    })
    .await;
    let cond = status.ready_condition().cloned().expect("condition");
    println!(
        "==> AWSIAMRole status: Ready={} reason={} message={}",
        cond.status, cond.reason, cond.message
    );

    // The Secret volume as the kubelet's own code lays it out (scripts/build-kubelet-volume.sh).
    let volume = SecretVolume::start(env, &ns, &name, &VolumeSpec::default()).await;
    println!(
        "==> AWS CLI as a pod's non-root user with the volume read-only at /meta/aws-iam \
         (AWS_CONFIG_FILE=credentials.process):"
    );
    match aws_cli_identity(env, &volume.dir, &env.moto_endpoint) {
        Ok(arn) => println!("    aws sts get-caller-identity -> {arn}"),
        Err(e) => {
            eprintln!("AWS CLI failed: {e}\ncontroller log:\n{}", bin.logs());
            std::process::exit(1);
        }
    }
    if keep {
        println!(
            "==> running; Ctrl-C stops everything. kubectl: KUBECONFIG={} kubectl -n {ns} get awsiamroles",
            env.kubeconfig.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    bin.kill();
    println!("==> done");
}
