//! One reconcile of one AWSIAMRole: observe (the role, its Secret from the watch cache or read
//! live, [`super::known`]), decide (pure, [`plan::decide`]), act (the STS call, the Secret, the
//! status, the Event), requeue. When the Secret's write conflicts (it changed since it was
//! observed), observe it again and decide again, once.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::context::{Context, MANAGER, Transition};
use super::key::RoleKey;
use super::known::Observation;
use super::plan::{self, Observed, Plan, Requeue, Resolution, Writes};
use super::secret::Known;
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
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &role.namespace().unwrap_or_default());
    let seen = observe(ctx, &secrets, role).await?;
    let mut answers = Answers::default();
    match attempt(ctx, role, &secrets, &seen, &mut answers).await? {
        Acted::Done(action) => Ok(action),
        // The Secret changed between observing and writing it: observe (live) and decide
        // again, once; an STS answer in hand for the same request is used, not asked again.
        Acted::Conflict(_) => {
            info!("the secret changed meanwhile: observing it again");
            let seen = read_live(ctx, &secrets, role).await?;
            match attempt(ctx, role, &secrets, &seen, &mut answers).await? {
                Acted::Done(action) => Ok(action),
                Acted::Conflict(e) => {
                    Err(secret_write_failed(ctx, role, seen.secret.as_ref(), e).await)
                }
            }
        }
    }
}

/// What a reconcile observed of the role's Secret.
struct Seen {
    secret: Option<Secret>,
    /// The Secret's data as this process last wrote or read it (cached observations only).
    known: Option<Known>,
}

/// Observes the Secret: from the watch cache when its data is known, else read live.
async fn observe(ctx: &Context, secrets: &Api<Secret>, role: &AWSIAMRole) -> Result<Seen> {
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    match ctx.secrets.observe(&ns, &name) {
        Observation::Cached { metadata, known } => {
            ctx.metrics.secret_observed("cache");
            Ok(Seen {
                secret: Some(*metadata),
                known: Some(*known),
            })
        }
        Observation::ReadLive => read_live(ctx, secrets, role).await,
    }
}

/// Reads the Secret from the API server, and remembers what it read.
async fn read_live(ctx: &Context, secrets: &Api<Secret>, role: &AWSIAMRole) -> Result<Seen> {
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    ctx.metrics.secret_observed("api");
    let live = secrets.get_opt(&name).await?;
    ctx.secrets.record(&ns, &name, live.as_ref());
    Ok(Seen {
        secret: live,
        known: None,
    })
}

/// The STS answers this reconcile received, by request: deciding again after a conflict asks
/// STS only for a request not answered yet.
#[derive(Default)]
struct Answers(
    Vec<(
        IssueRequest,
        Result<IssuedCredentials, IssueError>,
        DateTime<Utc>,
    )>,
);

impl Answers {
    /// The answer to `request` and when it arrived: the one in hand, else STS's; `None` when
    /// this replica may not call STS (any more).
    async fn ask(
        &mut self,
        ctx: &Context,
        request: &IssueRequest,
    ) -> Option<(Result<IssuedCredentials, IssueError>, DateTime<Utc>)> {
        if let Some((_, answer, at)) = self.0.iter().find(|(r, _, _)| r == request) {
            return Some((answer.clone(), *at));
        }
        let answer = assume(ctx, request.clone()).await?;
        let at = Utc::now();
        self.0.push((request.clone(), answer.clone(), at));
        Some((answer, at))
    }
}

/// What came of carrying out a plan.
enum Acted {
    Done(Action),
    /// The Secret's write conflicted (409): it changed since it was observed.
    Conflict(kube::Error),
}

/// Decides from `seen` and carries the plan out: the STS call when the plan asks for one, its
/// answer resolved by the plan (at most one capped retry: see `plan::Resolution::Chained`),
/// then the writes.
async fn attempt(
    ctx: &Context,
    role: &AWSIAMRole,
    secrets: &Api<Secret>,
    seen: &Seen,
    answers: &mut Answers,
) -> Result<Acted> {
    let base = ctx.base_role_arn();
    let policy = ctx.policy.view(role);
    let obs = Observed {
        role,
        secret: seen.secret.as_ref(),
        known: seen.known.as_ref(),
        now: Utc::now(),
        settings: &ctx.settings,
        base_role_arn: base.as_ref(),
        failures: ctx.backoff.failures(&RoleKey::of(role)),
        jitter: rand::random::<f64>(),
        policy: &policy,
        chained: ctx.learned.is_chained(),
    };
    let writes = match plan::decide(&obs) {
        Plan::Write(writes) => writes,
        Plan::Issue(mut issue) => loop {
            let Some((answer, at)) = answers.ask(ctx, &issue.request).await else {
                return Ok(Acted::Done(Action::await_change()));
            };
            match plan::answer(&obs, &issue, answer, at) {
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
    act(ctx, role, secrets, seen.secret.as_ref(), writes).await
}

/// Carries out the writes of a plan and turns its requeue into an `Action`.
async fn act(
    ctx: &Context,
    role: &AWSIAMRole,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    writes: Writes,
) -> Result<Acted> {
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
            return Ok(Acted::Done(Action::await_change()));
        }
        let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
        // Remembered, so that the watch event of this write triggers nothing and the next
        // reconcile decides from the cache; after a failure the next one reads live.
        let write = ctx.secrets.begin_write(&ns, &name);
        let written = write_secret(secrets, existing, desired).await;
        changed_meanwhile = write.finish(written.as_ref().ok());
        match written {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Ok(Acted::Conflict(kube::Error::Api(status)));
            }
            Err(e) => return Err(secret_write_failed(ctx, role, existing, e).await),
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
    let action = next_action(ctx, &RoleKey::of(role), requeue, changed_meanwhile);
    Ok(Acted::Done(action))
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

/// A failed write of the Secret: a Warning Event, and the error (the object backs off).
async fn secret_write_failed(
    ctx: &Context,
    role: &AWSIAMRole,
    existing: Option<&Secret>,
    e: kube::Error,
) -> Error {
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    let (reason, verb) = match existing {
        Some(_) => ("UpdateSecretFailed", "Update"),
        None => ("CreateSecretFailed", "Create"),
    };
    let message = format!("{verb} of Secret {ns}/{name} failed: {e}");
    ctx.event(role, Note::warning(reason, message)).await;
    e.into()
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
