//! Without the CRD the controller neither exits nor pretends to be ready: it reports not-ready
//! and starts working as soon as the CRD is installed. A test binary of its own: it deletes the
//! CRD its API server serves.

mod support;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::{env, install_crd, role, start_binary, wait_for};

#[tokio::test]
async fn missing_crd_means_not_ready_not_exit() {
    let env = env().await;
    let client = env.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("awsiamroles.zalando.org", &DeleteParams::default())
        .await
        .expect("delete CRD");
    wait_for("the CRD to be gone", || async {
        matches!(crds.get_opt("awsiamroles.zalando.org").await, Ok(None)).then_some(())
    })
    .await;
    let ns = env.namespace(&client, "nocrd").await;
    let mut bin = start_binary(env, &ns, &env.moto_endpoint, &[]).await;
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            bin.child.try_wait().expect("status").is_none(),
            "the controller exited:\n{}",
            bin.logs()
        );
        assert!(bin.admin("/healthz").await.starts_with("200"));
        assert!(
            bin.admin("/readyz").await.starts_with("503"),
            "ready without its CRD"
        );
    }
    // SIGTERM while the watches never synced: nothing is in flight, so it exits at once
    // rather than after --shutdown-timeout.
    let idle = start_binary(env, &ns, &env.moto_endpoint, &["--shutdown-timeout=5m"]).await;
    let asked = std::time::Instant::now();
    let status = idle.signal("TERM");
    let took = asked.elapsed();
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(
        took < std::time::Duration::from_secs(60),
        "exit took {took:?}: it waited for --shutdown-timeout"
    );
    eprintln!("SIGTERM before the caches synced: exited after {took:?}");
    install_crd(&client).await;
    wait_for("ready once the CRD exists", || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("late", "late-role", 3600))
        .await
        .expect("create");
    wait_for("secret", || async {
        secrets.get_opt("late").await.ok().flatten()
    })
    .await;
    bin.kill();
}
