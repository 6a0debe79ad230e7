//! Removes labelled Secrets whose AWSIAMRole is gone. Works from the watch caches alone, so it
//! costs no API calls unless there is something to delete, and it does not depend on the
//! Kubernetes garbage collector (the owner reference covers clusters that run one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::context::Context;
use crate::crd::AWSIAMRole;

/// The labelled Secrets to delete: no AWSIAMRole of their name exists any more, and they carry
/// no owner reference other than to an AWSIAMRole. Pure.
pub fn orphans(
    roles: &HashSet<(String, String)>,
    secrets: &[Arc<PartialObjectMeta<Secret>>],
) -> Vec<Arc<PartialObjectMeta<Secret>>> {
    secrets
        .iter()
        .filter(|s| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let only_role_owners = s
                .owner_references()
                .iter()
                .all(|o| o.kind == "AWSIAMRole" && o.api_version.starts_with("zalando.org/"));
            s.meta().deletion_timestamp.is_none() && !roles.contains(&key) && only_role_owners
        })
        .cloned()
        .collect()
}

/// One pass: delete orphans (with UID and resourceVersion preconditions) and forget the
/// metrics of deleted roles.
pub async fn sweep(
    ctx: &Context,
    roles: &Store<AWSIAMRole>,
    secrets: &Store<PartialObjectMeta<Secret>>,
) {
    let role_keys: HashSet<(String, String)> = roles
        .state()
        .iter()
        .map(|r| (r.namespace().unwrap_or_default(), r.name_any()))
        .collect();
    for secret in orphans(&role_keys, &secrets.state()) {
        let ns = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid(),
                resource_version: secret.resource_version(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => info!(namespace = ns, name, "removed secret of deleted AWSIAMRole"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(namespace = ns, name, error = %e, "could not remove orphaned secret"),
        }
    }
    for key in ctx.metrics.tracked_roles() {
        if let Some((ns, name)) = key.split_once('/')
            && roles.get(&ObjectRef::new(name).within(ns)).is_none()
        {
            ctx.metrics.forget_role(&key);
            ctx.backoff.reset(&key);
            ctx.metrics.set_backoff(ctx.backoff.len());
        }
    }
}

/// Sweeps every `interval` once `synced` says both caches are filled.
pub async fn run(
    ctx: Arc<Context>,
    roles: Store<AWSIAMRole>,
    secrets: Store<PartialObjectMeta<Secret>>,
    mut synced: tokio::sync::watch::Receiver<bool>,
    interval: Duration,
) {
    if synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.is_leader() {
            sweep(&ctx, &roles, &secrets).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn secret(name: &str, owner_kind: Option<&str>) -> Arc<PartialObjectMeta<Secret>> {
        let mut meta = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..ObjectMeta::default()
        };
        if let Some(kind) = owner_kind {
            meta.owner_references = Some(vec![OwnerReference {
                api_version: if kind == "AWSIAMRole" {
                    "zalando.org/v1"
                } else {
                    "apps/v1"
                }
                .into(),
                kind: kind.into(),
                name: name.into(),
                uid: "u".into(),
                ..OwnerReference::default()
            }]);
        }
        Arc::new(PartialObjectMeta {
            types: None,
            metadata: meta,
            _phantom: Default::default(),
        })
    }

    #[test]
    fn only_secrets_without_a_role_and_without_foreign_owners_are_orphans() {
        let roles: HashSet<_> = [("ns".to_string(), "live".to_string())].into();
        let all = vec![
            secret("live", Some("AWSIAMRole")),
            secret("gone", Some("AWSIAMRole")),
            secret("seed-gone", None),
            secret("someone-elses", Some("Deployment")),
        ];
        let names: Vec<String> = orphans(&roles, &all).iter().map(|s| s.name_any()).collect();
        assert_eq!(names, vec!["gone".to_string(), "seed-gone".to_string()]);
    }
}
