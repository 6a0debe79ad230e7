//! Shared state of the reconcilers, and the few thin functions that write status and Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{instrument, warn};

use super::backoff::Backoff;
use super::key::RoleKey;
use super::known::SecretKnowledge;
use super::leader::Leadership;
use super::learned::Learned;
use super::status::{self, Announce, Note, Outcome, Severity, StatusWrite};
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

/// Whether a status write changed the Ready condition's status or reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Changed,
    Unchanged,
}

pub struct Context {
    pub client: Client,
    pub issuer: Arc<dyn CredentialIssuer>,
    pub settings: Settings,
    /// Publishes Warning Events: repeats within six minutes become one Event's series. Its
    /// cache holds every Event it published in that time, so Normal Events (one per issue,
    /// each different) bypass it: see [`Context::event`].
    pub recorder: Recorder,
    reporter: Reporter,
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

    /// Writes the status for `outcome`, judged ([`status::write`]) against the object it
    /// patches and only when it changes something; never for an object that moved on to a newer generation. The patch
    /// carries the resourceVersion of the object it was computed from (the cached one, then,
    /// after a conflict, the live one): a change in between is a conflict, never overwritten.
    #[instrument(name = "status_write", skip_all)]
    pub async fn write_status(
        &self,
        role: &AWSIAMRole,
        outcome: &Outcome,
    ) -> Result<Transition, kube::Error> {
        let now = Utc::now();
        let cached = role.status.as_ref();
        let key = RoleKey::of(role);
        let expiry = match outcome {
            Outcome::Ready { expiration, .. } => Some(expiration.timestamp()),
            Outcome::Withdrawn { .. } => None,
            Outcome::NotReady { .. } => cached
                .and_then(|s| s.expiration.as_deref())
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                .map(|t| t.timestamp()),
        };
        self.metrics
            .role_state(&key, matches!(outcome, Outcome::Ready { .. }), expiry);
        let judged = status::write(role, outcome, now);
        if judged == StatusWrite::Unchanged {
            return Ok(Transition::Unchanged);
        }
        let api: Api<AWSIAMRole> =
            Api::namespaced(self.client.clone(), &role.namespace().unwrap_or_default());
        // First against the object as the watch delivered it, with its resourceVersion as the
        // precondition: no read in the common case. A conflict means it moved on (a newer
        // generation, our own write not yet in the cache): read it live and judge again.
        // The cache may not show this process's own last status write yet (a reconcile right
        // after another): then the live object is read instead of sending a patch bound to fail.
        let behind = self.status_behind(&key, role.metadata.resource_version.as_deref());
        if let StatusWrite::Patch { patch, transition } = &judged
            && !behind
            && role.resource_version().is_some()
        {
            match self.patch_status(&api, role, patch, *transition).await {
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                done => return done,
            }
        }
        let Some(live) = api.get_opt(&role.name_any()).await? else {
            return Ok(Transition::Unchanged);
        };
        if live.uid() != role.uid() {
            return Ok(Transition::Unchanged);
        }
        match status::write(&live, outcome, now) {
            StatusWrite::Patch { patch, transition } => {
                self.patch_status(&api, &live, &patch, transition).await
            }
            StatusWrite::Unchanged | StatusWrite::Stale => Ok(Transition::Unchanged),
        }
    }

    fn status_behind(&self, key: &RoleKey, cached: Option<&str>) -> bool {
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

    /// Sends `status_patch` (judged by [`status::write`] against `object` as read), with
    /// `object`'s resourceVersion as the precondition, when this replica leads.
    async fn patch_status(
        &self,
        api: &Api<AWSIAMRole>,
        object: &AWSIAMRole,
        status_patch: &serde_json::Value,
        transition: bool,
    ) -> Result<Transition, kube::Error> {
        if !self.may_write("status") {
            return Ok(Transition::Unchanged);
        }
        // NOTE: a JSON merge patch, not server-side apply: apply must type the stored object
        // against the schema and fails (500) on one whose spec does not match it (an
        // `InvalidSpec` object), which is exactly the one that needs its status written.
        let patch = json!({
            "metadata": {"resourceVersion": object.resource_version()},
            "status": status_patch,
        });
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        let written = api
            .patch_status(&object.name_any(), &pp, &Patch::Merge(&patch))
            .await?;
        if let (Ok(mut m), Some(rv)) = (self.statuses.lock(), written.resource_version()) {
            m.insert(RoleKey::of(object), rv);
        }
        Ok(if transition {
            Transition::Changed
        } else {
            Transition::Unchanged
        })
    }

    pub async fn announce(&self, role: &AWSIAMRole, note: Note, transition: Transition) {
        if note.announce == Announce::OnTransition && transition == Transition::Unchanged {
            return;
        }
        self.event(role, note).await;
    }

    /// Publishes an Event; a failure to do so is logged, never fatal. Warnings go through
    /// kube's [`Recorder`], which folds a warning repeated within six minutes into a series
    /// on one Event; Normal Events (`CreateCredentials`, `UpdateCredentials`: one per issue,
    /// never a repeat) are created directly, so the recorder's cache, which it scans on every
    /// publish, stays as small as the number of recent warnings instead of the number of
    /// roles.
    pub async fn event(&self, role: &AWSIAMRole, note: Note) {
        if !self.may_write("event") {
            return;
        }
        let (type_, action) = match note.severity {
            Severity::Warning => (EventType::Warning, "Reconcile"),
            Severity::Normal => (EventType::Normal, "IssueCredentials"),
        };
        let ev = Event {
            type_,
            reason: note.reason.into(),
            note: Some(status::bounded(&note.message)),
            action: action.into(),
            secondary: None,
        };
        let reference = role.object_ref(&());
        let published = match type_ {
            EventType::Warning => self.recorder.publish(&ev, &reference).await,
            EventType::Normal => self.create_event(&ev, reference).await,
        };
        if let Err(e) = published {
            warn!(error = %e, reason = note.reason, "could not publish event");
        }
    }

    /// Creates an `events.k8s.io/v1` Event as kube's [`Recorder`] does for a first occurrence.
    async fn create_event(
        &self,
        ev: &Event,
        regarding: ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(MANAGER),
            now.as_nanosecond()
        );
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some("Normal".into()),
            ..K8sEvent::default()
        };
        let pp = PostParams {
            field_manager: Some(MANAGER.into()),
            ..PostParams::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&pp, &event)
            .await
            .map(|_| ())
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
