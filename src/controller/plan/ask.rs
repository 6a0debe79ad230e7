//! What the role asks STS for, once its spec, its Secret's ownership, its role reference,
//! the namespace role policy and the session options allow it to ask; or the plan when they
//! do not. Pure.

use super::*;

/// The namespace role policy refuses the role: no STS call, credentials already in the Secret
/// withdrawn, status and a Warning Event say why.
fn deny(obs: &Observed<'_>, facts: Option<&Facts>, role_arn: &str, denial: Denial) -> Draft {
    let mut message = denial.message;
    if obs.secret.is_some() {
        message.push_str("; the Secret holds no credentials");
    }
    let holds_credentials = facts.is_some_and(|f| f.holds_credentials);
    let secret = obs.secret.filter(|_| holds_credentials).map(|s| {
        secret::desired(
            Some(s),
            obs.role,
            role_arn,
            Content::Withdrawn { issuance: None },
        )
    });
    Draft::Write(Writes {
        secret,
        status: Some(Outcome::Withdrawn {
            reason: "RoleNotPermitted",
            message: message.clone(),
            generation: generation(obs.role),
        }),
        events: vec![Note::warning("RoleNotPermitted", message)],
        policy: Some(PolicyState::Denied),
        ..Writes::nothing(Requeue::After(slow_requeue(obs.settings, obs.jitter)))
    })
}

/// What the role asks STS for now, once the spec, the Secret's ownership, the role reference,
/// the namespace policy and the session options allow it to be asked.
pub(super) struct Asked {
    pub(super) request: IssueRequest,
    pub(super) role_arn: String,
    pub(super) request_hash: String,
    pub(super) length: SessionLength,
    /// `--namespace-policy=audit`: what `enforce` would deny.
    pub(super) would_deny: Option<Denial>,
}

/// The request the role makes, or the plan when it cannot be asked (an invalid spec, a
/// foreign Secret, a bad reference, a refusal, an unknown identity or Namespace).
pub(super) fn ask(obs: &Observed<'_>, facts: Option<&Facts>) -> Result<Asked, Box<Draft>> {
    let role = obs.role;
    let (ns, name) = (role.namespace().unwrap_or_default(), role.name_any());
    if let Some(problem) = &role.spec.invalid {
        return Err(Box::new(not_ready(
            obs,
            "InvalidSpec",
            format!("the AWSIAMRole's spec cannot be read: {problem}"),
            Requeue::AwaitChange,
        )));
    }
    if facts.is_some_and(|f| f.ownership == Ownership::Foreign) {
        return Err(Box::new(not_ready(
            obs,
            "SecretConflict",
            format!(
                "Secret {ns}/{name} exists and is not managed by kube-aws-iam-controller; it is left untouched. Rename the AWSIAMRole or remove the Secret."
            ),
            Requeue::After(slow_requeue(obs.settings, obs.jitter)),
        )));
    }
    let arn = match arn::resolve(&role.spec.role_reference, obs.base_role_arn) {
        Ok(arn) => arn,
        Err(e) => {
            return Err(Box::new(not_ready(
                obs,
                "InvalidRoleReference",
                e.to_string(),
                Requeue::AwaitChange,
            )));
        }
    };
    let would_deny = verdict(obs, facts, &arn)?;
    let sts_options = &obs.settings.sts_options;
    let options = match sts_options.request(
        &ns,
        &name,
        role.spec.policy.as_deref(),
        &role.spec.policy_arns,
        &arn.partition,
    ) {
        Ok(options) => options,
        Err(e) => {
            return Err(Box::new(not_ready(
                obs,
                e.reason(),
                e.to_string(),
                Requeue::AwaitChange,
            )));
        }
    };
    let length = SessionLength::new(role.spec.role_session_duration, obs.chained);
    let role_arn = arn.to_string();
    let request = IssueRequest {
        role_arn: arn,
        session_name: arn::session_name(&ns, &name),
        duration_seconds: length.seconds,
        options,
    };
    let request_hash = request_hash(&request, length.requested);
    Ok(Asked {
        request,
        role_arn,
        request_hash,
        length,
        would_deny,
    })
}

/// The namespace role policy's verdict on `arn`: what `enforce` would deny under `audit`, or the
/// plan when the role is refused or cannot be judged yet.
fn verdict(
    obs: &Observed<'_>,
    facts: Option<&Facts>,
    arn: &RoleArn,
) -> Result<Option<Denial>, Box<Draft>> {
    match obs.policy.judge(arn, obs.base_role_arn) {
        Judgement::IdentityUnknown => Err(Box::new(not_ready(
            obs,
            IDENTITY_UNKNOWN,
            "the controller does not know its own identity yet (STS GetCallerIdentity fails): nothing is issued until it does; the Secret keeps what it holds".into(),
            Requeue::Backoff(backoff(obs)),
        ))),
        Judgement::NamespaceUnknown(_) => Err(Box::new(Draft::Write(Writes::nothing(
            Requeue::After(
                obs.settings
                    .backoff_base
                    .mul_f64(1.0 + obs.jitter.clamp(0.0, 1.0)),
            ),
        )))),
        Judgement::Verdict(Verdict::Denied(denial)) => {
            Err(Box::new(deny(obs, facts, &arn.to_string(), denial)))
        }
        Judgement::Verdict(Verdict::WouldDeny(denial)) => Ok(Some(denial)),
        Judgement::Verdict(Verdict::Permitted) => Ok(None),
    }
}
