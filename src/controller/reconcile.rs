//! One reconcile of one AWSIAMRole: decide, issue, write the Secret, write status, requeue.

use std::sync::Arc;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::context::{Context, MANAGER, Note};
use super::plan::{self, Decision, IssueReason};
use super::policy::Judgement;
use super::secret::{self, Ownership, Stored};
use super::status;
use super::status::Outcome;
use crate::aws::arn::{self, RoleArn};
use crate::aws::options::{self, SessionLength};
use crate::aws::{FailureKind, IssueError, IssueRequest, IssuedCredentials, RequestOptions};
use crate::crd::AWSIAMRole;
use crate::metrics::PolicyState;
use crate::policy::{Denial, Verdict};
use crate::{Error, Result};

fn key(role: &AWSIAMRole) -> String {
    format!(
        "{}/{}",
        role.namespace().unwrap_or_default(),
        role.name_any()
    )
}

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
    if result.is_ok() {
        ctx.backoff.reset(&key(&role));
        ctx.metrics.set_backoff(ctx.backoff.len());
    }
    result
}

/// Transient failures: retry this object with exponential backoff and jitter.
pub fn error_policy(role: Arc<AWSIAMRole>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.backoff.fail(&key(&role));
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

async fn reconcile_role(role: &AWSIAMRole, ctx: &Context) -> Result<Action> {
    // Followers only keep their caches warm; every object is reconciled again on takeover.
    if !ctx.is_leader() || role.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = role.namespace().unwrap_or_default();
    let name = role.name_any();
    let generation = role.meta().generation.unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&name).await?;

    if let Some(s) = &existing
        && secret::ownership(s, role) == Ownership::Foreign
    {
        let message = format!(
            "Secret {ns}/{name} exists and is not managed by kube-aws-iam-controller; it is left untouched. Rename the AWSIAMRole or remove the Secret."
        );
        warn!(namespace = ns, name, "secret name conflict");
        fail(ctx, role, "SecretConflict", message, generation).await?;
        return Ok(Action::requeue(ctx.settings.max_backoff));
    }

    let arn = match arn::resolve(&role.spec.role_reference, ctx.base_role_arn().as_ref()) {
        Ok(arn) => arn,
        Err(e) => {
            warn!(namespace = ns, name, error = %e, "invalid role reference");
            fail(ctx, role, "InvalidRoleReference", e.to_string(), generation).await?;
            return Ok(Action::await_change());
        }
    };
    let arn_text = arn.to_string();
    let would_deny = match ctx.policy.judge(role, &arn, ctx.base_role_arn().as_ref()) {
        Judgement::Pending(why) => {
            debug!(
                namespace = ns,
                name, why, "namespace role policy not known yet"
            );
            return Ok(Action::requeue(ctx.settings.backoff_base));
        }
        Judgement::Verdict(Verdict::Denied(denial)) => {
            return deny(ctx, role, &secrets, existing.as_ref(), denial).await;
        }
        Judgement::Verdict(Verdict::WouldDeny(denial)) => {
            ctx.metrics.policy(&key(role), PolicyState::WouldDeny);
            if !status::would_deny(role.status.as_ref()) {
                warn!(
                    namespace = ns,
                    name,
                    role_arn = arn_text,
                    "the namespace role policy would deny this role (audit)"
                );
                ctx.event(
                    role,
                    Note {
                        warning: true,
                        reason: "PolicyWouldDeny",
                        message: format!("{denial}; issued because --namespace-policy=audit"),
                    },
                )
                .await;
            }
            Some(denial.message)
        }
        Judgement::Verdict(Verdict::Permitted) => {
            ctx.metrics.policy(&key(role), PolicyState::Permitted);
            None
        }
    };
    let sts_options = &ctx.settings.sts_options;
    let options = match sts_options.request(
        &ns,
        &name,
        role.spec.policy.as_deref(),
        &role.spec.policy_arns,
        &arn.partition,
    ) {
        Ok(options) => options,
        Err(e) => {
            warn!(namespace = ns, name, error = %e, "invalid session options");
            fail(ctx, role, e.reason(), e.to_string(), generation).await?;
            return Ok(Action::await_change());
        }
    };
    // At most one hour under role chaining; the refresh window follows what is sent.
    let length = ctx.learned.session_length(role.spec.role_session_duration);
    let session = length.seconds;
    let stored = existing.as_ref().and_then(secret::read);
    let now = Utc::now();
    let decision = plan::decide(
        &arn_text,
        generation,
        session,
        stored.as_ref(),
        existing.is_some(),
        now,
        ctx.settings.refresh_limit,
    );
    match (decision, stored) {
        (Decision::Keep { refresh_at }, Some(stored)) => {
            let desired = secret::render(role, &stored.credentials, &arn_text);
            if existing.as_ref().is_some_and(|s| needs_repair(s, &desired)) {
                info!(namespace = ns, name, "restoring edited secret");
                write_secret(&secrets, existing.as_ref(), desired).await?;
            }
            ctx.report(
                role,
                ready(&arn_text, &stored, generation, length, would_deny),
                None,
                false,
            )
            .await?;
            Ok(Action::requeue(plan::requeue_after(
                refresh_at,
                now,
                rand::random::<f64>(),
            )))
        }
        (Decision::Issue(reason), stored) => {
            issue(
                ctx,
                role,
                &secrets,
                existing.as_ref(),
                stored,
                arn,
                reason,
                length,
                options,
                would_deny,
            )
            .await
        }
        (Decision::Keep { .. }, None) => Ok(Action::requeue(ctx.settings.backoff_base)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn issue(
    ctx: &Context,
    role: &AWSIAMRole,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    stored: Option<Stored>,
    arn: RoleArn,
    reason: IssueReason,
    length: SessionLength,
    options: RequestOptions,
    would_deny: Option<String>,
) -> Result<Action> {
    let ns = role.namespace().unwrap_or_default();
    let name = role.name_any();
    let generation = role.meta().generation.unwrap_or_default();
    let arn_text = arn.to_string();
    let request = |length: SessionLength| IssueRequest {
        role_arn: arn.clone(),
        session_name: arn::session_name(&ns, &name),
        duration_seconds: length.seconds,
        options: options.clone(),
    };
    let mut length = length;
    let mut result = assume(ctx, request(length)).await;
    // STS says the controller's credentials are a role session (seed credentials, IRSA, ...):
    // from now on every session is capped at one hour, this one at once.
    if let Err(e) = &result
        && options::is_chaining_limit(&e.code, &e.message)
        && length.seconds > options::CHAINED_MAX_SECONDS
    {
        ctx.learned.mark_chained();
        info!(
            namespace = ns,
            name,
            "STS treats the controller's credentials as a role session: sessions are capped at one hour"
        );
        length = ctx.learned.session_length(length.requested);
        result = assume(ctx, request(length)).await;
    }

    let creds = match result {
        Ok(creds) => creds,
        Err(e) => {
            // The Secret must never hold credentials of a role other than the one the spec
            // names: after a roleReference change, the old role's credentials go.
            if let Some(current) = existing
                && stored.as_ref().is_some_and(|s| s.role_arn != arn_text)
            {
                withdraw(secrets, current).await?;
                info!(
                    namespace = ns,
                    name,
                    role_arn = arn_text,
                    "credentials of the previous role withdrawn"
                );
                let message = format!(
                    "AssumeRole {arn_text} failed: {e}; the credentials of the previous role were withdrawn from the Secret"
                );
                ctx.report(
                    role,
                    Outcome::Withdrawn {
                        reason: e.reason(),
                        message: message.clone(),
                        generation,
                    },
                    Some(Note {
                        warning: true,
                        reason: "GetCredentialsFailed",
                        message,
                    }),
                    false,
                )
                .await?;
                return match e.kind {
                    FailureKind::Permanent => Ok(Action::requeue(ctx.settings.max_backoff)),
                    FailureKind::Transient => Err(Error::Sts(e)),
                };
            }
            let kept = stored
                .as_ref()
                .filter(|s| s.credentials.expiration > Utc::now())
                .map(|s| {
                    format!(
                        "; the Secret keeps the previous credentials, valid until {}",
                        s.credentials
                            .expiration
                            .to_rfc3339_opts(SecondsFormat::Secs, true)
                    )
                })
                .unwrap_or_default();
            warn!(
                namespace = ns,
                name,
                role_arn = arn_text,
                code = e.code,
                permanent = e.kind == FailureKind::Permanent,
                "AssumeRole failed"
            );
            let message = format!("AssumeRole {arn_text} failed: {e}{kept}");
            ctx.report(
                role,
                Outcome::NotReady {
                    reason: e.reason(),
                    message: message.clone(),
                    generation,
                },
                Some(Note {
                    warning: true,
                    reason: "GetCredentialsFailed",
                    message,
                }),
                false,
            )
            .await?;
            return match e.kind {
                FailureKind::Permanent => Ok(Action::requeue(ctx.settings.max_backoff)),
                FailureKind::Transient => Err(Error::Sts(e)),
            };
        }
    };
    if creds.expiration <= Utc::now() {
        return Err(Error::ExpiredOnArrival(creds.expiration.to_rfc3339()));
    }

    let desired = secret::render(role, &creds, &arn_text);
    if let Err(e) = write_secret(secrets, existing, desired).await {
        let verb = if existing.is_some() {
            "Update"
        } else {
            "Create"
        };
        ctx.event(
            role,
            Note {
                warning: true,
                reason: if existing.is_some() {
                    "UpdateSecretFailed"
                } else {
                    "CreateSecretFailed"
                },
                message: format!("{verb} of Secret {ns}/{name} failed: {e}"),
            },
        )
        .await;
        return Err(e.into());
    }
    ctx.metrics.issued(reason.as_str());
    let expiry = creds.expiration.to_rfc3339_opts(SecondsFormat::Secs, true);
    info!(
        namespace = ns,
        name,
        role_arn = arn_text,
        expire = expiry,
        reason = reason.as_str(),
        "credentials issued"
    );
    let stored = Stored {
        role_arn: arn_text.clone(),
        generation,
        credentials: creds,
    };
    let (event_reason, verb) = if existing.is_none() {
        ("CreateCredentials", "Created")
    } else {
        ("UpdateCredentials", "Updated")
    };
    ctx.report(
        role,
        ready(&arn_text, &stored, generation, length, would_deny),
        Some(Note {
            warning: false,
            reason: event_reason,
            message: format!("{verb} credentials for role '{arn_text}', expiry time: {expiry}"),
        }),
        true,
    )
    .await?;
    let refresh_at = stored.credentials.expiration
        - plan::refresh_window(length.seconds, ctx.settings.refresh_limit);
    Ok(Action::requeue(plan::requeue_after(
        refresh_at,
        Utc::now(),
        rand::random::<f64>(),
    )))
}

/// One `AssumeRole` call, counted in the metrics.
async fn assume(ctx: &Context, request: IssueRequest) -> Result<IssuedCredentials, IssueError> {
    let started = Instant::now();
    let result = ctx.issuer.assume_role(request).await;
    let label = match &result {
        Ok(_) => "Success",
        Err(e) => e.reason(),
    };
    ctx.metrics
        .sts_call("AssumeRole", label, started.elapsed().as_secs_f64());
    result
}

fn ready(
    arn: &str,
    stored: &Stored,
    generation: i64,
    length: SessionLength,
    would_deny: Option<String>,
) -> Outcome {
    Outcome::Ready {
        role_arn: arn.to_string(),
        expiration: stored.credentials.expiration,
        generation,
        message: status::ready_message(arn, stored.credentials.expiration, length),
        would_deny,
    }
}

/// The role is not permitted: no STS call, credentials already in the Secret withdrawn, status
/// and a Warning Event say why.
async fn deny(
    ctx: &Context,
    role: &AWSIAMRole,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    denial: Denial,
) -> Result<Action> {
    let ns = role.namespace().unwrap_or_default();
    let name = role.name_any();
    ctx.metrics.policy(&key(role), PolicyState::Denied);
    let mut message = denial.message;
    if let Some(current) = existing {
        if secret::holds_credentials(current) {
            withdraw(secrets, current).await?;
            info!(
                namespace = ns,
                name, "credentials withdrawn: the role is not permitted"
            );
        }
        message.push_str("; the Secret holds no credentials");
    }
    warn!(namespace = ns, name, "role not permitted");
    let generation = role.meta().generation.unwrap_or_default();
    ctx.report(
        role,
        Outcome::Withdrawn {
            reason: "RoleNotPermitted",
            message: message.clone(),
            generation,
        },
        Some(Note {
            warning: true,
            reason: "RoleNotPermitted",
            message,
        }),
        false,
    )
    .await?;
    Ok(Action::requeue(ctx.settings.max_backoff))
}

/// Removes the credentials from an owned Secret (a merge patch nulling [`secret::WITHDRAWN_KEYS`],
/// with the resourceVersion it was read at, so a Secret changed in between is not touched).
async fn withdraw(secrets: &Api<Secret>, current: &Secret) -> Result<(), kube::Error> {
    let nulls: serde_json::Map<String, serde_json::Value> = secret::WITHDRAWN_KEYS
        .iter()
        .map(|k| (k.to_string(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "data": nulls,
    });
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    secrets
        .patch(&current.name_any(), &pp, &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

async fn fail(
    ctx: &Context,
    role: &AWSIAMRole,
    reason: &'static str,
    message: String,
    generation: i64,
) -> Result<(), kube::Error> {
    ctx.report(
        role,
        Outcome::NotReady {
            reason,
            message: message.clone(),
            generation,
        },
        Some(Note {
            warning: true,
            reason,
            message,
        }),
        false,
    )
    .await
}

/// True when any key, label or the owner reference we write is missing or different, or the
/// type differs. Keys and labels others added are left alone (and do not cause a write).
fn needs_repair(existing: &Secret, desired: &Secret) -> bool {
    let labels = existing.labels();
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let owners = existing.owner_references();
    let owner_ok = desired
        .owner_references()
        .iter()
        .all(|d| owners.iter().any(|o| o.uid == d.uid));
    let data = existing.data.clone().unwrap_or_default();
    let data_ok = desired
        .data
        .iter()
        .flatten()
        .all(|(k, v)| data.get(k) == Some(v));
    !data_ok || !labels_ok || !owner_ok || existing.type_ != desired.type_
}

/// Creates the Secret, or applies it with the resourceVersion we checked ownership against,
/// so a Secret replaced in between by someone else is never overwritten.
async fn write_secret(
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    mut desired: Secret,
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
            desired.metadata.resource_version = current.resource_version();
            secrets
                .patch(
                    &desired.name_any(),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
        }
    }
}
