//! Deciding what to do for one AWSIAMRole and when to look again. Pure: data in, decision out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::secret::Stored;

/// Why new credentials are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No Secret yet (or it was deleted).
    Missing,
    /// The Secret's content cannot be read back (edited or damaged).
    Unreadable,
    /// The AWSIAMRole changed (new generation or a different role ARN).
    SpecChanged,
    /// The credentials are inside the refresh window.
    Expiring,
}

impl IssueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::Missing => "missing",
            IssueReason::Unreadable => "unreadable",
            IssueReason::SpecChanged => "spec-changed",
            IssueReason::Expiring => "expiring",
        }
    }
}

/// The decision for one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Call STS.
    Issue(IssueReason),
    /// The stored credentials are good until `refresh_at`.
    Keep { refresh_at: DateTime<Utc> },
}

/// How long before expiry credentials are renewed: `refresh_limit`, but never more than half
/// the session, so short sessions are renewed at half-life instead of on every reconcile.
pub fn refresh_window(session_seconds: i64, refresh_limit: Duration) -> chrono::Duration {
    let half = chrono::Duration::seconds(session_seconds.max(1) / 2);
    let limit = chrono::Duration::from_std(refresh_limit).unwrap_or(chrono::Duration::MAX);
    limit.min(half)
}

/// Decides whether the stored credentials can stay.
pub fn decide(
    desired_arn: &str,
    generation: i64,
    session_seconds: i64,
    stored: Option<&Stored>,
    secret_exists: bool,
    now: DateTime<Utc>,
    refresh_limit: Duration,
) -> Decision {
    let Some(stored) = stored else {
        return Decision::Issue(if secret_exists {
            IssueReason::Unreadable
        } else {
            IssueReason::Missing
        });
    };
    if stored.generation != generation || stored.role_arn != desired_arn {
        return Decision::Issue(IssueReason::SpecChanged);
    }
    let refresh_at = stored.credentials.expiration - refresh_window(session_seconds, refresh_limit);
    if now >= refresh_at {
        Decision::Issue(IssueReason::Expiring)
    } else {
        Decision::Keep { refresh_at }
    }
}

/// When to reconcile again for credentials that refresh at `refresh_at`: that moment brought
/// forward by `jitter` (0.0 to 1.0) of a tenth of the time left, so a fleet issued at the same
/// moment does not renew in the same second. At least one second.
pub fn requeue_after(refresh_at: DateTime<Utc>, now: DateTime<Utc>, jitter: f64) -> Duration {
    let left = (refresh_at - now).to_std().unwrap_or_default();
    let spread = left.mul_f64(0.1 * jitter.clamp(0.0, 1.0));
    (left - spread).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::IssuedCredentials;

    const ARN: &str = "arn:aws:iam::123456789012:role/app";
    const LIMIT: Duration = Duration::from_secs(15 * 60);

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn stored(expires_in_secs: i64, generation: i64) -> Stored {
        Stored {
            role_arn: ARN.into(),
            generation,
            credentials: IssuedCredentials {
                access_key_id: "A".into(),
                secret_access_key: "S".into(),
                session_token: "T".into(),
                expiration: now() + chrono::Duration::seconds(expires_in_secs),
            },
        }
    }

    #[test]
    fn missing_secret_is_issued() {
        assert_eq!(
            decide(ARN, 1, 3600, None, false, now(), LIMIT),
            Decision::Issue(IssueReason::Missing)
        );
        assert_eq!(
            decide(ARN, 1, 3600, None, true, now(), LIMIT),
            Decision::Issue(IssueReason::Unreadable)
        );
    }

    #[test]
    fn fresh_credentials_are_kept_until_the_refresh_window() {
        let d = decide(ARN, 1, 3600, Some(&stored(3000, 1)), true, now(), LIMIT);
        assert_eq!(
            d,
            Decision::Keep {
                refresh_at: now() + chrono::Duration::seconds(3000 - 900)
            }
        );
    }

    #[test]
    fn credentials_inside_the_window_are_renewed() {
        assert_eq!(
            decide(ARN, 1, 3600, Some(&stored(899, 1)), true, now(), LIMIT),
            Decision::Issue(IssueReason::Expiring)
        );
        assert_eq!(
            decide(ARN, 1, 3600, Some(&stored(-5, 1)), true, now(), LIMIT),
            Decision::Issue(IssueReason::Expiring)
        );
    }

    #[test]
    fn a_new_generation_or_role_is_issued_at_once() {
        assert_eq!(
            decide(ARN, 2, 3600, Some(&stored(3000, 1)), true, now(), LIMIT),
            Decision::Issue(IssueReason::SpecChanged)
        );
        assert_eq!(
            decide(
                "arn:aws:iam::123456789012:role/other",
                1,
                3600,
                Some(&stored(3000, 1)),
                true,
                now(),
                LIMIT
            ),
            Decision::Issue(IssueReason::SpecChanged)
        );
    }

    #[test]
    fn sessions_not_longer_than_the_refresh_limit_renew_at_half_life_not_every_tick() {
        // 900 s session with the default 15 min limit: the Go controller re-issues on every tick.
        assert_eq!(refresh_window(900, LIMIT), chrono::Duration::seconds(450));
        let just_issued = stored(900, 1);
        assert_eq!(
            decide(ARN, 1, 900, Some(&just_issued), true, now(), LIMIT),
            Decision::Keep {
                refresh_at: now() + chrono::Duration::seconds(450)
            }
        );
    }

    #[test]
    fn requeue_is_jittered_earlier_but_never_late_or_zero() {
        let at = now() + chrono::Duration::seconds(1000);
        assert_eq!(requeue_after(at, now(), 0.0), Duration::from_secs(1000));
        assert_eq!(requeue_after(at, now(), 1.0), Duration::from_secs(900));
        let mid = requeue_after(at, now(), 0.5);
        assert!(mid < Duration::from_secs(1000) && mid > Duration::from_secs(900));
        assert_eq!(requeue_after(now(), now(), 0.3), Duration::from_secs(1));
    }
}
