//! The controller cut off its API server while etcd's history moves on and is compacted, so its
//! watches cannot resume (410 Gone) and must relist: after an API server restart, and after a
//! network cut (a TCP proxy between controller and API server) during which roles are created,
//! changed and deleted. A test binary of its own: it restarts the API server its tests share,
//! and runs it without the watch cache, so that watches are served from etcd and its
//! compaction, not the cache's size, decides when a resumed watch gets 410.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::proxy::CutProxy;
use support::sts_double::StsDouble;
use support::{
    BASE_ROLE_ARN, Controller, compact_etcd, data, env_with, role, sts_issuer, wait_for,
};

const APISERVER_FLAGS: &[&str] = &["--watch-cache=false"];

/// One test at a time: one restarts the API server, the other compacts etcd.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The value of a counter sample `name{labels}` in a Prometheus text rendering (0 if absent).
fn counter(rendered: &str, sample: &str) -> f64 {
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Writes an object nobody watches, so that etcd's revision moves past everything the
/// controller has seen and compaction removes the history its watches would resume from.
async fn move_history_on(client: &kube::Client, ns: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut cm = ConfigMap::default();
    cm.metadata.generate_name = Some("history-".into());
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create ConfigMap");
}

#[tokio::test]
async fn controller_recovers_from_an_api_server_restart_without_reissuing() {
    let _serial = SERIAL.lock().await;
    let env = env_with(APISERVER_FLAGS).await;
    let client = env.client().await;
    let ns = env.namespace(&client, "restart-api").await;
    let sts = StsDouble::start().await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
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
        // The status write is the controller's last write for the role (its Event may land
        // before it): history moves on only after it, so the watch's resourceVersion is
        // compacted away for sure.
        support::ready_role(&roles, name, "True", None).await;
    }
    assert_eq!(sts.total_calls(), 2);
    let metrics = ctl.ctx.metrics.clone();
    let expired = r#"kaic_watch_expired_total{resource="awsiamroles"}"#;
    let relists = r#"kaic_watch_relists_total{resource="awsiamroles"}"#;
    assert_eq!(counter(&metrics.render(), expired), 0.0);

    move_history_on(&client, &ns).await;
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
    // What the test claims to survive did happen: the resumed watch got 410 and relisted.
    let rendered = metrics.render();
    assert!(
        counter(&rendered, expired) >= 1.0,
        "no 410 Gone was seen:\n{rendered}"
    );
    assert!(counter(&rendered, relists) >= 1.0, "no relist:\n{rendered}");
    assert_eq!(
        sts.total_calls(),
        3,
        "no STS call for the credentials that are still valid"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn after_a_network_cut_past_compaction_the_controller_relists_and_converges() {
    let _serial = SERIAL.lock().await;
    let env = env_with(APISERVER_FLAGS).await;
    let admin = env.client().await;
    let ns = env.namespace(&admin, "net-cut").await;
    let sts = StsDouble::start().await;
    let proxy = CutProxy::start(env.api_addr()).await;
    let ctl = Controller::builder(&env.client_through(&proxy), &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    for name in ["kept", "changed", "deleted"] {
        roles
            .create(&PostParams::default(), &role(name, name, 3600))
            .await
            .expect("create");
        wait_for(name, || async {
            secrets.get_opt(name).await.ok().flatten()
        })
        .await;
    }
    let metrics = ctl.ctx.metrics.clone();

    proxy.cut();
    // While the controller is cut off: one role deleted, one changed, one created.
    roles
        .delete("deleted", &DeleteParams::default())
        .await
        .expect("delete");
    roles
        .patch(
            "changed",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"roleReference": "changed-v2"}})),
        )
        .await
        .expect("change");
    roles
        .create(&PostParams::default(), &role("created", "created", 3600))
        .await
        .expect("create while cut");
    move_history_on(&admin, &ns).await;
    // Longer than the compaction window: the history the controller's watches would resume
    // from is gone.
    compact_etcd(&env.etcd_url).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        secrets.get_opt("created").await.expect("get").is_none(),
        "the controller reached the API server through the cut"
    );
    assert_eq!(sts.assume_role_calls(&format!("{BASE_ROLE_ARN}created")), 0);

    let restored = Instant::now();
    proxy.restore();
    wait_for("the controller to catch up with the changes", || async {
        let gone = secrets.get_opt("deleted").await.ok()?.is_none();
        let changed = secrets.get_opt("changed").await.ok()??;
        let created = secrets.get_opt("created").await.ok()??;
        (gone
            && data(&changed, "role-arn") == format!("{BASE_ROLE_ARN}changed-v2")
            && data(&created, "role-arn") == format!("{BASE_ROLE_ARN}created"))
        .then_some(())
    })
    .await;
    let converged = restored.elapsed();
    println!(
        "converged {:.1} s after the network was restored",
        converged.as_secs_f64()
    );

    // Each watch comes back at the end of its own backoff: one may converge the controller
    // (the AWSIAMRoles' relist reconciles every role) before the other is back.
    for resource in ["awsiamroles", "secrets"] {
        let expired = format!(r#"kaic_watch_expired_total{{resource="{resource}"}}"#);
        let relists = format!(r#"kaic_watch_relists_total{{resource="{resource}"}}"#);
        wait_for("the watch to get 410 Gone and relist", || async {
            let rendered = metrics.render();
            (counter(&rendered, &expired) >= 1.0 && counter(&rendered, &relists) >= 1.0)
                .then_some(())
        })
        .await;
    }
    // The unchanged role's credentials were not re-issued.
    assert_eq!(sts.assume_role_calls(&format!("{BASE_ROLE_ARN}kept")), 1);
    ctl.stop().await;
}
