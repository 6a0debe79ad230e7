//! The next `status` of an AWSIAMRole, with a `Ready` condition. Pure.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::aws::options::SessionLength;
use kube::Resource;

use crate::crd::{AWSIAMRole, AWSIAMRoleSpec, AWSIAMRoleStatus, Condition};

/// What the reconcile found, as far as status is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret holds valid credentials for the current generation.
    Ready {
        role_arn: String,
        expiration: DateTime<Utc>,
        generation: i64,
        message: String,
        /// `--namespace-policy=audit`: what `enforce` would deny, or `None`.
        would_deny: Option<String>,
    },
    /// Something is wrong; whatever credentials the Secret holds stay, and so do the
    /// status fields that describe them.
    NotReady {
        reason: &'static str,
        message: String,
        generation: i64,
    },
    /// The Secret's credentials were withdrawn (or there are none to keep): the status no
    /// longer names a role or an expiration.
    Withdrawn {
        reason: &'static str,
        message: String,
        generation: i64,
    },
}

impl Outcome {
    /// The generation this outcome describes.
    pub fn generation(&self) -> i64 {
        match self {
            Outcome::Ready { generation, .. }
            | Outcome::NotReady { generation, .. }
            | Outcome::Withdrawn { generation, .. } => *generation,
        }
    }
}

pub const READY: &str = "Ready";
/// `True` while `--namespace-policy=audit` issues a role that `enforce` would deny.
pub const POLICY_WOULD_DENY: &str = "PolicyWouldDeny";
/// Longest condition or Event message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` fit for status and Events: control characters (newlines, escapes, bidi
/// overrides) become spaces, and it is cut to [`MAX_MESSAGE_BYTES`] on a character boundary.
pub fn bounded(message: &str) -> String {
    let clean: String = message
        .chars()
        .map(|c| {
            if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
            {
                ' '
            } else {
                c
            }
        })
        .collect();
    if clean.len() <= MAX_MESSAGE_BYTES {
        return clean;
    }
    const MORE: &str = " …";
    let mut end = MAX_MESSAGE_BYTES - MORE.len();
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &clean[..end])
}

/// Normal or Warning Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// When an Event is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Every time (credentials issued).
    Always,
    /// Only when the Ready condition's status or reason changes.
    OnTransition,
}

/// An Event about one AWSIAMRole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    pub reason: &'static str,
    pub message: String,
    pub announce: Announce,
}

impl Note {
    pub fn warning(reason: &'static str, message: String) -> Self {
        Note {
            severity: Severity::Warning,
            reason,
            message,
            announce: Announce::OnTransition,
        }
    }
}

/// Whether the status stored now (`live_generation`, `live`) may be replaced by one computed
/// for `generation`: not when the object has moved on to a newer generation (its own reconcile
/// writes that one), and never so that `observedGeneration` goes backwards.
pub fn may_write(
    live_generation: Option<i64>,
    live: Option<&AWSIAMRoleStatus>,
    generation: i64,
) -> bool {
    let stored = live.and_then(|s| s.observed_generation).unwrap_or(0);
    let conditions = live
        .into_iter()
        .flat_map(|s| s.conditions.iter())
        .filter_map(|c| c.observed_generation)
        .max()
        .unwrap_or(0);
    live_generation.unwrap_or(generation) <= generation
        && stored <= generation
        && conditions <= generation
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The message of `Ready=True`: `credentials for <arn> valid until <time>`, and when the
/// session is shorter than `spec.roleSessionDuration` because of role chaining, that and why.
pub fn ready_message(role_arn: &str, expiration: DateTime<Utc>, session: SessionLength) -> String {
    let mut message = format!(
        "credentials for {role_arn} valid until {}",
        time(expiration)
    );
    if session.is_capped() {
        message.push_str(&format!(
            "; roleSessionDuration {}s was capped to {}s: the controller's own credentials are a role session (--assume-role or seed credentials), and AWS limits sessions assumed from one (role chaining) to 1 hour",
            session.requested, session.seconds
        ));
    }
    message
}

/// What writing an outcome onto an object's status takes, judged against the status it holds.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusWrite {
    /// The status already says it.
    Unchanged,
    /// The object moved on to a newer generation, or its status speaks of one ([`may_write`]):
    /// not this outcome's to write.
    Stale,
    /// This merge patch ([`merge_patch`]); `transition` when the Ready condition's status or
    /// reason changes ([`is_transition`]): only then do Events sent on transition go out.
    Patch {
        patch: serde_json::Value,
        transition: bool,
    },
}

/// Judges the status write of `outcome` onto `object` (its status, generation and binding).
pub fn write(object: &AWSIAMRole, outcome: &Outcome, now: DateTime<Utc>) -> StatusWrite {
    let current = object.status.as_ref();
    let next = with_binding(next(current, outcome, now), &object.spec);
    if current == Some(&next) {
        return StatusWrite::Unchanged;
    }
    if !may_write(object.meta().generation, current, outcome.generation()) {
        return StatusWrite::Stale;
    }
    StatusWrite::Patch {
        patch: merge_patch(current, &next),
        transition: is_transition(current, &next),
    }
}

/// Builds the status for `outcome`, keeping `lastTransitionTime` while the condition's status
/// does not change.
pub fn next(
    current: Option<&AWSIAMRoleStatus>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> AWSIAMRoleStatus {
    let mut status = current.cloned().unwrap_or_default();
    let (cond_status, reason, message, generation) = match outcome {
        Outcome::Ready {
            role_arn,
            expiration,
            generation,
            message,
            would_deny,
        } => {
            status.observed_generation = Some(*generation);
            status.role_arn = Some(role_arn.clone());
            status.expiration = Some(time(*expiration));
            set_would_deny(&mut status, would_deny.as_deref(), *generation, now);
            ("True", "CredentialsIssued", message.clone(), *generation)
        }
        Outcome::NotReady {
            reason,
            message,
            generation,
        } => ("False", *reason, message.clone(), *generation),
        Outcome::Withdrawn {
            reason,
            message,
            generation,
        } => {
            status.role_arn = None;
            status.expiration = None;
            status.conditions.retain(|c| c.type_ != POLICY_WOULD_DENY);
            ("False", *reason, message.clone(), *generation)
        }
    };
    let previous = status.conditions.iter().find(|c| c.type_ == READY);
    let last_transition_time = match previous {
        Some(p) if p.status == cond_status => p.last_transition_time.clone(),
        _ => time(now),
    };
    let ready = Condition {
        type_: READY.into(),
        status: cond_status.into(),
        reason: reason.into(),
        message: bounded(&message),
        last_transition_time,
        observed_generation: Some(generation),
    };
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    status
}

/// `status` with `serviceAccounts` showing `spec`'s ServiceAccount binding (docs/security.md):
/// the names comma-separated, `<none>` for an empty list, absent while the role is unbound.
pub fn with_binding(mut status: AWSIAMRoleStatus, spec: &AWSIAMRoleSpec) -> AWSIAMRoleStatus {
    status.service_accounts = spec.service_account_names.as_ref().map(|names| {
        if names.is_empty() {
            "<none>".to_string()
        } else {
            names.join(",")
        }
    });
    status
}

/// The `PolicyWouldDeny` condition: `True` with the reason while audit mode issues a role that
/// enforce would deny; removed once the policy permits it.
fn set_would_deny(
    status: &mut AWSIAMRoleStatus,
    would_deny: Option<&str>,
    generation: i64,
    now: DateTime<Utc>,
) {
    let previous = status
        .conditions
        .iter()
        .find(|c| c.type_ == POLICY_WOULD_DENY)
        .cloned();
    status.conditions.retain(|c| c.type_ != POLICY_WOULD_DENY);
    if let Some(message) = would_deny {
        status.conditions.push(Condition {
            type_: POLICY_WOULD_DENY.into(),
            status: "True".into(),
            reason: "RoleNotPermitted".into(),
            message: bounded(message),
            last_transition_time: previous
                .filter(|p| p.status == "True")
                .map(|p| p.last_transition_time)
                .unwrap_or_else(|| time(now)),
            observed_generation: Some(generation),
        });
    }
}

/// True when `status` says audit mode found the role outside the namespace policy.
pub fn would_deny(status: Option<&AWSIAMRoleStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == POLICY_WOULD_DENY && c.status == "True")
    })
}

/// The JSON merge patch body for `status` that turns `current` into `next`: fields `next`
/// drops (a withdrawal clears `roleARN` and `expiration`) are sent as `null`, since a merge
/// patch leaves out fields alone. Pure.
pub fn merge_patch(
    current: Option<&AWSIAMRoleStatus>,
    next: &AWSIAMRoleStatus,
) -> serde_json::Value {
    let mut patch = match serde_json::to_value(next) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(serde_json::Value::Object(old)) = current.and_then(|c| serde_json::to_value(c).ok())
    {
        for k in old.keys() {
            patch.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(patch)
}

/// True when `next` leaves the condition's status or reason different from `current`:
/// such transitions, and only those, get an Event.
pub fn is_transition(current: Option<&AWSIAMRoleStatus>, next: &AWSIAMRoleStatus) -> bool {
    let find = |s: &AWSIAMRoleStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    current.and_then(find) != find(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_clears_the_role_and_expiration_in_the_patch() {
        let issued = next(
            None,
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:00:00Z"),
        );
        let withdrawn = next(
            Some(&issued),
            &Outcome::Withdrawn {
                reason: "RoleNotPermitted",
                message: "no".into(),
                generation: 2,
            },
            at("2026-11-26T12:10:00Z"),
        );
        let patch = merge_patch(Some(&issued), &withdrawn);
        assert_eq!(patch["roleARN"], serde_json::Value::Null);
        assert_eq!(patch["expiration"], serde_json::Value::Null);
        assert!(patch.as_object().is_some_and(|m| m.contains_key("roleARN")));
        assert_eq!(patch["conditions"][0]["reason"], "RoleNotPermitted");
    }

    #[test]
    fn a_newer_stored_generation_is_never_downgraded() {
        let newer = next(
            None,
            &Outcome::NotReady {
                reason: "AccessDenied",
                message: "no".into(),
                generation: 3,
            },
            at("2026-11-26T12:00:00Z"),
        );
        assert!(!may_write(Some(3), Some(&newer), 2), "object moved on");
        assert!(!may_write(Some(2), Some(&newer), 2), "status is newer");
        assert!(may_write(Some(3), Some(&newer), 3));
        assert!(may_write(Some(4), Some(&newer), 4));
        assert!(may_write(Some(1), None, 1));
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ready(exp: &str) -> Outcome {
        Outcome::Ready {
            role_arn: "arn:aws:iam::123456789012:role/app".into(),
            expiration: at(exp),
            generation: 2,
            message: "ok".into(),
            would_deny: None,
        }
    }

    #[test]
    fn a_status_write_is_judged_unchanged_stale_or_a_patch_that_may_be_a_transition() {
        let now = at("2026-11-26T12:00:00Z");
        let outcome = ready("2026-11-26T13:00:00Z");
        let mut role = crate::controller::fixtures::role("app", "app", 2);
        let StatusWrite::Patch { patch, transition } = write(&role, &outcome, now) else {
            panic!("a first status is written");
        };
        assert!(transition, "no condition before: a transition");
        assert_eq!(patch["conditions"][0]["status"], "True");
        role.status = Some(next(None, &outcome, now));
        assert_eq!(write(&role, &outcome, now), StatusWrite::Unchanged);
        let renewed = ready("2026-11-26T14:00:00Z");
        assert!(
            matches!(
                write(&role, &renewed, now),
                StatusWrite::Patch {
                    transition: false,
                    ..
                }
            ),
            "a new expiry is no transition"
        );
        role.metadata.generation = Some(3);
        assert_eq!(
            write(&role, &renewed, now),
            StatusWrite::Stale,
            "the object moved on to a newer generation"
        );
    }

    #[test]
    fn ready_status_describes_the_credentials() {
        let s = next(
            None,
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:00:00Z"),
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(
            s.role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/app")
        );
        assert_eq!(s.expiration.as_deref(), Some("2026-11-26T13:00:00Z"));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[0].last_transition_time, "2026-11-26T12:00:00Z");
    }

    #[test]
    fn ready_message_says_when_and_why_the_session_was_capped() {
        let exp = at("2026-11-26T13:00:00Z");
        let arn = "arn:aws:iam::123456789012:role/app";
        assert_eq!(
            ready_message(arn, exp, SessionLength::new(7200, false)),
            "credentials for arn:aws:iam::123456789012:role/app valid until 2026-11-26T13:00:00Z"
        );
        let capped = ready_message(arn, exp, SessionLength::new(7200, true));
        assert!(
            capped.starts_with("credentials for arn:aws:iam::123456789012:role/app valid until"),
            "{capped}"
        );
        assert!(
            capped.contains("roleSessionDuration 7200s was capped to 3600s"),
            "{capped}"
        );
        assert!(capped.contains("role chaining"), "{capped}");
    }

    #[test]
    fn a_capped_session_keeps_the_ready_transition_time() {
        let first = next(
            None,
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:00:00Z"),
        );
        let capped = Outcome::Ready {
            role_arn: "arn:aws:iam::123456789012:role/app".into(),
            expiration: at("2026-11-26T13:45:00Z"),
            generation: 2,
            message: ready_message(
                "arn:aws:iam::123456789012:role/app",
                at("2026-11-26T13:45:00Z"),
                SessionLength::new(7200, true),
            ),
            would_deny: None,
        };
        let later = next(Some(&first), &capped, at("2026-11-26T12:45:00Z"));
        assert_eq!(
            later.conditions[0].last_transition_time,
            "2026-11-26T12:00:00Z"
        );
        assert!(!is_transition(Some(&first), &later));
    }

    #[test]
    fn transition_time_is_kept_while_the_status_does_not_change() {
        let first = next(
            None,
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:00:00Z"),
        );
        let renewed = next(
            Some(&first),
            &ready("2026-11-26T14:00:00Z"),
            at("2026-11-26T12:45:00Z"),
        );
        assert_eq!(
            renewed.conditions[0].last_transition_time,
            "2026-11-26T12:00:00Z"
        );
        assert_eq!(renewed.expiration.as_deref(), Some("2026-11-26T14:00:00Z"));
        assert!(!is_transition(Some(&first), &renewed));
    }

    #[test]
    fn failure_keeps_the_last_credentials_fields_and_flips_ready() {
        let first = next(
            None,
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:00:00Z"),
        );
        let failed = next(
            Some(&first),
            &Outcome::NotReady {
                reason: "Throttled",
                message: "slow down".into(),
                generation: 2,
            },
            at("2026-11-26T12:50:00Z"),
        );
        assert_eq!(failed.expiration, first.expiration);
        assert_eq!(failed.role_arn, first.role_arn);
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, "Throttled");
        assert_eq!(
            failed.conditions[0].last_transition_time,
            "2026-11-26T12:50:00Z"
        );
        assert!(is_transition(Some(&first), &failed));
        let again = next(
            Some(&failed),
            &Outcome::NotReady {
                reason: "Throttled",
                message: "slow down".into(),
                generation: 2,
            },
            at("2026-11-26T12:55:00Z"),
        );
        assert!(!is_transition(Some(&failed), &again));
        assert_eq!(again, failed);
    }

    #[test]
    fn messages_are_bounded_and_free_of_control_characters() {
        let hostile = format!("a\nb\u{1b}[31mc\u{202e}d{}", "é".repeat(2000));
        let b = bounded(&hostile);
        assert!(b.len() <= MAX_MESSAGE_BYTES, "{} bytes", b.len());
        assert!(b.starts_with("a b [31mc d"), "{b}");
        assert!(!b.chars().any(char::is_control));
        assert!(b.ends_with(" …"));
        assert_eq!(bounded("fine"), "fine");
    }

    #[test]
    fn audit_mode_marks_and_clears_policy_would_deny() {
        let mut outcome = ready("2026-11-26T13:00:00Z");
        if let Outcome::Ready { would_deny, .. } = &mut outcome {
            *would_deny = Some("role x is not permitted in namespace y".into());
        }
        let marked = next(None, &outcome, at("2026-11-26T12:00:00Z"));
        assert!(would_deny(Some(&marked)));
        assert_eq!(marked.conditions[0].type_, READY);
        let later = next(Some(&marked), &outcome, at("2026-11-26T12:30:00Z"));
        let c = later
            .conditions
            .iter()
            .find(|c| c.type_ == POLICY_WOULD_DENY)
            .expect("condition");
        assert_eq!(c.last_transition_time, "2026-11-26T12:00:00Z");
        let cleared = next(
            Some(&later),
            &ready("2026-11-26T13:00:00Z"),
            at("2026-11-26T12:40:00Z"),
        );
        assert!(!would_deny(Some(&cleared)));
        assert_eq!(cleared.conditions.len(), 1);
    }

    #[test]
    fn status_shows_the_service_account_binding_and_nothing_for_an_unbound_role() {
        let spec = |names: Option<Vec<&str>>| {
            let mut s = AWSIAMRoleSpec::lenient(Some(serde_json::json!({"roleReference": "app"})));
            s.service_account_names = names.map(|n| n.into_iter().map(String::from).collect());
            s
        };
        let show = |names| with_binding(AWSIAMRoleStatus::default(), &spec(names)).service_accounts;
        assert_eq!(show(None), None);
        assert_eq!(show(Some(vec![])).as_deref(), Some("<none>"));
        assert_eq!(
            show(Some(vec!["web", "worker"])).as_deref(),
            Some("web,worker")
        );
        let bound = with_binding(AWSIAMRoleStatus::default(), &spec(Some(vec!["web"])));
        assert_eq!(
            with_binding(bound, &spec(None)).service_accounts,
            None,
            "removing the field removes it from status"
        );
    }
}
