//! What one reconcile of one AWSIAMRole does, and when it looks again. Pure: the observed facts
//! in ([`Observed`], the namespace policy's inputs included), the whole plan out ([`Plan`]): the
//! STS request or none, and then ([`answer`]) the Secret, the status outcome, the Events and
//! the requeue; [`prepare`] turns these into what is sent: the Secret's create or merge patch,
//! the status patch judged against the observed object, the Events its transition lets through.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::backoff;
use super::context::Settings;
use super::policy::{Judgement, PolicyView};
use super::secret::{self, Content, Facts, Issuance, Known, Ownership, Stored};
use super::status::{self, Announce, Note, Outcome, Severity};
use crate::aws::arn::{self, BaseRoleArn};
use crate::aws::options::{self, SessionLength};
use crate::aws::{
    FailureKind, IssueError, IssueRequest, IssuedCredentials, RequestOptions, RoleArn,
};
use crate::crd::AWSIAMRole;
use crate::metrics::PolicyState;
use crate::policy::{Denial, Verdict};

mod answer;
mod ask;
mod prepare;
mod timing;

pub use answer::{Resolution, answer, resolve};
use ask::{Asked, ask};
pub use prepare::{Gauge, Prepared, SecretWrite, prepare};
use timing::backoff;
pub use timing::{REQUEUE_SPREAD_MAX, refresh_at, requeue_after, slow_requeue};

/// The Ready condition's reason while the controller cannot judge the namespace role policy
/// because it does not know its own identity.
pub const IDENTITY_UNKNOWN: &str = "ControllerIdentityUnknown";

/// Why new credentials are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No Secret yet (or it was deleted).
    Missing,
    /// The Secret's content cannot be read back (edited or damaged).
    Unreadable,
    /// The request changed: role ARN, session length, policies or session options.
    SpecChanged,
    /// The credentials were issued for an earlier AWSIAMRole of the same name.
    Recreated,
    /// The credentials are inside the refresh window.
    Expiring,
}

impl IssueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::Missing => "missing",
            IssueReason::Unreadable => "unreadable",
            IssueReason::SpecChanged => "spec-changed",
            IssueReason::Recreated => "recreated",
            IssueReason::Expiring => "expiring",
        }
    }
}

/// Everything one reconcile knows before it decides.
pub struct Observed<'a> {
    /// The AWSIAMRole as the watch delivered it.
    pub role: &'a AWSIAMRole,
    /// The Secret of the same name: read live (with its data), or, when `known` is set, its
    /// metadata from the watch cache.
    pub secret: Option<&'a Secret>,
    /// What `secret`'s data holds, when it was observed without it: this process wrote or
    /// read this very resourceVersion in full before.
    pub known: Option<&'a Known>,
    pub now: DateTime<Utc>,
    pub settings: &'a Settings,
    /// The prefix for bare role names, if known.
    pub base_role_arn: Option<&'a BaseRoleArn>,
    /// Consecutive failures of this object so far.
    pub failures: u32,
    /// 0.0 to 1.0: spreads requeues of many objects.
    pub jitter: f64,
    /// What the namespace role policy judges by: the Namespace's annotations, the guard.
    pub policy: &'a PolicyView,
    /// STS treats the controller's credentials as a role session: sessions are capped at 1 h.
    pub chained: bool,
}

/// When to look at the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// All is well (or failing in a way retries cannot fix soon): look again after this long.
    After(Duration),
    /// A failure that may pass: counted, and retried after this (growing) delay.
    Backoff(Duration),
    /// Nothing changes until the object does.
    AwaitChange,
}

/// What to write, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Writes {
    /// The whole Secret to create (no Secret observed), or to merge-patch the observed one
    /// into (`secret::merge_patch`: only what differs, on the observed resourceVersion).
    pub secret: Option<Secret>,
    pub status: Option<Outcome>,
    pub events: Vec<Note>,
    pub requeue: Requeue,
    /// Set when `secret` holds newly issued credentials.
    pub issued: Option<IssueReason>,
    /// How the namespace role policy judged the role, for its gauges.
    pub policy: Option<PolicyState>,
}

impl Writes {
    fn nothing(requeue: Requeue) -> Self {
        Writes {
            secret: None,
            status: None,
            events: Vec::new(),
            requeue,
            issued: None,
            policy: None,
        }
    }
}

/// What one reconcile decides, before it is prepared against what was observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Draft {
    /// No STS call.
    Write(Writes),
    /// Call STS; [`resolve`] turns the answer into the writes.
    Issue(Issue),
}

/// An STS call to make, and what resolving its answer needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub request: IssueRequest,
    pub reason: IssueReason,
    pub length: SessionLength,
    role_arn: String,
    request_hash: String,
    stored: Option<Stored>,
    /// `--namespace-policy=audit`: what `enforce` would deny.
    would_deny: Option<Denial>,
}

/// A hash of everything an `AssumeRole` request asks for, except the session length STS may
/// cap (role chaining): the role, `spec.roleSessionDuration`, policies and session options.
pub fn request_hash(request: &IssueRequest, requested_seconds: i64) -> String {
    let RequestOptions {
        tags,
        transitive_tag_keys,
        source_identity,
        external_id,
        policy,
        policy_arns,
    } = &request.options;
    let canonical = serde_json::json!({
        "roleArn": request.role_arn.to_string(),
        "sessionName": request.session_name,
        "durationSeconds": requested_seconds,
        "tags": tags.iter().map(|t| [&t.key, &t.value]).collect::<Vec<_>>(),
        "transitiveTagKeys": transitive_tag_keys,
        "sourceIdentity": source_identity,
        "externalId": external_id,
        "policy": policy,
        "policyArns": policy_arns,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn not_ready(obs: &Observed<'_>, reason: &'static str, message: String, requeue: Requeue) -> Draft {
    Draft::Write(Writes {
        status: Some(Outcome::NotReady {
            reason,
            message: message.clone(),
            generation: generation(obs.role),
        }),
        events: vec![Note::warning(reason, message)],
        ..Writes::nothing(requeue)
    })
}

/// Audit mode: the Event saying what `enforce` would deny, once (while the status does not
/// say so already).
fn would_deny_note(obs: &Observed<'_>, would_deny: Option<&Denial>) -> Option<Note> {
    let denial = would_deny?;
    (!status::would_deny(obs.role.status.as_ref())).then(|| Note {
        severity: Severity::Warning,
        reason: "PolicyWouldDeny",
        message: format!("{denial}; issued because --namespace-policy=audit"),
        announce: Announce::Always,
    })
}

fn policy_state(would_deny: Option<&Denial>) -> PolicyState {
    match would_deny {
        Some(_) => PolicyState::WouldDeny,
        None => PolicyState::Permitted,
    }
}

fn generation(role: &AWSIAMRole) -> i64 {
    role.meta().generation.unwrap_or_default()
}

fn ready(
    role_arn: &str,
    expiration: DateTime<Utc>,
    generation: i64,
    length: SessionLength,
    would_deny: Option<&Denial>,
) -> Outcome {
    Outcome::Ready {
        role_arn: role_arn.to_string(),
        expiration,
        generation,
        message: status::ready_message(role_arn, expiration, length),
        would_deny: would_deny.map(|d| d.message.clone()),
    }
}

/// Whether the stored credentials are the ones the role asks for now.
fn judge(obs: &Observed<'_>, stored: &Stored, role_arn: &str, hash: &str) -> Option<IssueReason> {
    let uid = obs.role.meta().uid.as_deref().unwrap_or_default();
    match &stored.issuance {
        Some(i) if i.owner_uid != uid => Some(IssueReason::Recreated),
        Some(i) if i.request_hash != hash => Some(IssueReason::SpecChanged),
        Some(_) => None,
        // Written by the Go controller or an earlier version: judged as the Go controller did
        // (generation and role ARN), and by the owner reference.
        None => {
            // No owner at all: a seed Secret written to be adopted.
            let owned = obs.secret.is_some_and(|s| {
                s.owner_references().is_empty() || s.owner_references().iter().any(|o| o.uid == uid)
            });
            if !owned {
                Some(IssueReason::Recreated)
            } else if stored.generation != generation(obs.role) || stored.role_arn != role_arn {
                Some(IssueReason::SpecChanged)
            } else {
                None
            }
        }
    }
}

/// The plan of one pass, ready to carry out.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "one per pass, moved once")]
pub enum Plan {
    /// No STS call: send these.
    Write(Prepared),
    /// Call STS; [`answer`] turns the answer into what to send.
    Issue(Issue),
}

/// Decides the whole pass from what was observed: the writes ready to send, or the STS call to
/// make first.
pub fn decide(obs: &Observed<'_>) -> Plan {
    match draft(obs) {
        Draft::Write(writes) => Plan::Write(prepare(obs, writes)),
        Draft::Issue(issue) => Plan::Issue(issue),
    }
}

/// Decides what the role needs from what was observed.
pub fn draft(obs: &Observed<'_>) -> Draft {
    let facts = obs.secret.map(|s| secret::facts(s, obs.known, obs.role));
    match ask(obs, facts.as_ref()) {
        Ok(asked) => keep_or_issue(obs, facts, asked),
        Err(plan) => *plan,
    }
}

/// Keeps the stored credentials while they are the ones asked for and outside the refresh
/// window (repairing the Secret's metadata if needed), or plans the STS call.
fn keep_or_issue(obs: &Observed<'_>, facts: Option<Facts>, asked: Asked) -> Draft {
    let Asked {
        request,
        role_arn,
        request_hash,
        length,
        would_deny,
    } = asked;
    let role = obs.role;
    let (stored, withdrawn) = facts.map_or((None, None), |f| (f.stored, f.withdrawn));
    if let Some(wait) = refused_lately(obs, withdrawn.as_ref(), &request_hash) {
        return Draft::Write(Writes::nothing(Requeue::After(wait)));
    }
    let reason = match &stored {
        None if obs.secret.is_some() => Some(IssueReason::Unreadable),
        None => Some(IssueReason::Missing),
        Some(stored) => judge(obs, stored, &role_arn, &request_hash),
    };
    let keep = match (&stored, reason) {
        (Some(stored), None) => {
            let issued_at = stored.issuance.as_ref().map_or_else(
                || stored.expiration - chrono::Duration::seconds(length.seconds),
                |i| i.issued_at,
            );
            let at = refresh_at(issued_at, stored.expiration, obs.settings.refresh_limit);
            (obs.now < at).then_some((stored, at))
        }
        _ => None,
    };
    let Some((stored, refresh)) = keep else {
        return Draft::Issue(Issue {
            request,
            reason: reason.unwrap_or(IssueReason::Expiring),
            length,
            role_arn,
            request_hash,
            stored,
            would_deny,
        });
    };
    let content = match &stored.credentials {
        Some(creds) => Content::Credentials {
            creds,
            issuance: None,
        },
        // Known to be as this process last saw it: only the metadata can need a repair.
        None => Content::Unchanged,
    };
    let desired = secret::desired(obs.secret, role, &role_arn, content);
    let repair = obs.secret.is_none_or(|s| secret::needs_repair(s, &desired));
    Draft::Write(Writes {
        secret: repair.then_some(desired),
        status: Some(ready(
            &role_arn,
            stored.expiration,
            generation(role),
            length,
            would_deny.as_ref(),
        )),
        events: would_deny_note(obs, would_deny.as_ref())
            .into_iter()
            .collect(),
        requeue: Requeue::After(requeue_after(
            refresh,
            obs.now,
            obs.jitter,
            obs.settings.backoff_base,
        )),
        issued: None,
        policy: Some(policy_state(would_deny.as_ref())),
    })
}

/// How long to wait when the credentials were withdrawn after STS refused this very request:
/// it is asked again only after the slow requeue, not on the watch event of the withdrawal
/// itself.
fn refused_lately(
    obs: &Observed<'_>,
    withdrawn: Option<&Issuance>,
    request_hash: &str,
) -> Option<Duration> {
    let w = withdrawn?;
    let uid = obs.role.meta().uid.as_deref().unwrap_or_default();
    let retry_at = w.issued_at
        + chrono::Duration::from_std(slow_requeue(obs.settings, 0.0)).unwrap_or_default();
    if w.owner_uid == uid && w.request_hash == request_hash && obs.now < retry_at {
        let wait = (retry_at - obs.now).to_std().unwrap_or_default();
        return Some(wait.max(obs.settings.backoff_base));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:iam::123456789012:role/app";
    const LIMIT: Duration = Duration::from_secs(15 * 60);

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    /// The fixtures' role, in namespace `team` with UID `uid-1`, as a watch event has it.
    fn role(reference: &str, generation: i64) -> AWSIAMRole {
        let mut r = crate::controller::fixtures::role("app", reference, generation);
        r.metadata.namespace = Some("team".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.resource_version = None;
        r
    }

    fn creds(expires_in: i64) -> IssuedCredentials {
        IssuedCredentials {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: "T".into(),
            expiration: now() + secs(expires_in),
        }
    }

    fn settings() -> Settings {
        Settings::default()
    }

    fn obs<'a>(
        role: &'a AWSIAMRole,
        secret: Option<&'a Secret>,
        settings: &'a Settings,
    ) -> Observed<'a> {
        Observed {
            role,
            secret,
            known: None,
            now: now(),
            settings,
            base_role_arn: None,
            failures: 0,
            jitter: 0.0,
            policy: &PERMIT,
            chained: false,
        }
    }

    static PERMIT: std::sync::LazyLock<PolicyView> =
        std::sync::LazyLock::new(PolicyView::permissive);

    /// A namespace without any policy annotation, under `mode`: `Enforce` denies every role,
    /// `Audit` reports what enforce would deny.
    fn unannotated(mode: crate::policy::PolicyMode) -> PolicyView {
        PolicyView::Known {
            mode,
            namespace: "team".into(),
            annotations: Some(Default::default()),
            guard: crate::policy::Guard::default(),
            own: false,
        }
    }

    /// The Secret a successful issue for `role` at `issued` writes.
    fn issued_secret(role: &AWSIAMRole, settings: &Settings, lifetime: i64) -> Secret {
        let o = obs(role, None, settings);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("expected an issue")
        };
        let w = resolve(&o, &issue, Ok(creds(lifetime)), now());
        w.secret.expect("secret")
    }

    fn withdrawn_secret(o: &Observed<'_>, issue: &Issue) -> Secret {
        let denied = IssueError {
            kind: FailureKind::Permanent,
            code: "AccessDenied".into(),
            message: "no".into(),
        };
        resolve(o, issue, Err(denied), now())
            .secret
            .expect("withdrawn")
    }

    fn issue_reason(plan: &Draft) -> Option<IssueReason> {
        match plan {
            Draft::Issue(i) => Some(i.reason),
            Draft::Write(_) => None,
        }
    }

    #[test]
    fn a_missing_or_unreadable_secret_is_issued() {
        let s = settings();
        let r = role(ARN, 1);
        assert_eq!(
            issue_reason(&draft(&obs(&r, None, &s))),
            Some(IssueReason::Missing)
        );
        let mut damaged = issued_secret(&r, &s, 3600);
        damaged
            .data
            .as_mut()
            .expect("data")
            .remove("credentials.json");
        assert_eq!(
            issue_reason(&draft(&obs(&r, Some(&damaged), &s))),
            Some(IssueReason::Unreadable)
        );
    }

    #[test]
    fn fresh_credentials_are_kept_without_a_write_until_the_refresh_window() {
        let s = settings();
        let r = role(ARN, 1);
        let secret = issued_secret(&r, &s, 3600);
        let Draft::Write(w) = draft(&obs(&r, Some(&secret), &s)) else {
            panic!("kept")
        };
        assert_eq!(w.secret, None, "nothing to repair");
        assert_eq!(w.requeue, Requeue::After(Duration::from_secs(3600 - 900)));
        assert!(matches!(w.status, Some(Outcome::Ready { .. })));
    }

    #[test]
    fn short_credentials_refresh_at_half_their_real_lifetime_not_the_asked_one() {
        // 900 s asked, 300 s given: renew after 150 s, not at once (and not in a loop).
        let s = settings();
        let r = role(ARN, 1);
        let o = obs(&r, None, &s);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        let w = resolve(&o, &issue, Ok(creds(300)), now());
        assert_eq!(w.requeue, Requeue::After(Duration::from_secs(150)));
        let secret = w.secret.expect("secret");
        let mut later = obs(&r, Some(&secret), &s);
        later.now = now() + secs(100);
        assert!(matches!(draft(&later), Draft::Write(_)), "kept at 100 s");
        later.now = now() + secs(151);
        assert_eq!(issue_reason(&draft(&later)), Some(IssueReason::Expiring));
    }

    #[test]
    fn every_requeue_is_floored_at_the_backoff_base() {
        let floor = Duration::from_secs(5);
        assert_eq!(requeue_after(now(), now(), 0.3, floor), floor);
        assert_eq!(requeue_after(now() - secs(10), now(), 0.0, floor), floor);
        let at = now() + secs(1000);
        assert_eq!(
            requeue_after(at, now(), 0.0, floor),
            Duration::from_secs(1000)
        );
        // The spread comes after the refresh point, never before it, and is capped.
        assert_eq!(
            requeue_after(at, now(), 1.0, floor),
            Duration::from_secs(1010)
        );
        let far = now() + secs(10_000);
        assert_eq!(
            requeue_after(far, now(), 1.0, floor),
            Duration::from_secs(10_000) + REQUEUE_SPREAD_MAX
        );
    }

    /// A reconcile that sees the Secret's metadata from the cache and knows its data from its
    /// own earlier write decides exactly as one that read the whole Secret.
    #[test]
    fn a_secret_known_from_its_own_write_is_decided_without_its_data() {
        let s = settings();
        let r = role(ARN, 1);
        let mut secret = issued_secret(&r, &s, 3600);
        secret.metadata.resource_version = Some("7".into());
        let known = Known::of(&secret).expect("known");
        assert!(known.credentials.is_some());
        let meta = Secret {
            metadata: secret.metadata.clone(),
            ..Secret::default()
        };
        let mut with_data = obs(&r, Some(&secret), &s);
        let mut without = obs(&r, Some(&meta), &s);
        without.known = Some(&known);
        // Fresh: kept, nothing written, same requeue and status.
        let (Draft::Write(a), Draft::Write(b)) = (draft(&with_data), draft(&without)) else {
            panic!("kept")
        };
        assert_eq!(b.secret, None);
        assert_eq!((a.requeue, a.status), (b.requeue, b.status));
        // Expiring: issued for the same reason, and the patch sets every credentials key.
        with_data.now = now() + secs(2800);
        without.now = now() + secs(2800);
        let (Draft::Issue(ia), Draft::Issue(ib)) = (draft(&with_data), draft(&without)) else {
            panic!("issue")
        };
        assert_eq!((ia.reason, &ia.request), (ib.reason, &ib.request));
        let w = resolve(&without, &ib, Ok(creds(7200)), now() + secs(2800));
        let desired = w.secret.expect("secret");
        let patch = secret::merge_patch(&meta, &desired);
        for key in secret::WITHDRAWN_KEYS {
            assert!(patch["data"][key].is_string(), "{key} set: {patch}");
        }
        // A label added to the role: only the metadata is repaired.
        let mut labelled = r.clone();
        labelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        let mut o = obs(&labelled, Some(&meta), &s);
        o.known = Some(&known);
        let Draft::Write(w) = draft(&o) else {
            panic!("kept")
        };
        let desired = w.secret.expect("repair");
        let patch = secret::merge_patch(&meta, &desired);
        assert_eq!(patch["metadata"]["labels"]["team"], "a");
        let data = patch["data"].as_object().expect("data");
        assert!(
            data.is_empty(),
            "a metadata repair neither writes nor removes credentials: {patch}"
        );
        // Denied: the withdrawal nulls the credentials even though no data was observed.
        let deny = unannotated(crate::policy::PolicyMode::Enforce);
        let mut o = obs(&r, Some(&meta), &s);
        o.known = Some(&known);
        o.policy = &deny;
        let Draft::Write(w) = draft(&o) else {
            panic!("denied")
        };
        let patch = secret::merge_patch(&meta, &w.secret.expect("withdrawal"));
        for key in secret::WITHDRAWN_KEYS {
            assert!(patch["data"][key].is_null(), "{key} removed: {patch}");
        }
        assert!(patch["data"][secret::CREDENTIALS_PROCESS_KEY].is_string());
    }

    #[test]
    fn credentials_arriving_inside_the_refresh_window_are_a_failure_with_backoff() {
        let s = settings();
        let r = role(ARN, 1);
        let mut o = obs(&r, None, &s);
        o.jitter = 1.0;
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        // 4 s of life: half-life 2 s is below the 5 s backoff base.
        let w = resolve(&o, &issue, Ok(creds(4)), now());
        assert!(w.secret.is_some(), "valid credentials are still delivered");
        assert_eq!(w.requeue, Requeue::Backoff(Duration::from_secs(5)));
        assert_eq!(w.events[0].reason, "ShortLivedCredentials");
        o.failures = 3;
        let w = resolve(&o, &issue, Ok(creds(4)), now());
        assert_eq!(
            w.requeue,
            Requeue::Backoff(Duration::from_secs(40)),
            "grows"
        );
        let w = resolve(&o, &issue, Ok(creds(0)), now());
        assert_eq!(w.secret, None, "expired credentials are never written");
        assert!(matches!(w.requeue, Requeue::Backoff(_)));
    }

    #[test]
    fn sts_failures_requeue_by_kind_with_jitter() {
        let s = settings();
        let r = role(ARN, 1);
        let mut o = obs(&r, None, &s);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        let denied = IssueError {
            kind: FailureKind::Permanent,
            code: "AccessDenied".into(),
            message: "no".into(),
        };
        let throttled = IssueError {
            kind: FailureKind::Transient,
            code: "Throttling".into(),
            message: "slow".into(),
        };
        o.jitter = 0.0;
        let slow_low = resolve(&o, &issue, Err(denied.clone()), now()).requeue;
        o.jitter = 1.0;
        let slow_high = resolve(&o, &issue, Err(denied), now()).requeue;
        assert_eq!(slow_low, Requeue::After(Duration::from_secs(240)));
        assert_eq!(slow_high, Requeue::After(Duration::from_secs(300)));
        o.failures = 1;
        let w = resolve(&o, &issue, Err(throttled), now());
        assert_eq!(w.requeue, Requeue::Backoff(Duration::from_secs(10)));
        assert_eq!(w.secret, None);
        assert!(matches!(
            w.status,
            Some(Outcome::NotReady {
                reason: "Throttled",
                ..
            })
        ));
    }

    #[test]
    fn a_failure_for_a_different_role_withdraws_the_old_roles_credentials() {
        let s = settings();
        let first = role(ARN, 1);
        let secret = issued_secret(&first, &s, 3600);
        let other = role("arn:aws:iam::123456789012:role/other", 2);
        let o = obs(&other, Some(&secret), &s);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        assert_eq!(issue.reason, IssueReason::SpecChanged);
        let denied = IssueError {
            kind: FailureKind::Permanent,
            code: "AccessDenied".into(),
            message: "no".into(),
        };
        let w = resolve(&o, &issue, Err(denied.clone()), now());
        let withdrawn = w.secret.expect("withdrawn secret");
        let data = withdrawn.data.expect("data");
        for key in secret::WITHDRAWN_KEYS {
            assert!(!data.contains_key(key), "{key} removed");
        }
        assert!(secret::read(&withdrawn_secret(&o, &issue)).is_none());
        // The watch event of the withdrawal itself asks STS nothing; the slow requeue does.
        let ws = withdrawn_secret(&o, &issue);
        let mut again = obs(&other, Some(&ws), &s);
        assert!(matches!(
            draft(&again),
            Draft::Write(Writes { secret: None, .. })
        ));
        again.now = now() + secs(241);
        assert_eq!(issue_reason(&draft(&again)), Some(IssueReason::Unreadable));
        // Same role, other policy: the old credentials (of the role the spec names) stay.
        let mut narrower = role(ARN, 2);
        narrower.spec.policy = Some("{}".into());
        let o = obs(&narrower, Some(&secret), &s);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        assert_eq!(resolve(&o, &issue, Err(denied), now()).secret, None);
    }

    #[test]
    fn only_a_recreated_owner_or_a_changed_request_reissues() {
        let s = settings();
        let r = role(ARN, 1);
        let secret = issued_secret(&r, &s, 3600);
        let mut relabelled = r.clone();
        relabelled.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
        let Draft::Write(w) = draft(&obs(&relabelled, Some(&secret), &s)) else {
            panic!("a label is no reason to call STS")
        };
        assert!(w.secret.is_some(), "but the label is written");
        let mut recreated = r.clone();
        recreated.metadata.uid = Some("uid-2".into());
        assert_eq!(
            issue_reason(&draft(&obs(&recreated, Some(&secret), &s))),
            Some(IssueReason::Recreated)
        );
        let mut longer = r.clone();
        longer.spec.role_session_duration = 7200;
        assert_eq!(
            issue_reason(&draft(&obs(&longer, Some(&secret), &s))),
            Some(IssueReason::SpecChanged)
        );
        let mut policy = r.clone();
        policy.spec.policy = Some("{}".into());
        assert_eq!(
            issue_reason(&draft(&obs(&policy, Some(&secret), &s))),
            Some(IssueReason::SpecChanged)
        );
        let mut tagged = settings();
        tagged.sts_options.external_id = Some("ext-1".into());
        assert_eq!(
            issue_reason(&draft(&obs(&r, Some(&secret), &tagged))),
            Some(IssueReason::SpecChanged),
            "changed session options"
        );
    }

    #[test]
    fn invalid_specs_and_references_are_reported_without_sts() {
        let s = settings();
        let mut r = role(ARN, 1);
        r.spec.invalid = Some("missing field `roleReference`".into());
        let Draft::Write(w) = draft(&obs(&r, None, &s)) else {
            panic!("no STS")
        };
        assert_eq!(w.requeue, Requeue::AwaitChange);
        assert_eq!(w.events[0].reason, "InvalidSpec");
        let bare = role("app", 1);
        let Draft::Write(w) = draft(&obs(&bare, None, &s)) else {
            panic!("no STS")
        };
        assert!(matches!(
            w.status,
            Some(Outcome::NotReady {
                reason: "InvalidRoleReference",
                ..
            })
        ));
    }

    #[test]
    fn the_namespace_policy_is_one_more_fact_decide_weighs() {
        let s = settings();
        let r = role(ARN, 1);
        let secret = issued_secret(&r, &s, 3600);
        let deny = unannotated(crate::policy::PolicyMode::Enforce);
        let mut o = obs(&r, Some(&secret), &s);
        o.policy = &deny;
        let Draft::Write(w) = draft(&o) else {
            panic!("no STS for a refused role")
        };
        let data = w.secret.expect("withdrawn").data.expect("data");
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["credentials.process"]);
        assert!(matches!(
            w.status,
            Some(Outcome::Withdrawn {
                reason: "RoleNotPermitted",
                ..
            })
        ));
        let pending = PolicyView::NamespaceUnknown("not in the cache yet");
        o.policy = &pending;
        let Draft::Write(w) = draft(&o) else {
            panic!("no STS while pending")
        };
        assert_eq!(
            (w.secret, w.status),
            (None, None),
            "neither issue nor withdraw"
        );
        // Waiting for the controller's identity: the role says so, and backs off with jitter
        // instead of every role looking again every --backoff-base in lockstep.
        let unknown = PolicyView::IdentityUnknown;
        o.policy = &unknown;
        o.failures = 1;
        let mut delays = Vec::new();
        for jitter in [0.0, 1.0] {
            o.jitter = jitter;
            let Draft::Write(w) = draft(&o) else {
                panic!("no STS without the controller's identity")
            };
            assert_eq!(w.secret, None, "neither issue nor withdraw");
            assert!(
                matches!(&w.status, Some(Outcome::NotReady { reason, .. }) if *reason == IDENTITY_UNKNOWN),
                "{:?}",
                w.status
            );
            assert_eq!(w.events[0].reason, IDENTITY_UNKNOWN);
            let Requeue::Backoff(delay) = w.requeue else {
                panic!("backs off: {:?}", w.requeue)
            };
            delays.push(delay);
        }
        assert_ne!(delays[0], delays[1], "spread by the jitter");
        (o.jitter, o.failures) = (0.0, 0);
        let audit = unannotated(crate::policy::PolicyMode::Audit);
        o.policy = &audit;
        let Draft::Write(w) = draft(&o) else {
            panic!("kept")
        };
        assert_eq!(w.events[0].reason, "PolicyWouldDeny");
        assert_eq!(w.policy, Some(PolicyState::WouldDeny));
    }

    #[test]
    fn sts_saying_role_chaining_makes_the_plan_ask_once_more_capped_at_one_hour() {
        let s = settings();
        let mut r = role(ARN, 1);
        r.spec.role_session_duration = 7200;
        let o = obs(&r, None, &s);
        let Draft::Issue(issue) = draft(&o) else {
            panic!("issue")
        };
        assert_eq!(issue.request.duration_seconds, 7200);
        let chaining = IssueError {
            code: "ValidationError".into(),
            message: "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.".into(),
            kind: FailureKind::Permanent,
        };
        let Resolution::Chained(capped) = answer(&o, &issue, Err(chaining.clone()), now()) else {
            panic!("one capped retry")
        };
        assert_eq!(capped.request.duration_seconds, 3600);
        assert_eq!(capped.length.requested, 7200);
        assert_eq!(
            capped.request_hash, issue.request_hash,
            "the same request, capped"
        );
        // The capped request refused the same way is a failure like any other: no loop.
        let Resolution::Write(p) = answer(&o, &capped, Err(chaining), now()) else {
            panic!("no second retry")
        };
        assert_eq!(
            p.gauge.map(|g| g.ready),
            Some(false),
            "not ready: {:?}",
            p.status
        );
        assert!(p.secret.is_none());
        // Any other answer resolves as before.
        let Resolution::Write(p) = answer(&o, &capped, Ok(creds(3600)), now()) else {
            panic!("writes")
        };
        assert!(p.secret.is_some());
    }

    #[test]
    fn refresh_point_uses_the_real_lifetime() {
        let issued = now();
        assert_eq!(
            refresh_at(issued, issued + secs(3600), LIMIT),
            issued + secs(2700)
        );
        assert_eq!(
            refresh_at(issued, issued + secs(300), LIMIT),
            issued + secs(150)
        );
        assert_eq!(
            refresh_at(issued, issued - secs(5), LIMIT),
            issued - secs(5)
        );
    }
}
