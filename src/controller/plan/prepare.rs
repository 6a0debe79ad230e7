//! The plan's writes made ready to send against what was observed: the Secret's create or merge
//! patch, the status patch judged against the observed object (none when it would change
//! nothing or the object moved on to a newer generation), the Events its transition lets
//! through, and the role's gauges. Pure: `act` sends what this returns and decides nothing.

use super::*;
use crate::controller::status::StatusWrite;

/// How the Secret is written.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretWrite {
    /// No Secret was observed: create this one.
    Create(Box<Secret>),
    /// Merge-patch the observed Secret: only what differs, with the resourceVersion it was
    /// observed at, so a Secret changed in between by someone else is never overwritten.
    Patch {
        name: String,
        patch: serde_json::Value,
    },
}

impl SecretWrite {
    /// `Create` or `Update`, for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            SecretWrite::Create(_) => "Create",
            SecretWrite::Patch { .. } => "Update",
        }
    }
}

/// The role's Ready gauge and the expiry of the credentials the status names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauge {
    pub ready: bool,
    pub expiry: Option<i64>,
}

/// Everything one pass writes, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub secret: Option<SecretWrite>,
    /// The status merge patch, carrying the observed object's resourceVersion as its
    /// precondition: a change in between is a conflict, never overwritten.
    pub status: Option<serde_json::Value>,
    pub gauge: Option<Gauge>,
    /// The Events to publish after the status write, messages bounded: a Warning that is only
    /// announced on a transition is here only when the status patch makes one.
    pub events: Vec<Note>,
    pub requeue: Requeue,
    /// Set when `secret` holds newly issued credentials.
    pub issued: Option<IssueReason>,
    pub policy: Option<PolicyState>,
    /// What the status and Events were prepared from, for [`Prepared::rejudged`].
    rest: Writes,
}

impl Prepared {
    /// The status, its Events and the gauges judged again against `obs` (the object read live
    /// after the status patch conflicted); the Secret is not written again.
    pub fn rejudged(self, obs: &Observed<'_>) -> Prepared {
        prepare(obs, self.rest)
    }

    /// Without the status write (the object is gone or was replaced since it was observed):
    /// the Events that wait for a transition go with it.
    pub fn without_status(mut self) -> Self {
        self.status = None;
        self.events.retain(|n| n.announce == Announce::Always);
        self
    }
}

/// Makes `writes` ready to send against `obs` (its role and Secret as observed).
pub fn prepare(obs: &Observed<'_>, writes: Writes) -> Prepared {
    let Writes {
        secret,
        status,
        events,
        requeue,
        issued,
        policy,
    } = writes;
    // Kept for `rejudged`: everything but the Secret (its credentials are not copied).
    let rest = Writes {
        secret: None,
        status: status.clone(),
        events: events.clone(),
        requeue,
        issued,
        policy,
    };
    let secret = secret.map(|desired| match obs.secret {
        None => SecretWrite::Create(Box::new(desired)),
        Some(current) => SecretWrite::Patch {
            name: desired.name_any(),
            patch: secret::merge_patch(current, &desired),
        },
    });
    let judged = status
        .as_ref()
        .map(|outcome| status::write(obs.role, outcome, obs.now));
    let (status_patch, transition) = match judged {
        Some(StatusWrite::Patch { patch, transition }) => (
            Some(serde_json::json!({
                "metadata": {"resourceVersion": obs.role.resource_version()},
                "status": patch,
            })),
            transition,
        ),
        _ => (None, false),
    };
    let events = events
        .into_iter()
        .filter(|n| n.announce == Announce::Always || transition)
        .map(|n| Note {
            message: status::bounded(&n.message),
            ..n
        })
        .collect();
    Prepared {
        secret,
        status: status_patch,
        gauge: status.as_ref().map(|o| gauge(obs.role, o)),
        events,
        requeue,
        issued,
        policy,
        rest,
    }
}

/// The gauges for `outcome`: a role that is not ready keeps the expiry its status names.
fn gauge(role: &AWSIAMRole, outcome: &Outcome) -> Gauge {
    let expiry = match outcome {
        Outcome::Ready { expiration, .. } => Some(expiration.timestamp()),
        Outcome::Withdrawn { .. } => None,
        Outcome::NotReady { .. } => role
            .status
            .as_ref()
            .and_then(|s| s.expiration.as_deref())
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
            .map(|t| t.timestamp()),
    };
    Gauge {
        ready: matches!(outcome, Outcome::Ready { .. }),
        expiry,
    }
}
