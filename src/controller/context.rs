//! Shared state of the reconcilers: clients, settings, caches and what this process learned or
//! wrote. No decisions and no writes: reads go through `reconcile`, writes through `act`.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::backoff::Backoff;
use super::known::{SecretKnowledge, StatusWrites};
use super::leader::Leadership;
use super::learned::Learned;
use crate::aws::CredentialIssuer;
use crate::aws::options::StsOptions;
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
    /// This replica's claim to act; `Leadership::may_write` is the gate before each write.
    pub leader: Leadership,
    /// Who may get which role.
    pub policy: super::policy::PolicyContext,
    /// Learned while running: the discovered base role ARN, role chaining.
    pub learned: Arc<Learned>,
    /// The Secrets' metadata cache and what this process last wrote or read of each.
    pub secrets: SecretKnowledge,
    /// What this process last wrote of each AWSIAMRole's status, until the watch shows it.
    pub statuses: StatusWrites,
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
            statuses: StatusWrites::default(),
        }
    }
}
