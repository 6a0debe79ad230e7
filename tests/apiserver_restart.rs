//! The API server restarted (etcd keeps the data, its history compacted so resumed watches
//! get 410 Gone): the controller recovers without re-issuing credentials that are still valid.
//! A test binary of its own: it restarts the API server its tests share.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{env, role, run_controller, sts_issuer, test_settings, wait_for};

#[tokio::test]
async fn controller_recovers_from_an_api_server_restart_without_reissuing() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "restart-api").await;
    let sts = StsDouble::start().await;
    let ctl = run_controller(&client, &ns, sts_issuer(&sts.endpoint), test_settings()).await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in ["before-one", "before-two"] {
        roles
            .create(&PostParams::default(), &role(name, name, 3600))
            .await
            .expect("create");
        wait_for(name, || async {
            secrets.get_opt(name).await.ok().flatten()
        })
        .await;
    }
    assert_eq!(sts.total_calls(), 2);

    env.restart_apiserver().await;

    let client = env.client().await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("after", "after", 3600))
        .await
        .expect("create after restart");
    wait_for("a Secret for a role created after the restart", || async {
        secrets.get_opt("after").await.ok().flatten()
    })
    .await;
    assert_eq!(
        sts.total_calls(),
        3,
        "no STS call for the credentials that are still valid"
    );
    ctl.stop().await;
}
