//! The webhook's certificate over time: the leader creates and rotates the self-managed CA and
//! serving certificate and publishes the `caBundle`; every replica follows the Secret (or, with
//! certificates from files, the files) and serves what it holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::json;
use tracing::{info, warn};

use super::certs::{self, Lifetimes, Material};
use super::{IsLeader, MANAGED_BY, Settings, TLS_SECRET_COMPONENT, material, owned, server};
use crate::metrics::Metrics;

/// The field manager of every write here (the controller's own name).
pub const MANAGER: &str = crate::controller::context::MANAGER;

/// How often a replica that does not lead looks again: it starts rotating within this long of
/// winning the election (a local flag read, no API call).
const LEADERSHIP_POLL: Duration = Duration::from_millis(200);

/// The Secret holding `m`. Owned by the webhook configuration when there is one, so the garbage
/// collector removes it with the configuration (`helm uninstall`), whose replicas can no longer
/// delete anything once the chart's RBAC is gone.
fn secret_for(
    settings: &Settings,
    m: &Material,
    resource_version: Option<String>,
    owner: Option<OwnerReference>,
) -> Secret {
    let mut data = std::collections::BTreeMap::new();
    let json = serde_json::to_vec(m).unwrap_or_default();
    data.insert(certs::STATE_KEY.to_string(), ByteString(json));
    data.insert("ca.crt".into(), ByteString(m.bundle().into_bytes()));
    if let Some(s) = &m.serving {
        data.insert("tls.crt".into(), ByteString(s.cert.clone().into_bytes()));
        data.insert("tls.key".into(), ByteString(s.key.clone().into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(
                [TLS_SECRET_COMPONENT, MANAGED_BY]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            resource_version,
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The leader's loop: create or rotate the certificate, keep the `caBundle` current. Runs as
/// soon as this replica leads (not one check interval later), then every check interval.
pub(super) async fn rotate(
    client: Client,
    settings: Settings,
    lifetimes: Lifetimes,
    is_leader: IsLeader,
) {
    loop {
        if !is_leader() {
            tokio::time::sleep(LEADERSHIP_POLL.min(settings.check_interval)).await;
            continue;
        }
        if let Err(e) = rotate_once(&client, &settings, &lifetimes, &is_leader).await {
            warn!(error = %e, "webhook certificate: will retry");
        }
        tokio::time::sleep(settings.check_interval).await;
    }
}

/// One check; leadership is checked again right before each write (a replica that lost the
/// Lease while reading or generating writes nothing).
async fn rotate_once(
    client: &Client,
    settings: &Settings,
    lifetimes: &Lifetimes,
    is_leader: &IsLeader,
) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let existing = api.get_opt(&settings.secret).await.map_err(|e| {
        format!(
            "read Secret {}/{}: {e}",
            settings.namespace, settings.secret
        )
    })?;
    let current = match &existing {
        Some(s) if !owned(s) => {
            return Err(format!(
                "Secret {}/{} exists without the label {}={}: not overwritten",
                settings.namespace, settings.secret, TLS_SECRET_COMPONENT.0, TLS_SECRET_COMPONENT.1
            ));
        }
        Some(s) => material(s).unwrap_or_default(),
        None => Material::default(),
    };
    let now = Utc::now();
    let step = certs::plan(&current, &settings.sans, now, lifetimes);
    let mut next = certs::apply(&step, &current, &settings.sans, now, lifetimes)
        .map_err(|e| format!("generate certificate: {e}"))?;
    let owner = publish_bundle(client, &settings.configuration, &next.bundle(), is_leader)
        .await
        .map_err(|e| format!("update caBundle of {}: {e}", settings.configuration))?;
    if let Some(n) = next.next_ca.as_mut()
        && n.published_at.is_none()
    {
        n.published_at = Some(now);
    }
    let want_owners: Vec<OwnerReference> = owner.iter().cloned().collect();
    let owned_as_wanted = existing.as_ref().is_some_and(|s| {
        s.metadata.owner_references.as_deref().unwrap_or_default() == want_owners.as_slice()
    });
    if next == current && owned_as_wanted {
        return Ok(());
    }
    if !is_leader() {
        return Err("no longer the leader: the certificate Secret is left as it is".into());
    }
    info!(step = ?step, secret = %settings.secret, "webhook certificate updated");
    let rv = existing.and_then(|s| s.metadata.resource_version);
    let secret = secret_for(settings, &next, rv.clone(), owner);
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let written = match rv {
        Some(_) => api.replace(&settings.secret, &pp, &secret).await,
        None => api.create(&pp, &secret).await,
    };
    written.map(|_| ()).map_err(|e| {
        format!(
            "write Secret {}/{}: {e}",
            settings.namespace, settings.secret
        )
    })
}

/// The JSON patch that sets `bundle` as the `caBundle` of every webhook of `mwc` that lacks
/// it, and nothing else; each change is guarded by a test of the webhook's name at that index,
/// so a configuration reordered meanwhile is refused rather than patched at the wrong entry.
/// `None` when every webhook has it already.
pub fn bundle_patch(mwc: &MutatingWebhookConfiguration, bundle: &str) -> Option<json_patch::Patch> {
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, w) in mwc.webhooks.iter().flatten().enumerate() {
        if w.client_config.ca_bundle.as_ref() == Some(&want) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
    }
    if ops.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::Array(ops)).ok()
}

/// Sets `bundle` as the `caBundle` of every webhook in the configuration (absent: nothing to
/// do), patching only that field: the rest of the configuration belongs to Helm (or whoever
/// installed it). Returns the configuration as the owner of the certificate's Secret.
async fn publish_bundle(
    client: &Client,
    name: &str,
    bundle: &str,
    is_leader: &IsLeader,
) -> Result<Option<OwnerReference>, String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let owner = mwc.controller_owner_ref(&()).map(|mut o| {
        // Not the Secret's controller: only its lifetime follows the configuration.
        o.controller = None;
        o.block_owner_deletion = None;
        o
    });
    let Some(patch) = bundle_patch(&mwc, bundle) else {
        return Ok(owner);
    };
    if !is_leader() {
        return Err("no longer the leader: the caBundle is left as it is".into());
    }
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &pp, &Patch::<()>::Json(patch))
        .await
        .map_err(|e| e.to_string())?;
    info!(configuration = name, "caBundle updated");
    Ok(owner)
}

/// Every replica: serve the certificate in the Secret, switching as soon as it changes.
pub(super) async fn follow_secret(
    client: Client,
    settings: Settings,
    certs: Arc<server::CertStore>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", settings.secret));
    let stream = watcher(api, config).default_backoff().applied_objects();
    tokio::pin!(stream);
    while let Some(event) = stream.next().await {
        let Ok(secret) = event else { continue };
        let Some(serving) = material(&secret).and_then(|m| m.serving) else {
            continue;
        };
        match certs.load(&serving.cert, &serving.key) {
            Ok(true) => {
                info!(issuer = %serving.issuer, not_after = %serving.not_after, "serving the webhook certificate");
                metrics.webhook_certificate_expiry(serving.not_after.timestamp() as f64);
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "webhook certificate in the Secret is unusable"),
        }
    }
}

/// File mode: re-read the files every interval and switch when they change.
pub(super) async fn follow_files(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    certs: Arc<server::CertStore>,
) {
    loop {
        match (
            tokio::fs::read_to_string(&cert).await,
            tokio::fs::read_to_string(&key).await,
        ) {
            (Ok(c), Ok(k)) => match certs.load(&c, &k) {
                Ok(true) => {
                    info!(cert = %cert.display(), "serving the webhook certificate from files")
                }
                Ok(false) => {}
                // A half-written pair (certificate updated, key not yet): the next read fixes it.
                Err(e) => {
                    warn!(error = %e, "webhook certificate files unusable; keeping the last good ones")
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot read the webhook certificate files")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_patch_touches_only_the_ca_bundles_that_differ() {
        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "kaic"},
            "webhooks": [
                {"name": "a.example.org", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "failurePolicy": "Fail", "clientConfig": {"caBundle": "QUJD"}},
                {"name": "b.example.org", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "s", "namespace": "n"}}}
            ]
        }))
        .expect("configuration");
        let patch =
            serde_json::to_value(bundle_patch(&mwc, "ABC").expect("b lacks it")).expect("json");
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b.example.org"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "QUJD"}
            ])
        );
        let patch =
            serde_json::to_value(bundle_patch(&mwc, "new").expect("both differ")).expect("json");
        let paths: Vec<&str> = patch
            .as_array()
            .expect("ops")
            .iter()
            .filter_map(|o| o["path"].as_str())
            .collect();
        assert!(
            paths
                .iter()
                .all(|p| p.ends_with("/name") || p.ends_with("/clientConfig/caBundle")),
            "{paths:?}"
        );
        let mut done = mwc.clone();
        for w in done.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(b"ABC".to_vec()));
        }
        assert!(bundle_patch(&done, "ABC").is_none());
    }
}
