//! The whole job on a local, self-contained setup: a real etcd + kube-apiserver and moto's STS
//! on 127.0.0.1, the controller binary, an AWSIAMRole, its Secret, and the AWS CLI using the
//! Secret's `credentials.process` file laid out as the kubelet does.
//!
//! Run through `scripts/demo.sh`, which builds what this needs first.
//! `--keep` leaves everything running until Ctrl-C and prints how to reach it.

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::kubelet::{SecretVolume, VolumeSpec};
use support::{aws_cli_identity, data, env, start_binary, wait_for};

#[tokio::main]
async fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
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
