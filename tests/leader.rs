//! Leadership always recovers: two replicas of the built binary run as the shipped
//! ServiceAccount, and the Lease RoleBinding is removed for a window shorter than one renewal
//! period, about one, and longer than the lease, then restored. Never two leaders at once; after
//! each window exactly one replica leads and issues again. A test binary of its own: it uses the
//! Lease in kube-system that the shipped RBAC grants.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, PostParams};

use support::sts_double::StsDouble;
use support::{Binary, Launch, env, role, start_binary_with, wait_for};

const ARN_PREFIX: &str = "arn:aws:iam::123456789012:role/";
const BINDING: &str = "kube-aws-iam-controller-lease";

/// Which replicas report `kaic_leader 1`; panics on two at once.
async fn leaders(bins: &[&Binary]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, b) in bins.iter().enumerate() {
        if b.metric("kaic_leader").await == Some(1.0) {
            out.push(i);
        }
    }
    assert!(out.len() <= 1, "two leaders at once: {out:?}");
    out
}

/// Samples the replicas until `end`, failing on two leaders at once.
async fn watch_until(bins: &[&Binary], end: Instant) -> Vec<Vec<usize>> {
    let mut samples = Vec::new();
    while Instant::now() < end {
        samples.push(leaders(bins).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples
}

#[tokio::test]
async fn leadership_recovers_after_lease_rbac_outages_of_any_length() {
    let env = env().await;
    let admin = env.client().await;
    support::apply_manifest(&admin, "deploy/rbac.yaml", None, false).await;
    let kubeconfig =
        support::sa_kubeconfig(env, &admin, "kube-system", "kube-aws-iam-controller").await;
    let ns = env.namespace(&admin, "leader").await;
    let sts = StsDouble::start().await;
    let roles = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "kube-system");
    let binding = bindings
        .get(BINDING)
        .await
        .expect("the shipped RoleBinding");

    // Renewal every 4 s, renew deadline 5 s, lease 6 s.
    let flags = [
        "--lease-namespace=kube-system",
        "--lease-duration=6s",
        "--lease-grace=2s",
    ];
    let launch = Launch {
        kubeconfig: Some(kubeconfig),
        ..Launch::default()
    };
    let a = start_binary_with(env, &ns, &sts.endpoint, &flags, launch.clone()).await;
    let b = start_binary_with(env, &ns, &sts.endpoint, &flags, launch).await;
    let bins = [&a, &b];
    wait_for("a leader", || async { leaders(&bins).await.pop() }).await;

    let windows = [
        (
            "shorter than one renewal period",
            Duration::from_millis(1_500),
        ),
        ("about one renewal period", Duration::from_secs(5)),
        ("longer than the lease", Duration::from_secs(15)),
    ];
    for (i, (what, window)) in windows.iter().enumerate() {
        watch_until(&bins, Instant::now() + Duration::from_secs(2)).await;
        let leader_before = leaders(&bins).await.pop();
        bindings
            .delete(BINDING, &DeleteParams::default())
            .await
            .expect("remove the lease RoleBinding");
        let samples = watch_until(&bins, Instant::now() + *window).await;
        if *window > Duration::from_secs(6) {
            // The leader could not renew: it stopped acting before its Lease could expire.
            assert!(
                samples.last().is_some_and(Vec::is_empty),
                "{what}: still a leader at the end of the outage"
            );
            // And it no longer reports role gauges that alerts would read.
            let former = bins[leader_before.expect("a leader before the outage")];
            let text = former.admin("/metrics").await;
            assert_eq!(
                support::metric(&text, "kaic_awsiamroles{ready=\"true\"}"),
                0.0,
                "{what}: a replica that stopped leading still reports its roles"
            );
        }
        let mut restored = binding.clone();
        restored.metadata.resource_version = None;
        restored.metadata.uid = None;
        restored.metadata.creation_timestamp = None;
        restored.metadata.managed_fields = None;
        bindings
            .create(&PostParams::default(), &restored)
            .await
            .expect("restore the lease RoleBinding");
        let back = Instant::now();
        wait_for(&format!("{what}: a leader again"), || async {
            leaders(&bins).await.pop()
        })
        .await;
        let recovered = back.elapsed();
        // The leader acts: a new AWSIAMRole is issued for, exactly once.
        let name = format!("after-{i}");
        roles
            .create(&PostParams::default(), &role(&name, &name, 3600))
            .await
            .expect("create");
        wait_for(&format!("{what}: {name} issued"), || async {
            secrets.get_opt(&name).await.ok().flatten()
        })
        .await;
        watch_until(&bins, Instant::now() + Duration::from_secs(2)).await;
        assert_eq!(
            sts.assume_role_calls(&format!("{ARN_PREFIX}{name}")),
            1,
            "{what}: issued by one replica, once"
        );
        eprintln!("lease RBAC removed {window:?} ({what}): a leader again after {recovered:?}");
    }
    // The outages were real: the replicas were refused.
    let logs = format!("{}{}", a.logs(), b.logs());
    assert!(
        logs.contains("forbidden"),
        "no refused Lease call in:\n{logs}"
    );
    a.kill();
    b.kill();
}
