//! When a role is looked at again: the refresh point, the spread requeue after it, the slow
//! requeue of permanent failures, the backoff of transient ones. Pure.

use super::*;

/// How long before expiry credentials are renewed: `refresh_limit`, but never more than half
/// of the credentials' real lifetime (from issue to expiry), so credentials that live shorter
/// than asked (a role's lower maximum, an STS-compatible server, clock skew) are renewed at
/// half-life instead of on every reconcile. The one place the refresh point is computed.
pub fn refresh_at(
    issued_at: DateTime<Utc>,
    expiration: DateTime<Utc>,
    refresh_limit: Duration,
) -> DateTime<Utc> {
    let lifetime = (expiration - issued_at).max(chrono::Duration::zero());
    let limit = chrono::Duration::from_std(refresh_limit).unwrap_or(chrono::Duration::MAX);
    expiration - limit.min(lifetime / 2)
}

/// Longest delay [`requeue_after`] adds after the refresh point.
pub const REQUEUE_SPREAD_MAX: Duration = Duration::from_secs(30);

/// When to reconcile again for credentials that refresh at `refresh_at`: at that moment, or
/// up to `jitter` (0.0 to 1.0) of a hundredth of the time left after it (at most
/// [`REQUEUE_SPREAD_MAX`]), so a fleet issued in the same second does not renew in the same
/// second, and the one look that follows renews: never sooner than the refresh point, and never
/// sooner than `floor` (the backoff base).
pub fn requeue_after(
    refresh_at: DateTime<Utc>,
    now: DateTime<Utc>,
    jitter: f64,
    floor: Duration,
) -> Duration {
    let left = (refresh_at - now).to_std().unwrap_or_default();
    let spread = left
        .mul_f64(0.01 * jitter.clamp(0.0, 1.0))
        .min(REQUEUE_SPREAD_MAX);
    (left + spread).max(floor)
}

/// The requeue after a failure retrying will not fix (access denied, a name conflict): the
/// longest backoff, spread by `jitter` over its upper fifth.
pub fn slow_requeue(settings: &Settings, jitter: f64) -> Duration {
    settings
        .max_backoff
        .mul_f64(0.8 + 0.2 * jitter.clamp(0.0, 1.0))
        .max(settings.backoff_base)
}

pub(super) fn backoff(obs: &Observed<'_>) -> Duration {
    backoff::delay(
        obs.failures.saturating_add(1),
        obs.settings.backoff_base,
        obs.settings.max_backoff,
        obs.jitter,
    )
    .max(obs.settings.backoff_base)
}
