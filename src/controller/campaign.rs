//! The election's decisions, pure: from what this replica holds, what it just saw of the Lease
//! and the local monotonic clock, the next thing to do (read, create, take over, renew, wait,
//! step down). [`super::leader`] drives it in a small loop: observe, step, act.
//!
//! Expiry is judged by this replica's monotonic clock, never by the timestamps in the Lease: a
//! follower times a holder from when it first saw the Lease's current version, and a leader's
//! claim ends at the renew deadline counted from when its last successful renewal was sent.

use std::time::Duration;

use tokio::time::Instant;

use super::leader::{Claim, LeaseSettings};
use super::lease::{Holding, Observed, StoreError};

/// What a candidate knows of the Lease: the last version seen and since when (local clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub observed: Observed,
    /// When this replica first saw `observed.version`.
    pub since: Instant,
}

/// Folds a new read into the view: the clock of a holder restarts only when the Lease changed.
pub fn observe(previous: Option<View>, observed: Observed, now: Instant) -> View {
    match previous {
        Some(v) if v.observed.version == observed.version => View { observed, ..v },
        _ => View {
            observed,
            since: now,
        },
    }
}

/// A candidate's judgement of the Lease as seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidateStep {
    /// The Lease is free, ours (a past life of this identity, or a renewal of ours that failed),
    /// or unchanged for longer than its holder's duration: write it at the version seen.
    Acquire,
    /// Someone else holds it: read again, at the latest at this instant.
    WaitUntil(Instant),
}

/// Decides what a candidate does with the Lease as seen. Expiry is judged by this replica's
/// own clock from when it first saw the current version, never by the holder's timestamps.
pub fn decide(view: &View, me: &str, default_duration: Duration, now: Instant) -> CandidateStep {
    match view.observed.holder.as_deref() {
        None => CandidateStep::Acquire,
        Some(h) if h == me => CandidateStep::Acquire,
        Some(_) => {
            let expires = view.since + view.observed.duration.unwrap_or(default_duration);
            if now >= expires {
                CandidateStep::Acquire
            } else {
                CandidateStep::WaitUntil(expires)
            }
        }
    }
}

/// What this replica holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Competing for the Lease (or following its holder), as last seen.
    Candidate(Option<View>),
    Leader(Term),
}

/// A leader's hold on the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The Lease's resourceVersion after our last write (or as read back after a conflict).
    pub version: String,
    /// When the last successful renewal (or the acquisition) was sent, by the monotonic clock.
    pub renewed: Instant,
    /// When to send the next renewal.
    pub renew_at: Instant,
    pub transitions: i32,
}

impl State {
    /// The claim this state gives the reconcilers: a leader acts until the renew deadline of
    /// its last successful renewal; a candidate does not act.
    pub fn claim(&self, settings: &LeaseSettings) -> Option<Claim> {
        match self {
            State::Leader(term) => Some(Claim::Until(term.renewed + settings.renew_deadline())),
            State::Candidate(_) => None,
        }
    }
}

/// What the loop saw since the last step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing new: the election started, a wait ended or a step down was carried out.
    Nothing,
    /// The answer to a read of the Lease sent at `sent`.
    Read {
        sent: Instant,
        result: Result<Option<Observed>, StoreError>,
    },
    /// The answer to a write of `holding` (a create, take over or renewal) sent at `sent`.
    Wrote {
        sent: Instant,
        holding: Holding,
        result: Result<String, StoreError>,
    },
}

/// The loop's next move. Every call carries the longest it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the Lease.
    Read { limit: Duration },
    /// Create the missing Lease, held by us.
    Create { holding: Holding, limit: Duration },
    /// Write `holding` at `version`: the Lease is free, expired, or ours from a past life.
    TakeOver {
        version: String,
        holding: Holding,
        limit: Duration,
    },
    /// As the leader, write `holding` at `version` again.
    Renew {
        version: String,
        holding: Holding,
        limit: Duration,
    },
    /// Nothing to do until then.
    WaitUntil(Instant),
    /// Stop acting as the leader (the state is already a candidate's), for this reason.
    StepDown(&'static str),
}

/// The local monotonic clock and a random draw, both read by the loop.
#[derive(Clone, Copy, Debug)]
pub struct Moment {
    pub now: Instant,
    /// Spreads retries: a factor in [0.75, 1.25).
    pub jitter: f64,
}

impl Moment {
    /// Reads the clock and draws the jitter.
    pub fn read() -> Self {
        Moment {
            now: Instant::now(),
            jitter: 0.75 + rand::random::<f64>() * 0.5,
        }
    }

    fn after(&self, d: Duration) -> Instant {
        self.now + d.mul_f64(self.jitter)
    }
}

/// The election's one decision: what `state` becomes on `seen` at `moment`, and what to do next.
pub fn step(settings: &LeaseSettings, state: State, seen: Seen, moment: Moment) -> (State, Action) {
    match state {
        State::Candidate(view) => candidate(settings, view, seen, moment),
        State::Leader(term) => leader(settings, term, seen, moment),
    }
}

fn holding(settings: &LeaseSettings, transitions: i32, acquired: bool) -> Holding {
    Holding {
        holder: settings.identity.clone(),
        duration_seconds: i32::try_from(settings.duration.as_secs()).unwrap_or(i32::MAX),
        transitions,
        acquired,
    }
}

fn candidate(
    settings: &LeaseSettings,
    view: Option<View>,
    seen: Seen,
    moment: Moment,
) -> (State, Action) {
    let limit = settings.call_timeout();
    let retry = Action::WaitUntil(moment.after(settings.retry_period()));
    match seen {
        Seen::Nothing => (State::Candidate(view), Action::Read { limit }),
        Seen::Read { result: Err(_), .. } => (State::Candidate(view), retry),
        Seen::Read {
            result: Ok(None), ..
        } => {
            let holding = holding(settings, 0, true);
            (State::Candidate(view), Action::Create { holding, limit })
        }
        Seen::Read {
            sent,
            result: Ok(Some(observed)),
        } => {
            let view = observe(view, observed, sent);
            let me = settings.identity.as_str();
            match decide(&view, me, settings.duration, moment.now) {
                CandidateStep::WaitUntil(expires) => {
                    let poll = moment.after(settings.retry_period());
                    (
                        State::Candidate(Some(view)),
                        Action::WaitUntil(expires.min(poll)),
                    )
                }
                CandidateStep::Acquire => {
                    let taken_over = view.observed.holder.as_deref() != Some(me);
                    let transitions = view.observed.transitions + i32::from(taken_over);
                    let action = Action::TakeOver {
                        version: view.observed.version.clone(),
                        holding: holding(settings, transitions, taken_over),
                        limit,
                    };
                    (State::Candidate(Some(view)), action)
                }
            }
        }
        Seen::Wrote {
            sent,
            holding,
            result: Ok(version),
        } => {
            let term = Term {
                version,
                renewed: sent,
                renew_at: sent + settings.renew_after(),
                transitions: holding.transitions,
            };
            leader(settings, term, Seen::Nothing, moment)
        }
        // Someone else wrote first: read again soon.
        Seen::Wrote {
            result: Err(StoreError::Conflict),
            ..
        } => {
            let soon = moment.after(settings.retry_period() / 4);
            (State::Candidate(view), Action::WaitUntil(soon))
        }
        Seen::Wrote { result: Err(_), .. } => (State::Candidate(view), retry),
    }
}

fn leader(settings: &LeaseSettings, mut term: Term, seen: Seen, moment: Moment) -> (State, Action) {
    let now = moment.now;
    match seen {
        Seen::Nothing => {}
        Seen::Wrote {
            sent,
            result: Ok(version),
            ..
        } => {
            term.version = version;
            term.renewed = sent;
            term.renew_at = sent + settings.renew_after();
        }
        // Changed by someone, or by a renewal of ours whose answer was lost: read it.
        Seen::Wrote {
            result: Err(StoreError::Conflict),
            ..
        } => {
            let deadline = term.renewed + settings.renew_deadline();
            let limit = settings
                .call_timeout()
                .min(deadline.saturating_duration_since(now));
            return (State::Leader(term), Action::Read { limit });
        }
        Seen::Wrote {
            sent,
            result: Err(_),
            ..
        }
        | Seen::Read {
            sent,
            result: Err(_),
        } => term.renew_at = sent + settings.retry_period().mul_f64(moment.jitter),
        Seen::Read {
            result: Ok(Some(o)),
            ..
        } if o.holder.as_deref() == Some(settings.identity.as_str()) => {
            // Still ours: renew at once at the version just read.
            term.version = o.version;
            term.transitions = o.transitions;
        }
        Seen::Read {
            result: Ok(other), ..
        } => {
            let view = other.map(|observed| View {
                observed,
                since: now,
            });
            return (
                State::Candidate(view),
                Action::StepDown("another replica took the lease"),
            );
        }
    }
    let deadline = term.renewed + settings.renew_deadline();
    if now >= deadline {
        return (
            State::Candidate(None),
            Action::StepDown("no renewal within the renew deadline"),
        );
    }
    if now >= term.renew_at {
        let action = Action::Renew {
            version: term.version.clone(),
            holding: holding(settings, term.transitions, false),
            limit: settings.call_timeout().min(deadline - now),
        };
        return (State::Leader(term), action);
    }
    let wake = term.renew_at.min(deadline);
    (State::Leader(term), Action::WaitUntil(wake))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// No jitter, so the expected instants are exact.
    fn at(now: Instant) -> Moment {
        Moment { now, jitter: 1.0 }
    }

    fn observed(version: &str, holder: Option<&str>) -> Observed {
        Observed {
            version: version.into(),
            holder: holder.map(String::from),
            duration: Some(Duration::from_secs(15)),
            transitions: 3,
        }
    }

    #[test]
    fn a_holder_is_timed_from_when_its_lease_last_changed_here() {
        let t0 = Instant::now();
        let v = observe(None, observed("1", Some("other")), t0);
        let later = t0 + Duration::from_secs(10);
        let same = observe(Some(v.clone()), observed("1", Some("other")), later);
        assert_eq!(same.since, t0, "an unchanged lease keeps its clock");
        let renewed = observe(Some(same), observed("2", Some("other")), later);
        assert_eq!(renewed.since, later, "a renewal restarts it");
    }

    #[test]
    fn a_candidate_takes_a_free_own_or_expired_lease_and_waits_otherwise() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let held = View {
            observed: observed("1", Some("other")),
            since: t0,
        };
        assert_eq!(
            decide(&held, "me", d, t0 + Duration::from_secs(14)),
            CandidateStep::WaitUntil(t0 + d)
        );
        assert_eq!(decide(&held, "me", d, t0 + d), CandidateStep::Acquire);
        let free = View {
            observed: observed("1", None),
            since: t0,
        };
        assert_eq!(decide(&free, "me", d, t0), CandidateStep::Acquire);
        let mine = View {
            observed: observed("1", Some("me")),
            since: t0,
        };
        assert_eq!(decide(&mine, "me", d, t0), CandidateStep::Acquire);
        // The holder's own duration counts, not ours.
        let long = View {
            observed: Observed {
                duration: Some(Duration::from_secs(60)),
                ..observed("1", Some("other"))
            },
            since: t0,
        };
        assert_eq!(
            decide(&long, "me", d, t0 + d),
            CandidateStep::WaitUntil(t0 + Duration::from_secs(60))
        );
    }

    fn mine(transitions: i32, acquired: bool) -> Holding {
        Holding {
            holder: "me".into(),
            duration_seconds: 15,
            transitions,
            acquired,
        }
    }

    fn term(t0: Instant) -> Term {
        Term {
            version: "5".into(),
            renewed: t0,
            renew_at: t0 + secs(10.0),
            transitions: 4,
        }
    }

    fn read(sent: Instant, lease: Option<Observed>) -> Seen {
        Seen::Read {
            sent,
            result: Ok(lease),
        }
    }

    fn wrote(sent: Instant, result: Result<String, StoreError>) -> Seen {
        Seen::Wrote {
            sent,
            holding: mine(4, false),
            result,
        }
    }

    fn failed() -> StoreError {
        StoreError::Failed("forbidden".into())
    }

    #[test]
    fn a_candidate_reads_the_lease_first_and_creates_it_when_missing() {
        let (s, t0) = (settings(), Instant::now());
        let (state, action) = step(&s, State::Candidate(None), Seen::Nothing, at(t0));
        assert_eq!(action, Action::Read { limit: secs(2.5) });
        let (state, action) = step(&s, state, read(t0, None), at(t0));
        assert_eq!(
            action,
            Action::Create {
                holding: mine(0, true),
                limit: secs(2.5)
            }
        );
        assert_eq!(state.claim(&s), None, "a candidate does not act");
    }

    #[test]
    fn a_held_lease_is_taken_over_only_once_unchanged_for_its_duration_by_the_local_clock() {
        let (s, t0) = (settings(), Instant::now());
        let other = |v| observed(v, Some("other"));
        let (state, action) = step(
            &s,
            State::Candidate(None),
            read(t0, Some(other("1"))),
            at(t0),
        );
        assert_eq!(action, Action::WaitUntil(t0 + secs(2.0)), "polls meanwhile");
        let t = t0 + secs(14.9);
        let (state, action) = step(&s, state, read(t, Some(other("1"))), at(t));
        assert_eq!(
            action,
            Action::WaitUntil(t0 + secs(15.0)),
            "wakes at the expiry"
        );
        // The holder renewed (a new version): its clock restarts from when that was first seen.
        let (state, action) = step(&s, state, read(t, Some(other("2"))), at(t));
        assert_eq!(action, Action::WaitUntil(t + secs(2.0)));
        let later = t0 + secs(20.0);
        let (state, action) = step(&s, state, read(later, Some(other("2"))), at(later));
        assert_eq!(
            action,
            Action::WaitUntil(later + secs(2.0)),
            "not expired yet"
        );
        let expired = t + secs(15.0);
        let (state, action) = step(&s, state, read(expired, Some(other("2"))), at(expired));
        assert_eq!(
            action,
            Action::TakeOver {
                version: "2".into(),
                holding: mine(4, true),
                limit: secs(2.5)
            },
            "a take over counts a transition"
        );
        assert_eq!(state.claim(&s), None, "no claim before the write succeeds");
    }

    #[test]
    fn a_lease_of_a_past_life_is_reclaimed_at_once_without_a_transition() {
        let (s, t0) = (settings(), Instant::now());
        let seen = read(t0, Some(observed("9", Some("me"))));
        let (_, action) = step(&s, State::Candidate(None), seen, at(t0));
        assert_eq!(
            action,
            Action::TakeOver {
                version: "9".into(),
                holding: mine(3, false),
                limit: secs(2.5)
            }
        );
    }

    #[test]
    fn a_candidate_that_lost_the_race_reads_again_sooner_than_after_a_failure() {
        let (s, t0) = (settings(), Instant::now());
        let conflict = wrote(t0, Err(StoreError::Conflict));
        let (_, action) = step(&s, State::Candidate(None), conflict, at(t0));
        assert_eq!(action, Action::WaitUntil(t0 + secs(0.5)));
        let (_, action) = step(&s, State::Candidate(None), wrote(t0, Err(failed())), at(t0));
        assert_eq!(action, Action::WaitUntil(t0 + secs(2.0)));
        let seen = Seen::Read {
            sent: t0,
            result: Err(failed()),
        };
        let (_, action) = step(&s, State::Candidate(None), seen, at(t0));
        assert_eq!(action, Action::WaitUntil(t0 + secs(2.0)));
    }

    #[test]
    fn an_acquisition_leads_until_the_renew_deadline_counted_from_when_the_write_was_sent() {
        let (s, t0) = (settings(), Instant::now());
        let answered = t0 + secs(1.0);
        let (state, action) = step(
            &s,
            State::Candidate(None),
            wrote(t0, Ok("5".into())),
            at(answered),
        );
        assert_eq!(state, State::Leader(term(t0)));
        assert_eq!(state.claim(&s), Some(Claim::Until(t0 + secs(12.5))));
        assert_eq!(action, Action::WaitUntil(t0 + secs(10.0)));
    }

    #[test]
    fn a_leader_renews_at_its_renew_time_with_a_call_that_ends_by_its_deadline() {
        let (s, t0) = (settings(), Instant::now());
        let early = t0 + secs(9.0);
        let (_, action) = step(&s, State::Leader(term(t0)), Seen::Nothing, at(early));
        assert_eq!(action, Action::WaitUntil(t0 + secs(10.0)));
        let due = t0 + secs(10.0);
        let (state, action) = step(&s, State::Leader(term(t0)), Seen::Nothing, at(due));
        let renew = |limit| Action::Renew {
            version: "5".into(),
            holding: mine(4, false),
            limit,
        };
        assert_eq!(action, renew(secs(2.5)));
        // The renewal failed; the retry's call may last only until the deadline.
        let (state, action) = step(&s, state, wrote(due, Err(failed())), at(due + secs(1.0)));
        assert_eq!(action, Action::WaitUntil(t0 + secs(12.0)));
        let retry = t0 + secs(12.0);
        let (state, action) = step(&s, state, Seen::Nothing, at(retry));
        assert_eq!(action, renew(secs(0.5)));
        // Renewed: the claim and the next renewal move with the time the renewal was sent.
        let (state, action) = step(&s, state, wrote(retry, Ok("6".into())), at(retry));
        assert_eq!(state.claim(&s), Some(Claim::Until(retry + secs(12.5))));
        assert_eq!(action, Action::WaitUntil(retry + secs(10.0)));
    }

    #[test]
    fn a_leader_that_could_not_renew_steps_down_at_its_renew_deadline_before_the_lease_expires() {
        let (s, t0) = (settings(), Instant::now());
        let due = t0 + secs(10.0);
        let slow = Moment {
            now: due + secs(2.0),
            jitter: 1.25,
        };
        // A retry would fall after the deadline: wake at the deadline instead.
        let (state, action) = step(&s, State::Leader(term(t0)), wrote(due, Err(failed())), slow);
        assert_eq!(action, Action::WaitUntil(t0 + secs(12.5)));
        assert!(
            state
                .claim(&s)
                .is_some_and(|c| c.is_current(t0 + secs(12.4)))
        );
        let deadline = t0 + secs(12.5);
        let (state, action) = step(&s, state, Seen::Nothing, at(deadline));
        assert_eq!(state, State::Candidate(None));
        assert_eq!(state.claim(&s), None);
        assert!(matches!(action, Action::StepDown(_)));
        assert!(
            deadline < t0 + s.duration,
            "stepped down before the lease could expire"
        );
    }

    #[test]
    fn a_renewal_conflict_is_read_back_and_renewed_at_once_when_the_lease_is_still_ours() {
        let (s, t0) = (settings(), Instant::now());
        let due = t0 + secs(10.0);
        let answered = due + secs(1.0);
        let conflict = wrote(due, Err(StoreError::Conflict));
        let (state, action) = step(&s, State::Leader(term(t0)), conflict, at(answered));
        assert_eq!(
            action,
            Action::Read { limit: secs(1.5) },
            "bounded by the deadline"
        );
        assert_eq!(state, State::Leader(term(t0)));
        let ours = Observed {
            transitions: 6,
            ..observed("7", Some("me"))
        };
        let (_, action) = step(&s, state, read(answered, Some(ours)), at(answered));
        assert_eq!(
            action,
            Action::Renew {
                version: "7".into(),
                holding: mine(6, false),
                limit: secs(1.5)
            }
        );
    }

    #[test]
    fn a_renewal_conflict_with_another_holder_steps_down_and_times_that_holder() {
        let (s, t0) = (settings(), Instant::now());
        let now = t0 + secs(10.5);
        let taken = read(now, Some(observed("7", Some("other"))));
        let (state, action) = step(&s, State::Leader(term(t0)), taken, at(now));
        assert!(matches!(action, Action::StepDown(_)));
        assert_eq!(
            state,
            State::Candidate(Some(View {
                observed: observed("7", Some("other")),
                since: now
            }))
        );
        let (state, action) = step(&s, State::Leader(term(t0)), read(now, None), at(now));
        assert!(
            matches!(action, Action::StepDown(_)),
            "the lease was deleted"
        );
        assert_eq!(state, State::Candidate(None));
    }
}
