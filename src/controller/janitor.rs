//! Removes labelled Secrets whose AWSIAMRole is gone. Finds candidates in the watch caches (no
//! API calls unless there is something to delete), and confirms each with a live read of the
//! AWSIAMRole before deleting, so a stale cache never deletes a Secret. It does not depend on
//! the Kubernetes garbage collector (the owner reference covers clusters that run one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::Store;
use tracing::{info, instrument, warn};

use super::cache::{CachedSecret, Owners};
use super::context::Context;
use super::key::RoleKey;
use crate::crd::AWSIAMRole;

/// The labelled Secrets that may be orphans: no AWSIAMRole of their name is in the cache, they
/// carry no owner reference other than to an AWSIAMRole, and, when they carry none at all
/// (a seed Secret written ahead of its role), they are older than `grace`. Pure.
pub fn orphans(
    roles: &HashSet<(String, String)>,
    secrets: &[Arc<CachedSecret>],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<Arc<CachedSecret>> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    secrets
        .iter()
        .filter(|s| {
            let past_grace = match s.owners() {
                Owners::OnlyRoles => true,
                Owners::None => s
                    .created()
                    .is_some_and(|t| now.timestamp() - t >= grace.num_seconds()),
                Owners::Others => false,
            };
            !s.deleting()
                && past_grace
                && !roles.contains(&(s.namespace().to_string(), s.name().to_string()))
        })
        .cloned()
        .collect()
}

/// One pass: delete orphans (with UID and resourceVersion preconditions) and forget the
/// metrics of deleted roles.
#[instrument(name = "janitor_sweep", skip_all)]
pub async fn sweep(ctx: &Context, roles: &Store<AWSIAMRole>, secrets: &Store<CachedSecret>) {
    let role_keys: HashSet<(String, String)> = roles
        .state()
        .iter()
        .map(|r| (r.namespace().unwrap_or_default(), r.name_any()))
        .collect();
    let candidates = orphans(
        &role_keys,
        &secrets.state(),
        Utc::now(),
        ctx.settings.orphan_grace,
    );
    for secret in candidates {
        let (ns, name) = (secret.namespace(), secret.name());
        // The cache may lag: only the API server's word that no AWSIAMRole of this name
        // exists (none at all, whatever its UID: a re-created one takes its Secret over) counts.
        let live: Api<AWSIAMRole> = Api::namespaced(ctx.client.clone(), ns);
        match live.get_opt(name).await {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(e) => {
                warn!(namespace = ns, name, error = %e, "could not confirm the AWSIAMRole is gone");
                continue;
            }
        }
        if !ctx.leader.may_write(&ctx.metrics, "delete") {
            return;
        }
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid().map(str::to_string),
                resource_version: Some(secret.resource_version().to_string()),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => info!(namespace = ns, name, "removed secret of deleted AWSIAMRole"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(namespace = ns, name, error = %e, "could not remove orphaned secret"),
        }
    }
    let exists = |key: &RoleKey| roles.get(&key.to_ref()).is_some();
    ctx.secrets.retain(exists);
    ctx.statuses.retain(exists);
    for key in ctx.metrics.tracked_roles() {
        if !exists(&key) {
            ctx.metrics.forget_role(&key);
            ctx.backoff.reset(&key);
            ctx.metrics.set_backoff(ctx.backoff.len());
        }
    }
}

/// Sweeps every `interval` once `synced` says the watch caches are filled.
pub async fn run(
    ctx: Arc<Context>,
    roles: Store<AWSIAMRole>,
    secrets: Store<CachedSecret>,
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
        if ctx.leader.is_leader() {
            sweep(&ctx, &roles, &secrets).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn secret(name: &str, owner_kind: Option<&str>) -> Arc<CachedSecret> {
        let mut meta = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(now().timestamp() - 60).expect("time"),
            )),
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
        Arc::new(CachedSecret::of(&kube::api::PartialObjectMeta {
            types: None,
            metadata: meta,
            _phantom: Default::default(),
        }))
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
        let names = |grace: u64| -> Vec<String> {
            orphans(&roles, &all, now(), Duration::from_secs(grace))
                .iter()
                .map(|s| s.name().to_string())
                .collect()
        };
        assert_eq!(names(30), vec!["gone".to_string(), "seed-gone".to_string()]);
        // A Secret without any owner is a seed written ahead of its role: it gets a grace period.
        assert_eq!(names(600), vec!["gone".to_string()]);
    }
}
