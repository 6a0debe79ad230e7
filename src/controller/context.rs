//! Shared state of the reconcilers, and the few thin functions that write status and Events.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::backoff::Backoff;
use super::leader::Leadership;
use super::learned::Learned;
use super::status::{self, Outcome};
use crate::aws::options::StsOptions;
use crate::aws::{BaseRoleArn, CredentialIssuer};
use crate::crd::AWSIAMRole;
use crate::metrics::Metrics;

/// Field manager for server-side apply, and the Events' reporting controller.
pub const MANAGER: &str = "kube-aws-iam-controller";

/// Tunables of the reconcile loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Renew this long before expiry (at most half the session).
    pub refresh_limit: Duration,
    /// First retry delay after a transient failure.
    pub backoff_base: Duration,
    /// Longest retry delay; also the requeue for permanent failures.
    pub max_backoff: Duration,
    /// Session tags, source identity, external id, and the role-chaining cap.
    pub sts_options: StsOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            refresh_limit: Duration::from_secs(15 * 60),
            backoff_base: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            sts_options: StsOptions::default(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub issuer: Arc<dyn CredentialIssuer>,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// This replica's claim to act: see [`Context::is_leader`].
    pub leader: Leadership,
    /// Who may get which role.
    pub policy: super::policy::PolicyContext,
    /// Learned while running: the discovered base role ARN, role chaining.
    pub learned: Arc<Learned>,
}

impl Context {
    /// True while this replica holds an unexpired leadership claim (by the local monotonic
    /// clock). Check it right before each STS call and each write.
    pub fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }

    /// The prefix for bare role names: `--base-role-arn`, or what discovery found (`None`
    /// while discovery still runs, or when it found none).
    pub fn base_role_arn(&self) -> Option<BaseRoleArn> {
        self.learned.base_role_arn()
    }
}

/// An Event to publish on a status transition.
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Context {
    /// Writes the status for `outcome` if it differs from the current one, and publishes
    /// `note` (always for `force_event`, otherwise only when the Ready condition transitions).
    pub async fn report(
        &self,
        role: &AWSIAMRole,
        outcome: Outcome,
        note: Option<Note>,
        force_event: bool,
    ) -> Result<(), kube::Error> {
        let current = role.status.as_ref();
        let next = status::next(current, &outcome, Utc::now());
        let transition = status::is_transition(current, &next);
        let key = format!(
            "{}/{}",
            role.namespace().unwrap_or_default(),
            role.name_any()
        );
        let expiry = next
            .expiration
            .as_deref()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|t| t.timestamp());
        self.metrics
            .role_state(&key, matches!(outcome, Outcome::Ready { .. }), expiry);
        if current != Some(&next) {
            let api: Api<AWSIAMRole> =
                Api::namespaced(self.client.clone(), &role.namespace().unwrap_or_default());
            let patch = json!({
                "apiVersion": "zalando.org/v1",
                "kind": "AWSIAMRole",
                "status": next,
            });
            api.patch_status(
                &role.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        }
        if let Some(note) = note
            && (force_event || transition)
        {
            self.event(role, note).await;
        }
        Ok(())
    }

    /// Publishes an Event; a failure to do so is logged, never fatal.
    pub async fn event(&self, role: &AWSIAMRole, note: Note) {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(status::bounded(&note.message)),
            action: if note.warning {
                "Reconcile"
            } else {
                "IssueCredentials"
            }
            .into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &role.object_ref(&())).await {
            warn!(error = %e, reason = note.reason, "could not publish event");
        }
    }
}
