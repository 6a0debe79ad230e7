//! With the real garbage collector (kube-controller-manager from scripts/build-node.sh) running
//! against the local control plane: what `helm uninstall` leaves behind.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use kube_aws_iam_controller::webhook::certs::Lifetimes;
use kube_aws_iam_controller::webhook::{self, Settings, TlsSource};
use support::{wait_for, wait_for_within};

/// Issue 25: `helm uninstall` left the webhook's TLS Secret behind, since the replicas lose their
/// RBAC at the same moment as they are told to stop. The Secret is now owned by the webhook
/// configuration, so the garbage collector removes it with the configuration. (Failed on the
/// old code: the Secret had no owner and stayed.)
#[tokio::test]
async fn the_webhook_certificate_secret_goes_with_its_configuration() {
    let s = support::scene("gc-tls").await;
    let gc_log = support::node::garbage_collector(s.env).await;
    let name = format!("kaic-gc-{}", s.ns);
    let settings = Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        namespace: s.ns.clone(),
        secret: "webhook-tls".into(),
        configuration: name.clone(),
        sans: vec!["127.0.0.1".into()],
        tls: TlsSource::SelfManaged(Lifetimes {
            ca: Duration::from_secs(365 * 24 * 3600),
            serving: Duration::from_secs(30 * 24 * 3600),
            overlap: Duration::from_secs(2),
        }),
        region: None,
        watch_namespace: Some(s.ns.clone()),
        check_interval: Duration::from_millis(300),
        delivery: Default::default(),
    };
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(s.client.clone());
    // As Helm installs it: no caBundle, a service reference (never called here: no pod opts in).
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pod-role.aws-iam.zalando.org",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "kaic-webhook", "namespace": s.ns, "path": "/mutate"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"kaic-gc-test": s.ns}}
        }]
    }))
    .expect("configuration");
    let created = mwcs
        .create(&PostParams::default(), &mwc)
        .await
        .expect("create configuration");
    let hook = webhook::start(
        s.client.clone(),
        settings,
        Arc::new(kube_aws_iam_controller::metrics::Metrics::new()),
        Arc::new(|| true),
        None,
        None,
    )
    .await
    .expect("webhook starts");
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let uid = created.metadata.uid.clone().expect("uid");
    wait_for("the TLS Secret owned by the configuration", || {
        let (secrets, uid) = (secrets.clone(), uid.clone());
        async move {
            let secret = secrets.get_opt("webhook-tls").await.ok().flatten()?;
            secret
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.kind == "MutatingWebhookConfiguration")
                .then_some(())
        }
    })
    .await;
    // helm uninstall: the replicas stop (and, their RBAC gone, could not clean up anyway).
    drop(hook);
    let deleted = std::time::Instant::now();
    mwcs.delete(&name, &DeleteParams::default())
        .await
        .expect("delete configuration");
    wait_for_within(
        "the garbage collector to delete the TLS Secret",
        Duration::from_secs(120),
        || {
            let secrets = secrets.clone();
            async move {
                match secrets.get_opt("webhook-tls").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    let took = deleted.elapsed();
    let log = std::fs::read_to_string(gc_log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("Deleting item") && l.contains("webhook-tls") && l.contains(&s.ns)),
        "the garbage collector did not delete the Secret:\n{log}"
    );
    println!(
        "TLS Secret deleted by the garbage collector {:.2}s after its configuration (log: {})",
        took.as_secs_f64(),
        gc_log.display()
    );
}
