//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager). Only the leader calls
//! STS and writes Secrets; followers keep their watch caches warm and take over when the Lease
//! is released or expires.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

/// How to take part in the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal (a follower waits at most this long).
    pub duration: Duration,
    /// The holder renews this long before the Lease would expire.
    pub grace: Duration,
}

impl LeaseSettings {
    /// Rejects settings the Lease manager cannot work with (it would panic on them).
    pub fn validate(&self) -> Result<(), String> {
        let (d, g) = (self.duration.as_secs(), self.grace.as_secs());
        if d == 0 || g == 0 || g >= d {
            return Err(format!(
                "lease duration ({d}s) and grace ({g}s) must be whole seconds with 0 < grace < duration"
            ));
        }
        if self.identity.is_empty() {
            return Err("lease identity must not be empty".into());
        }
        Ok(())
    }
}

/// A leadership channel that is always `true`: for a single replica without election.
pub fn always_leader() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}

pub async fn manager(
    client: Client,
    s: &LeaseSettings,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration.as_secs())
        .with_grace(s.grace.as_secs())
        .with_field_manager(format!("kube-aws-iam-controller-{}", s.identity))
        .build()
        .await
}

/// Runs the election until `stop` resolves, publishing leadership on `tx`; then releases the
/// Lease (if held) so a follower takes over at once.
///
/// NOTE: a kube-lease-manager follower sleeps until the holder's Lease would expire, so it would
/// not notice a released Lease before then. Followers therefore also watch the Lease and start
/// over (re-read it, take it if free) whenever it changes.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    manager: LeaseManager,
    tx: watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease_changes = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", settings.name)),
    )
    .default_backoff()
    .applied_objects();
    tokio::pin!(lease_changes);
    let mut manager = manager;
    loop {
        let follower = !*tx.borrow();
        tokio::select! {
            _ = &mut stop => break,
            Some(Ok(lease)) = lease_changes.next(), if follower => {
                let free = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    .is_none_or(str::is_empty);
                if free {
                    // A fresh manager reads the Lease anew instead of sleeping out its old expiry.
                    match self::manager(client.clone(), &settings).await {
                        Ok(fresh) => manager = fresh,
                        Err(e) => warn!(error = %e, "could not re-read the released lease"),
                    }
                }
            }
            changed = manager.changed() => match changed {
                Ok(leader) => {
                    info!(leader, "leadership changed");
                    let _ = tx.send(leader);
                }
                Err(e) => {
                    warn!(error = %e, "leader election failed; acting as follower until it recovers");
                    let _ = tx.send(false);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    let _ = tx.send(false);
    match manager.release().await {
        Ok(()) => info!("lease released"),
        Err(e) => warn!(error = %e, "could not release the lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(d: u64, g: u64) -> LeaseSettings {
        LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration: Duration::from_secs(d),
            grace: Duration::from_secs(g),
        }
    }

    #[test]
    fn lease_settings_are_checked_before_use() {
        assert!(settings(15, 5).validate().is_ok());
        assert!(settings(5, 5).validate().is_err());
        assert!(settings(0, 0).validate().is_err());
    }
}
