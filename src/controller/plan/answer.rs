//! STS's answer turned into the writes, ready to send: the Secret, status and Events of an
//! issue, a failure, or the one capped retry of role chaining. Pure.

use super::*;

/// What STS's answer to an [`Issue`] leads to.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "one per STS answer, moved once")]
pub enum Resolution {
    /// Send these.
    Write(Prepared),
    /// STS refused the session length because the controller's credentials are a role session
    /// (role chaining caps sessions at one hour): remember that, and ask again at once with
    /// this capped request. At most once per reconcile: the capped request is within the cap.
    Chained(Issue),
}

/// Turns STS's answer to `issue` into what to do next: the writes, or the one capped retry
/// when STS says the controller's credentials are a role session.
pub fn answer(
    obs: &Observed<'_>,
    issue: &Issue,
    answer: Result<IssuedCredentials, IssueError>,
    now: DateTime<Utc>,
) -> Resolution {
    match &answer {
        Err(e)
            if options::is_chaining_limit(&e.code, &e.message)
                && issue.length.seconds > options::CHAINED_MAX_SECONDS =>
        {
            let length = SessionLength::new(issue.length.requested, true);
            Resolution::Chained(Issue {
                request: IssueRequest {
                    duration_seconds: length.seconds,
                    ..issue.request.clone()
                },
                length,
                ..issue.clone()
            })
        }
        // Prepared as of the answer's arrival.
        _ => Resolution::Write(prepare(
            &Observed { now, ..*obs },
            resolve(obs, issue, answer, now),
        )),
    }
}

/// Turns STS's answer to `issue` into the writes; `now` is when the answer arrived.
pub fn resolve(
    obs: &Observed<'_>,
    issue: &Issue,
    answer: Result<IssuedCredentials, IssueError>,
    now: DateTime<Utc>,
) -> Writes {
    let role = obs.role;
    let generation = generation(role);
    let arn = &issue.role_arn;
    let creds = match answer {
        Ok(creds) => creds,
        Err(e) => return failed(obs, issue, &e, now),
    };
    if creds.expiration <= now {
        return expired_on_arrival(obs, arn, &creds);
    }
    let issuance = Issuance {
        owner_uid: role.meta().uid.clone().unwrap_or_default(),
        request_hash: issue.request_hash.clone(),
        issued_at: now,
    };
    let desired = secret::desired(
        obs.secret,
        role,
        arn,
        Content::Credentials {
            creds: &creds,
            issuance: Some(&issuance),
        },
    );
    let (event, requeue) = announce_and_requeue(obs, arn, &creds, now);
    let would_deny = issue.would_deny.as_ref();
    Writes {
        secret: Some(desired),
        status: Some(ready(
            arn,
            creds.expiration,
            generation,
            issue.length,
            would_deny,
        )),
        events: would_deny_note(obs, would_deny)
            .into_iter()
            .chain([event])
            .collect(),
        requeue,
        issued: Some(issue.reason),
        policy: Some(policy_state(would_deny)),
    }
}

/// Credentials that expired before they arrived: not written; not ready, with backoff.
fn expired_on_arrival(obs: &Observed<'_>, arn: &str, creds: &IssuedCredentials) -> Writes {
    let message = format!(
        "AssumeRole {arn} returned credentials that expire at {}, which is not in the future (is the controller's clock ahead?)",
        secret::go_rfc3339(&creds.expiration)
    );
    Writes {
        status: Some(Outcome::NotReady {
            reason: "ExpiredOnArrival",
            message: message.clone(),
            generation: generation(obs.role),
        }),
        events: vec![Note::warning("ExpiredOnArrival", message)],
        ..Writes::nothing(Requeue::Backoff(backoff(obs)))
    }
}

/// The Event that announces fresh credentials and when to renew them: at the refresh point,
/// or with backoff (and a warning) when they arrived already inside the refresh window.
fn announce_and_requeue(
    obs: &Observed<'_>,
    arn: &str,
    creds: &IssuedCredentials,
    now: DateTime<Utc>,
) -> (Note, Requeue) {
    let expiry = secret::go_rfc3339(&creds.expiration);
    let refresh = refresh_at(now, creds.expiration, obs.settings.refresh_limit);
    let floor = obs.settings.backoff_base;
    if refresh - now < chrono::Duration::from_std(floor).unwrap_or_default() {
        // Arrived already inside the refresh window: renewing at once would loop.
        let lifetime = (creds.expiration - now).num_seconds();
        (
            Note::warning(
                "ShortLivedCredentials",
                format!(
                    "AssumeRole {arn} returned credentials valid for {lifetime}s only (until {expiry}); retrying with backoff"
                ),
            ),
            Requeue::Backoff(backoff(obs)),
        )
    } else {
        let (reason, verb) = if obs.secret.is_none() {
            ("CreateCredentials", "Created")
        } else {
            ("UpdateCredentials", "Updated")
        };
        (
            Note {
                severity: Severity::Normal,
                reason,
                message: format!("{verb} credentials for role '{arn}', expiry time: {expiry}"),
                announce: Announce::Always,
            },
            Requeue::After(requeue_after(refresh, now, obs.jitter, floor)),
        )
    }
}

fn failed(obs: &Observed<'_>, issue: &Issue, e: &IssueError, now: DateTime<Utc>) -> Writes {
    let arn = &issue.role_arn;
    // The Secret never holds credentials of a role other than the one the spec names.
    let withdraw = issue.stored.as_ref().is_some_and(|s| &s.role_arn != arn);
    let kept = issue
        .stored
        .as_ref()
        .filter(|s| !withdraw && s.expiration > now)
        .map(|s| {
            format!(
                "; the Secret keeps the previous credentials, valid until {}",
                secret::go_rfc3339(&s.expiration)
            )
        })
        .unwrap_or_default();
    let withdrawn = if withdraw {
        format!(
            "; the credentials of {} were removed from the Secret",
            issue
                .stored
                .as_ref()
                .map(|s| s.role_arn.as_str())
                .unwrap_or_default()
        )
    } else {
        String::new()
    };
    let message = format!("AssumeRole {arn} failed: {e}{kept}{withdrawn}");
    let requeue = match e.kind {
        FailureKind::Permanent => Requeue::After(slow_requeue(obs.settings, obs.jitter)),
        FailureKind::Transient => Requeue::Backoff(backoff(obs)),
    };
    let refused = Issuance {
        owner_uid: obs.role.meta().uid.clone().unwrap_or_default(),
        request_hash: issue.request_hash.clone(),
        issued_at: now,
    };
    Writes {
        secret: withdraw.then(|| {
            secret::desired(
                obs.secret,
                obs.role,
                arn,
                Content::Withdrawn {
                    issuance: Some(&refused),
                },
            )
        }),
        status: Some(if withdraw {
            Outcome::Withdrawn {
                reason: e.reason(),
                message: message.clone(),
                generation: generation(obs.role),
            }
        } else {
            Outcome::NotReady {
                reason: e.reason(),
                message: message.clone(),
                generation: generation(obs.role),
            }
        }),
        events: vec![Note::warning("GetCredentialsFailed", message)],
        requeue,
        issued: None,
        policy: Some(policy_state(issue.would_deny.as_ref())),
    }
}
