//! Per-object exponential backoff with jitter for transient failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::key::RoleKey;

/// Delay after `failures` consecutive failures: `base * 2^(failures-1)`, capped at `max`, then
/// scaled by `jitter` (0.0 to 1.0) into the upper half, so retries of many objects spread out.
pub fn delay(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Consecutive failures per AWSIAMRole.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<RoleKey, u32>>,
}

impl Backoff {
    /// Counts a failure and returns the new count.
    pub fn fail(&self, key: &RoleKey) -> u32 {
        let Ok(mut m) = self.failures.lock() else {
            return 1;
        };
        let n = m.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &RoleKey) -> u32 {
        self.failures
            .lock()
            .map(|m| m.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn reset(&self, key: &RoleKey) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }

    /// Objects currently backing off.
    pub fn len(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_exponentially_and_is_capped() {
        let b = Duration::from_secs(5);
        let m = Duration::from_secs(300);
        assert_eq!(delay(1, b, m, 1.0), Duration::from_secs(5));
        assert_eq!(delay(2, b, m, 1.0), Duration::from_secs(10));
        assert_eq!(delay(4, b, m, 1.0), Duration::from_secs(40));
        assert_eq!(delay(20, b, m, 1.0), m);
        assert_eq!(delay(u32::MAX, b, m, 0.0), Duration::from_secs(150));
    }

    #[test]
    fn failures_are_counted_per_object_and_reset() {
        let b = Backoff::default();
        let (a, other) = (RoleKey::new("ns", "a"), RoleKey::new("ns", "b"));
        assert_eq!(b.fail(&a), 1);
        assert_eq!(b.fail(&a), 2);
        assert_eq!(b.fail(&other), 1);
        b.reset(&a);
        assert_eq!(b.fail(&a), 1);
        assert_eq!(b.len(), 2);
    }
}
