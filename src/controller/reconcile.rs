//! One reconcile of one AWSIAMRole, in passes of observe → decide → act. Observe: the role
//! (live when the cache may be behind this process's own status write) and its Secret (from the
//! watch cache when its data is known, else live: [`super::known`]), and everything the plan
//! judges by. Decide: [`plan::decide`], and for an STS call its answer ([`plan::answer`]);
//! [`plan::prepare`] makes the writes ready to send. Act: [`act`] sends them. A write that
//! conflicts (the object changed since it was observed) sends the reconcile back to observe
//! (live) and decide again, once; an STS answer in hand for the same request is used, not asked
//! again.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::act::{self, Acted};
use super::context::Context;
use super::key::RoleKey;
use super::known::Observation;
use super::plan::{self, Observed, Plan, Resolution};
use super::secret::Known;
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
    if !ctx.leader.is_leader() || role.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // The policy judges from the Namespace cache: at start, wait until it is filled.
    ctx.policy.namespaces_synced().await;
    // And for the controller's own identity, briefly: at start it is usually learned in
    // moments, and a role judged before that would say it waits for it.
    ctx.policy.identity_known(ctx.settings.backoff_base).await;
    let mut answers = Answers::default();
    let mut seen = observe(ctx, observe_role(ctx, role).await?, false).await?;
    let mut again = false;
    loop {
        match pass(ctx, &seen, &mut answers).await? {
            Passed::Done(action) => return Ok(action),
            Passed::Conflict(verb, e) if again => {
                return Err(act::secret_write_failed(ctx, &seen.role, verb, e).await);
            }
            Passed::Conflict(..) => {
                info!("the secret changed meanwhile: observing it again");
                again = true;
                seen = observe(ctx, seen.role, true).await?;
            }
        }
    }
}

/// What one reconcile observed.
struct Seen<'a> {
    /// The role as the watch delivered it, or read live.
    role: Cow<'a, AWSIAMRole>,
    secret: Option<Secret>,
    /// The Secret's data as this process last wrote or read it (cached observations only).
    known: Option<Known>,
}

/// Observes the role: as the watch delivered it, or read live when the cache may be behind
/// this process's own last status write, which a patch on it would conflict with.
async fn observe_role<'a>(ctx: &Context, role: &'a AWSIAMRole) -> Result<Cow<'a, AWSIAMRole>> {
    let behind = ctx
        .statuses
        .behind(&RoleKey::of(role), role.resource_version().as_deref());
    Ok(match behind || role.resource_version().is_none() {
        true => read_role(ctx, role)
            .await?
            .map_or(Cow::Borrowed(role), Cow::Owned),
        false => Cow::Borrowed(role),
    })
}

/// Observes the role's Secret: from the watch cache when its data is known, else (or when
/// `live` is set: its write conflicted) read live.
async fn observe<'a>(ctx: &Context, role: Cow<'a, AWSIAMRole>, live: bool) -> Result<Seen<'a>> {
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    let cached = match ctx.secrets.observe(&ns, &name) {
        Observation::Cached { metadata, known } if !live => Some((*metadata, *known)),
        _ => None,
    };
    if let Some((metadata, known)) = cached {
        ctx.metrics.secret_observed("cache");
        return Ok(Seen {
            role,
            secret: Some(metadata),
            known: Some(known),
        });
    }
    ctx.metrics.secret_observed("api");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets.get_opt(&name).await?;
    ctx.secrets.record(&ns, &name, secret.as_ref());
    Ok(Seen {
        role,
        secret,
        known: None,
    })
}

/// The role read live; `None` when it is gone or was replaced (its own watch events follow).
async fn read_role(ctx: &Context, role: &AWSIAMRole) -> Result<Option<AWSIAMRole>> {
    let api: Api<AWSIAMRole> =
        Api::namespaced(ctx.client.clone(), &role.namespace().unwrap_or_default());
    let live = api.get_opt(&role.name_any()).await?;
    Ok(live.filter(|l| l.uid() == role.uid()))
}

/// Everything the plan judges by, from what was seen and the shared state.
fn observed<'s>(
    ctx: &'s Context,
    seen: &'s Seen<'_>,
    base_role_arn: Option<&'s crate::aws::BaseRoleArn>,
    policy: &'s super::policy::PolicyView,
) -> Observed<'s> {
    Observed {
        role: &seen.role,
        secret: seen.secret.as_ref(),
        known: seen.known.as_ref(),
        now: Utc::now(),
        settings: &ctx.settings,
        base_role_arn,
        failures: ctx.backoff.failures(&RoleKey::of(seen.role.as_ref())),
        jitter: rand::random::<f64>(),
        policy,
        chained: ctx.learned.is_chained(),
    }
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

/// What came of one pass.
enum Passed {
    Done(Action),
    /// The Secret's write (`Create` or `Update`) conflicted: it changed since it was observed.
    Conflict(&'static str, kube::Error),
}

/// One pass: decides from `seen` (with the STS call the plan asks for, its answer resolved by
/// the plan: at most one capped retry, see `plan::Resolution::Chained`) and acts.
async fn pass(ctx: &Context, seen: &Seen<'_>, answers: &mut Answers) -> Result<Passed> {
    let base = ctx.learned.base_role_arn();
    let policy = ctx.policy.view(&seen.role);
    let obs = observed(ctx, seen, base.as_ref(), &policy);
    let prepared = match plan::decide(&obs) {
        Plan::Write(prepared) => prepared,
        Plan::Issue(mut issue) => loop {
            let Some((answer, at)) = answers.ask(ctx, &issue.request).await else {
                return Ok(Passed::Done(Action::await_change()));
            };
            match plan::answer(&obs, &issue, answer, at) {
                Resolution::Write(prepared) => break prepared,
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
    match act::carry_out(ctx, obs.role, prepared, false).await? {
        Acted::Done(action) => Ok(Passed::Done(action)),
        Acted::SecretConflict(verb, e) => Ok(Passed::Conflict(verb, e)),
        // The role moved on since it was observed (a newer generation, or this process's own
        // write not in the cache yet): the status is judged again against the live object, and
        // the rest of the pass carried out; a second conflict is an error (the object backs off).
        Acted::StatusConflict {
            rest,
            changed_meanwhile,
            ..
        } => {
            let live = read_role(ctx, obs.role).await?;
            let (role, rest) = match &live {
                Some(live) => (live, rest.rejudged(&Observed { role: live, ..obs })),
                None => (obs.role, rest.without_status()),
            };
            match act::carry_out(ctx, role, rest, changed_meanwhile).await? {
                Acted::Done(action) => Ok(Passed::Done(action)),
                Acted::StatusConflict { error, .. } => Err(error.into()),
                Acted::SecretConflict(verb, e) => Ok(Passed::Conflict(verb, e)),
            }
        }
    }
}

/// One `AssumeRole` call, counted in the metrics (its span names the role, never a credential); `None` when this replica is not the leader
/// (any more) and so must not call.
#[instrument(name = "sts_assume_role", skip_all, fields(role_arn = %request.role_arn, duration_s = request.duration_seconds))]
async fn assume(
    ctx: &Context,
    request: IssueRequest,
) -> Option<Result<IssuedCredentials, IssueError>> {
    if !ctx.leader.may_write(&ctx.metrics, "sts") {
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
