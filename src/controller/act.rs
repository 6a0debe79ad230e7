//! Carries out a prepared plan ([`plan::Prepared`]): the Secret's write, the status patch, the
//! Events, the gauges, and the requeue as an `Action`. It decides nothing: each write is sent
//! as prepared, right after the leadership check, and a conflict is handed back to the
//! reconcile, which observes again and lets the plan decide again.

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::context::{Context, MANAGER};
use super::key::RoleKey;
use super::plan::{Prepared, Requeue, SecretWrite};
use super::status::{self, Note, Severity};
use crate::crd::AWSIAMRole;
use crate::{Error, Result};

/// What came of carrying out a prepared pass.
pub enum Acted {
    Done(Action),
    /// The Secret's write (`Create` or `Update`) conflicted: it changed since it was observed.
    SecretConflict(&'static str, kube::Error),
    /// The status patch conflicted: the role changed since it was observed. The rest of the
    /// pass (the status judged again, the Events, the requeue) is still to be carried out.
    StatusConflict {
        error: kube::Error,
        rest: Box<Prepared>,
        changed_meanwhile: bool,
    },
}

/// Carries out `prepared`: the policy gauge, the Secret, the role's gauges, the status, then
/// the Events and the requeue ([`finish`]); the gauges go first, as the status a reader may see
/// next says the same. `changed_meanwhile`: the Secret was changed by someone else right
/// after this reconcile's write (the reconcile then looks again soon).
pub async fn carry_out(
    ctx: &Context,
    role: &AWSIAMRole,
    mut prepared: Prepared,
    mut changed_meanwhile: bool,
) -> Result<Acted> {
    let key = RoleKey::of(role);
    if let Some(state) = prepared.policy.take() {
        ctx.metrics.policy(&key, state);
    }
    if let Some(write) = prepared.secret.take() {
        let verb = write.verb();
        match secret(ctx, role, write, &mut changed_meanwhile).await? {
            Written::Done => secret_written(ctx, prepared.issued),
            Written::Skipped => return Ok(Acted::Done(Action::await_change())),
            Written::Conflict(e) => return Ok(Acted::SecretConflict(verb, e)),
        }
    }
    if let Some(g) = prepared.gauge.take() {
        ctx.metrics.role_state(&key, g.ready, g.expiry);
    }
    if let Some(patch) = prepared.status.take()
        && let Written::Conflict(error) = status(ctx, role, &patch).await?
    {
        return Ok(Acted::StatusConflict {
            error,
            rest: Box::new(prepared),
            changed_meanwhile,
        });
    }
    Ok(Acted::Done(
        finish(ctx, role, prepared, changed_meanwhile).await,
    ))
}

/// What came of a write that may conflict (409: the object changed since it was observed).
enum Written {
    Done,
    /// Not sent: this replica no longer leads.
    Skipped,
    Conflict(kube::Error),
}

/// Sends the Secret's write; `changed_meanwhile` is set when someone else changed the Secret
/// right after it (the reconcile then looks again soon). A failure other than a conflict
/// publishes a Warning Event and is returned (the object backs off).
async fn secret(
    ctx: &Context,
    role: &AWSIAMRole,
    write: SecretWrite,
    changed_meanwhile: &mut bool,
) -> Result<Written> {
    if !ctx.leader.may_write(&ctx.metrics, "secret") {
        return Ok(Written::Skipped);
    }
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    // Remembered, so that the watch event of this write triggers nothing and the next
    // reconcile decides from the cache; after a failure the next one reads live.
    let record = ctx.secrets.begin_write(&ns, &name);
    let written = match &write {
        SecretWrite::Create(desired) => {
            let pp = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            secrets.create(&pp, desired).await
        }
        SecretWrite::Patch { name, patch } => secrets.patch(name, &pp, &Patch::Merge(patch)).await,
    };
    *changed_meanwhile = record.finish(written.as_ref().ok());
    match written {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Written::Conflict(kube::Error::Api(status)))
        }
        Err(e) => Err(secret_write_failed(ctx, role, write.verb(), e).await),
    }
}

/// A failed write of the Secret (`verb`: Create or Update): a Warning Event, and the error.
pub async fn secret_write_failed(
    ctx: &Context,
    role: &AWSIAMRole,
    verb: &str,
    e: kube::Error,
) -> Error {
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    let reason = match verb {
        "Create" => "CreateSecretFailed",
        _ => "UpdateSecretFailed",
    };
    let message = status::bounded(&format!("{verb} of Secret {ns}/{name} failed: {e}"));
    event(ctx, role, Note::warning(reason, message)).await;
    e.into()
}

/// Sends the status patch as prepared (judged against the object it names the
/// resourceVersion of), when this replica leads; remembers the version it wrote, so that a
/// reconcile before the watch shows it reads the object live.
#[instrument(name = "status_write", skip_all)]
async fn status(ctx: &Context, role: &AWSIAMRole, patch: &serde_json::Value) -> Result<Written> {
    if !ctx.leader.may_write(&ctx.metrics, "status") {
        return Ok(Written::Skipped);
    }
    // NOTE: a JSON merge patch, not server-side apply: apply must type the stored object
    // against the schema and fails (500) on one whose spec does not match it (an
    // `InvalidSpec` object), which is exactly the one that needs its status written.
    let api: Api<AWSIAMRole> =
        Api::namespaced(ctx.client.clone(), &role.namespace().unwrap_or_default());
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&role.name_any(), &pp, &Patch::Merge(patch))
        .await
    {
        Ok(written) => {
            if let Some(rv) = written.resource_version() {
                ctx.statuses.wrote(RoleKey::of(role), rv);
            }
            Ok(Written::Done)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Written::Conflict(kube::Error::Api(e))),
        Err(e) => Err(e.into()),
    }
}

/// The rest of a pass once its writes are done: the Events and the requeue as an `Action`.
async fn finish(
    ctx: &Context,
    role: &AWSIAMRole,
    prepared: Prepared,
    changed_meanwhile: bool,
) -> Action {
    let key = RoleKey::of(role);
    // NOTE: the Events go out after the status write. Sent beside it (tried, to shorten the
    // cold start), `tests/apiserver_restart.rs` failed in both runs: the resumed watch saw no
    // 410 after compaction. Why was not found; in sequence it passes.
    for note in prepared.events {
        if note.severity == Severity::Warning {
            warn!(reason = note.reason, message = note.message, "not ready");
        }
        event(ctx, role, note).await;
    }
    next_action(ctx, &key, prepared.requeue, changed_meanwhile)
}

/// Logs and counts a Secret written by a pass.
fn secret_written(ctx: &Context, issued: Option<super::plan::IssueReason>) {
    match issued {
        Some(reason) => {
            ctx.metrics.issued(reason.as_str());
            info!(reason = reason.as_str(), "credentials issued");
        }
        None => info!("secret written without an STS call"),
    }
}

/// The plan's requeue as an `Action`, the object's backoff counted or reset; sooner when the
/// Secret was changed by someone else right after this reconcile's write.
fn next_action(ctx: &Context, key: &RoleKey, requeue: Requeue, changed_meanwhile: bool) -> Action {
    let soon = |delay: std::time::Duration| {
        if changed_meanwhile {
            delay.min(ctx.settings.backoff_base)
        } else {
            delay
        }
    };
    let action = match requeue {
        Requeue::After(delay) => {
            ctx.backoff.reset(key);
            Action::requeue(soon(delay))
        }
        Requeue::Backoff(delay) => {
            ctx.backoff.fail(key);
            Action::requeue(delay)
        }
        Requeue::AwaitChange if changed_meanwhile => {
            ctx.backoff.reset(key);
            Action::requeue(ctx.settings.backoff_base)
        }
        Requeue::AwaitChange => {
            ctx.backoff.reset(key);
            Action::await_change()
        }
    };
    ctx.metrics.set_backoff(ctx.backoff.len());
    action
}

/// Publishes an Event (its message already bounded); a failure to do so is logged, never
/// fatal. Warnings go through kube's `Recorder`, which folds a warning repeated within six
/// minutes into a series on one Event; Normal Events (`CreateCredentials`,
/// `UpdateCredentials`: one per issue, never a repeat) are created directly, so the
/// recorder's cache, which it scans on every publish, stays as small as the number of recent
/// warnings instead of the number of roles.
async fn event(ctx: &Context, role: &AWSIAMRole, note: Note) {
    if !ctx.leader.may_write(&ctx.metrics, "event") {
        return;
    }
    let (type_, action) = match note.severity {
        Severity::Warning => (EventType::Warning, "Reconcile"),
        Severity::Normal => (EventType::Normal, "IssueCredentials"),
    };
    let ev = Event {
        type_,
        reason: note.reason.into(),
        note: Some(note.message),
        action: action.into(),
        secondary: None,
    };
    let reference = role.object_ref(&());
    let published = match type_ {
        EventType::Warning => ctx.recorder.publish(&ev, &reference).await,
        EventType::Normal => create_event(ctx, &ev, reference).await,
    };
    if let Err(e) = published {
        warn!(error = %e, reason = note.reason, "could not publish event");
    }
}

/// Creates an `events.k8s.io/v1` Event as kube's `Recorder` does for a first occurrence.
async fn create_event(
    ctx: &Context,
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
    let reporter = &ctx.reporter;
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
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some("Normal".into()),
        ..K8sEvent::default()
    };
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    Api::<K8sEvent>::namespaced(ctx.client.clone(), &namespace)
        .create(&pp, &event)
        .await
        .map(|_| ())
}
