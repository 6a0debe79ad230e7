//! One reconcile of one AWSIAMRole: observe (the role, its Secret from the watch cache or read
//! live, [`super::known`]), decide (pure, [`plan::decide`]), act (the STS call, the Secret, the
//! status, the Event), requeue.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::context::{Context, MANAGER, Transition};
use super::key::RoleKey;
use super::known::Observation;
use super::plan::{self, Observed, Plan, Requeue, Resolution, Writes};
use super::status::Note;
use crate::aws::{IssueError, IssueRequest, IssuedCredentials};
use crate::crd::AWSIAMRole;
use crate::{Error, Result};

/// Entry point for the kube-rs `Controller`.
pub async fn reconcile(role: Arc<AWSIAMRole>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_role(&role, &ctx).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .reconciled(label, started.elapsed().as_secs_f64());
    result
}

/// Kubernetes API failures (conflicts, 5xx, timeouts): retry this object with exponential
/// backoff and jitter. STS failures never get here: their requeue is part of the plan.
pub fn error_policy(role: Arc<AWSIAMRole>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.backoff.fail(&RoleKey::of(role.as_ref()));
    ctx.metrics.set_backoff(ctx.backoff.len());
    let delay = super::backoff::delay(
        failures,
        ctx.settings.backoff_base,
        ctx.settings.max_backoff,
        rand::random::<f64>(),
    );
    warn!(
        namespace = role.namespace().unwrap_or_default(),
        name = role.name_any(),
        error = %err,
        failures,
        retry_in_s = delay.as_secs_f64(),
        "reconcile failed, backing off"
    );
    Action::requeue(delay)
}

#[instrument(skip_all, fields(namespace = role.namespace().unwrap_or_default(), name = role.name_any()))]
pub async fn reconcile_role(role: &AWSIAMRole, ctx: &Context) -> Result<Action> {
    // Followers only keep their caches warm; every object is reconciled again on takeover.
    if !ctx.is_leader() || role.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // The policy judges from the Namespace cache: at start, wait until it is filled.
    ctx.policy.namespaces_synced().await;
    // And for the controller's own identity, briefly: at start it is usually learned in
    // moments, and a role judged before that would say it waits for it.
    ctx.policy.identity_known(ctx.settings.backoff_base).await;
    // Observe: the Secret from the watch cache when its data is known, else read live.
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (existing, known) = match ctx.secrets.observe(&ns, &name) {
        Observation::Cached { metadata, known } => {
            ctx.metrics.secret_observed("cache");
            (Some(*metadata), Some(*known))
        }
        Observation::ReadLive => {
            ctx.metrics.secret_observed("api");
            let live = secrets.get_opt(&name).await?;
            ctx.secrets.record(&ns, &name, live.as_ref());
            (live, None)
        }
    };
    let base = ctx.base_role_arn();
    let key = RoleKey::of(role);
    let policy = ctx.policy.view(role);
    let obs = Observed {
        role,
        secret: existing.as_ref(),
        known: known.as_ref(),
        now: Utc::now(),
        settings: &ctx.settings,
        base_role_arn: base.as_ref(),
        failures: ctx.backoff.failures(&key),
        jitter: rand::random::<f64>(),
        policy: &policy,
        chained: ctx.learned.is_chained(),
    };
    // Decide; the STS call, when the plan asks for one, and its answer resolved by the plan
    // (at most one capped retry: see `plan::Resolution::Chained`).
    let writes = match plan::decide(&obs) {
        Plan::Write(writes) => writes,
        Plan::Issue(mut issue) => loop {
            let Some(answer) = assume(ctx, issue.request.clone()).await else {
                return Ok(Action::await_change());
            };
            match plan::answer(&obs, &issue, answer, Utc::now()) {
                Resolution::Writes(writes) => break writes,
                Resolution::Chained(capped) => {
                    ctx.learned.mark_chained();
                    info!(
                        "STS treats the controller's credentials as a role session: sessions are capped at one hour"
                    );
                    issue = capped;
                }
            }
        },
    };
    // Act.
    act(ctx, role, &secrets, existing.as_ref(), writes).await
}

/// Carries out the writes of a plan and turns its requeue into an `Action`.
async fn act(
    ctx: &Context,
    role: &AWSIAMRole,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    writes: Writes,
) -> Result<Action> {
    let Writes {
        secret,
        status,
        events,
        requeue,
        issued,
        policy,
    } = writes;
    if let Some(state) = policy {
        ctx.metrics.policy(&RoleKey::of(role), state);
    }
    // Someone else changed the Secret right after this write: look again soon.
    let mut changed_meanwhile = false;
    if let Some(desired) = secret {
        if !ctx.may_write("secret") {
            return Ok(Action::await_change());
        }
        let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
        // Remembered, so that the watch event of this write triggers nothing and the next
        // reconcile decides from the cache; after a failure the next one reads live.
        let write = ctx.secrets.begin_write(&ns, &name);
        let written = write_secret(secrets, existing, desired).await;
        changed_meanwhile = write.finish(written.as_ref().ok());
        if let Err(e) = written {
            let (reason, verb) = match existing {
                Some(_) => ("UpdateSecretFailed", "Update"),
                None => ("CreateSecretFailed", "Create"),
            };
            let message = format!("{verb} of Secret {ns}/{name} failed: {e}");
            ctx.event(role, Note::warning(reason, message)).await;
            return Err(e.into());
        }
        match issued {
            Some(reason) => {
                ctx.metrics.issued(reason.as_str());
                info!(reason = reason.as_str(), "credentials issued");
            }
            None => info!("secret written without an STS call"),
        }
    }
    let transition = match &status {
        Some(outcome) => ctx.write_status(role, outcome).await?,
        None => Transition::Unchanged,
    };
    // NOTE: the Events go out after the status write. Sent beside it (tried, to shorten the
    // cold start), `tests/apiserver_restart.rs` failed in both runs: the resumed watch saw no
    // 410 after compaction. Why was not found; in sequence it passes.
    for note in events {
        if note.severity == super::status::Severity::Warning {
            warn!(reason = note.reason, message = note.message, "not ready");
        }
        ctx.announce(role, note, transition).await;
    }
    let key = RoleKey::of(role);
    let soon = |delay: std::time::Duration| {
        if changed_meanwhile {
            delay.min(ctx.settings.backoff_base)
        } else {
            delay
        }
    };
    let action = match requeue {
        Requeue::After(delay) => {
            ctx.backoff.reset(&key);
            Action::requeue(soon(delay))
        }
        Requeue::Backoff(delay) => {
            ctx.backoff.fail(&key);
            Action::requeue(delay)
        }
        Requeue::AwaitChange if changed_meanwhile => {
            ctx.backoff.reset(&key);
            Action::requeue(ctx.settings.backoff_base)
        }
        Requeue::AwaitChange => {
            ctx.backoff.reset(&key);
            Action::await_change()
        }
    };
    ctx.metrics.set_backoff(ctx.backoff.len());
    Ok(action)
}

/// One `AssumeRole` call, counted in the metrics (its span names the role, never a credential); `None` when this replica is not the leader
/// (any more) and so must not call.
#[instrument(name = "sts_assume_role", skip_all, fields(role_arn = %request.role_arn, duration_s = request.duration_seconds))]
async fn assume(
    ctx: &Context,
    request: IssueRequest,
) -> Option<Result<IssuedCredentials, IssueError>> {
    if !ctx.may_write("sts") {
        return None;
    }
    let started = Instant::now();
    let result = ctx.issuer.assume_role(request).await;
    let label = match &result {
        Ok(_) => "Success",
        Err(e) => e.reason(),
    };
    ctx.metrics
        .sts_call("AssumeRole", label, started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        warn!(code = e.code, reason = e.reason(), "AssumeRole failed");
    }
    Some(result)
}

/// Creates the Secret, or patches it into `desired` (a JSON merge patch) with the
/// resourceVersion it was read (and its ownership checked) with, so a Secret changed in
/// between by someone else is never overwritten.
async fn write_secret(
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    desired: Secret,
) -> Result<Secret, kube::Error> {
    match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            secrets.create(&pp, &desired).await
        }
        Some(current) => {
            let pp = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..PatchParams::default()
            };
            let patch = super::secret::merge_patch(current, &desired);
            secrets
                .patch(&desired.name_any(), &pp, &Patch::Merge(&patch))
                .await
        }
    }
}
