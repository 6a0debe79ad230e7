//! Shared state of the reconcilers: clients, settings, caches and what this process learned or
//! wrote. No decisions and no writes: reads go through `reconcile`, writes through `act`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::backoff::Backoff;
use super::key::RoleKey;
use super::known::SecretKnowledge;
use super::leader::Leadership;
use super::learned::Learned;
use crate::aws::options::StsOptions;
use crate::aws::{BaseRoleArn, CredentialIssuer};
use crate::crd::AWSIAMRole;
use crate::metrics::Metrics;

/// Field manager for server-side apply, and the Events' reporting controller.
pub const MANAGER: &str = "kube-aws-iam-controller";

/// Tunables of the reconcile loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Renew this long before expiry (at most half the credentials' lifetime).
    pub refresh_limit: Duration,
    /// First retry delay after a transient failure; also the shortest requeue.
    pub backoff_base: Duration,
    /// Longest retry delay; also the requeue for permanent failures.
    pub max_backoff: Duration,
    /// Session tags, source identity, external id, and the role-chaining cap.
    pub sts_options: StsOptions,
    /// How long a labelled Secret without any owner reference and without an AWSIAMRole of its
    /// name is left alone before the janitor removes it (a seed Secret written ahead of its role).
    pub orphan_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            refresh_limit: Duration::from_secs(15 * 60),
            backoff_base: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            sts_options: StsOptions::default(),
            orphan_grace: Duration::from_secs(10 * 60),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub issuer: Arc<dyn CredentialIssuer>,
    pub settings: Settings,
    /// Publishes Warning Events: repeats within six minutes become one Event's series. Its
    /// cache holds every Event it published in that time, so Normal Events (one per issue,
    /// each different) bypass it: see `act::event`.
    pub recorder: Recorder,
    pub(crate) reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// This replica's claim to act: see [`Context::is_leader`].
    pub leader: Leadership,
    /// Who may get which role.
    pub policy: super::policy::PolicyContext,
    /// Learned while running: the discovered base role ARN, role chaining.
    pub learned: Arc<Learned>,
    /// The Secrets' metadata cache and what this process last wrote or read of each.
    pub secrets: SecretKnowledge,
    /// The resourceVersion each AWSIAMRole got from this process's last status write, until
    /// the watch delivers it: a cached object at another version may be behind that write.
    pub statuses: Mutex<HashMap<RoleKey, String>>,
}

/// What a [`Context`] is wired to besides the API server, STS and the settings.
pub struct Wiring {
    pub metrics: Arc<Metrics>,
    pub leader: Leadership,
    /// Who may get which role.
    pub policy: super::policy::PolicyContext,
    pub learned: Arc<Learned>,
    /// Names this replica in the Events it publishes.
    pub instance: String,
}

impl Context {
    /// The one constructor, for `main.rs` and the tests alike.
    pub fn new(
        client: Client,
        issuer: Arc<dyn CredentialIssuer>,
        settings: Settings,
        wiring: Wiring,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(wiring.instance),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            issuer,
            settings,
            metrics: wiring.metrics,
            backoff: Backoff::default(),
            leader: wiring.leader,
            policy: wiring.policy,
            learned: wiring.learned,
            secrets: SecretKnowledge::default(),
            statuses: Mutex::default(),
        }
    }

    /// True while this replica holds an unexpired leadership claim (by the local monotonic
    /// clock). The one leadership gate: checked right before each STS call and each write.
    pub fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }

    /// True when this replica may make the write (or STS call) `what` now; otherwise the
    /// skipped write is counted.
    pub fn may_write(&self, what: &'static str) -> bool {
        if self.is_leader() {
            return true;
        }
        self.metrics.write_skipped("not-leader", what);
        false
    }

    /// The prefix for bare role names: `--base-role-arn`, or what discovery found (`None`
    /// while discovery still runs, or when it found none). The one place it is read.
    pub fn base_role_arn(&self) -> Option<BaseRoleArn> {
        self.learned.base_role_arn()
    }

    /// Whether the cached object (at resourceVersion `cached`) may be behind this process's
    /// last status write of it: then the reconcile reads it live.
    pub fn status_behind(&self, key: &RoleKey, cached: Option<&str>) -> bool {
        let Ok(mut written) = self.statuses.lock() else {
            return false;
        };
        match written.get(key) {
            Some(rv) if Some(rv.as_str()) == cached => {
                written.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The watch delivered `role` (already in the cache): a status write of this process it
    /// shows is forgotten, so the written versions are kept only while the watch is behind.
    pub fn status_seen(&self, role: &AWSIAMRole) {
        self.status_behind(
            &RoleKey::of(role),
            role.metadata.resource_version.as_deref(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::{FakeSts, context, role};
    use super::RoleKey;

    #[tokio::test]
    async fn a_status_write_is_remembered_only_until_the_watch_shows_it() {
        let (ctx, _api, _leader) = context(FakeSts::new(Duration::from_secs(3600)));
        let key = &RoleKey::new("testns", "app");
        let remember = |rv: &str| {
            ctx.statuses
                .lock()
                .expect("lock")
                .insert(key.clone(), rv.into());
        };
        remember("101");
        assert!(ctx.status_behind(key, Some("100")), "the cache predates it");
        assert!(
            ctx.status_behind(key, Some("100")),
            "still, until it is seen"
        );
        let mut seen = role("app", "app", 1);
        seen.metadata.resource_version = Some("101".into());
        ctx.status_seen(&seen);
        assert!(ctx.statuses.lock().expect("lock").is_empty(), "forgotten");
        assert!(
            !ctx.status_behind(key, Some("102")),
            "a later version (someone else's) is not behind this process's write"
        );
        // The reconcile finds the cache caught up before the watch event is handled.
        remember("103");
        assert!(!ctx.status_behind(key, Some("103")));
        assert!(ctx.statuses.lock().expect("lock").is_empty());
    }
}
