//! What the controller learns while it runs, apart from its flags: the base role ARN (from
//! discovery, which may finish after the reconcile loop started) and whether its own
//! credentials are a role session (then STS caps every session at one hour).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::aws::BaseRoleArn;

/// Runtime state shared by the reconcilers; set by start-up tasks and by STS's answers.
pub struct Learned {
    base: watch::Sender<Option<BaseRoleArn>>,
    chained: AtomicBool,
}

impl Learned {
    /// `base`: from `--base-role-arn`, or `None` until discovery finds it. `chained`: the
    /// controller runs under `--assume-role`.
    pub fn new(base: Option<BaseRoleArn>, chained: bool) -> Self {
        Learned {
            base: watch::Sender::new(base),
            chained: AtomicBool::new(chained),
        }
    }

    /// The prefix for bare role names, once known.
    pub fn base_role_arn(&self) -> Option<BaseRoleArn> {
        self.base.borrow().clone()
    }

    /// Records the discovered base role ARN (wakes [`Self::base_changes`]).
    pub fn set_base_role_arn(&self, base: BaseRoleArn) {
        self.base.send_replace(Some(base));
    }

    /// Notified when the base role ARN becomes known.
    pub fn base_changes(&self) -> watch::Receiver<Option<BaseRoleArn>> {
        self.base.subscribe()
    }

    /// True once the controller's own credentials are known to be a role session.
    pub fn is_chained(&self) -> bool {
        self.chained.load(Ordering::Relaxed)
    }

    /// Remembers that STS treats the controller's credentials as a role session.
    pub fn mark_chained(&self) {
        self.chained.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_found_later_is_seen_and_announced() {
        let l = Learned::new(None, false);
        let changes = l.base_changes();
        assert!(l.base_role_arn().is_none());
        l.set_base_role_arn("arn:aws:iam::123456789012:role/".parse().expect("base"));
        assert!(changes.has_changed().expect("open"));
        assert_eq!(
            l.base_role_arn().map(|b| b.to_string()),
            Some("arn:aws:iam::123456789012:role/".into())
        );
    }

    #[test]
    fn chaining_once_learned_is_remembered() {
        let l = Learned::new(None, false);
        assert!(!l.is_chained());
        l.mark_chained();
        assert!(l.is_chained());
        assert!(Learned::new(None, true).is_chained());
    }
}
