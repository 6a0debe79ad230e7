//! The shipped RBAC (deploy/rbac.yaml) is enough: the binary runs as its ServiceAccount, with a
//! token the API server signed, watches all namespaces, elects itself leader in kube-system and
//! does its whole job. A test binary of its own: it uses the cluster-wide Lease.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::{Binary, data, env, role, spawn_watched, wait_for};

#[tokio::test]
async fn the_shipped_rbac_is_enough_for_the_whole_job() {
    let env = env().await;
    let admin = env.client().await;
    support::apply_manifest(&admin, "deploy/rbac.yaml", None, false).await;
    let kubeconfig =
        support::sa_kubeconfig(env, &admin, "kube-system", "kube-aws-iam-controller").await;

    let ns = env.namespace(&admin, "rbac").await;
    let admin_port = support::free_port();
    let log = env.dir.join("controller-rbac.log");
    let child = spawn_watched(
        &support::binary_path(),
        &[
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--sts-endpoint={}", env.moto_endpoint),
            "--sts-region=us-east-1".into(),
            format!("--base-role-arn={}", support::BASE_ROLE_ARN),
            format!("--admin-addr=127.0.0.1:{admin_port}"),
            "--lease-namespace=kube-system".into(),
        ],
        &log,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDCONTROLLER000000".into()),
            ("AWS_SECRET_ACCESS_KEY", "controller-secret".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    );
    let bin = Binary {
        child,
        admin_port,
        log,
    };
    wait_for("leader and ready as the ServiceAccount", || async {
        let ready = bin.admin("/readyz").await.starts_with("200");
        (ready && bin.metric("kaic_leader").await == Some(1.0)).then_some(())
    })
    .await;

    let roles: Api<AWSIAMRole> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &role("rbac-role", "rbac-role", 3600),
        )
        .await
        .expect("create");
    let s = wait_for("secret", || async {
        secrets.get_opt("rbac-role").await.ok().flatten()
    })
    .await;
    assert_eq!(
        data(&s, "role-arn"),
        format!("{}rbac-role", support::BASE_ROLE_ARN)
    );
    wait_for("status and event written", || async {
        let r = roles.get("rbac-role").await.ok()?;
        r.ready_condition().filter(|c| c.status == "True")?;
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &ns);
        let evs = events.list(&Default::default()).await.ok()?;
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CreateCredentials"))
            .then_some(())
    })
    .await;
    roles
        .delete("rbac-role", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("secret removed", || async {
        matches!(secrets.get_opt("rbac-role").await, Ok(None)).then_some(())
    })
    .await;
    let logs = bin.logs();
    assert!(
        !logs.contains("forbidden"),
        "RBAC denied something:\n{logs}"
    );
    bin.kill();
}
