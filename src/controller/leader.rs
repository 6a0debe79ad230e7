//! Leader election on a `coordination.k8s.io/v1` Lease. Every write of the Lease carries the
//! resourceVersion it was decided on (so of two replicas racing for it exactly one wins), and
//! leadership is a claim that ends at a deadline of the local monotonic clock: a leader that
//! could not renew in time stops acting before any follower may take over, and then competes
//! again like any other replica. Only the leader calls STS and writes; followers keep their
//! caches warm.
//!
//! The decisions are pure, in [`super::campaign`]; this file holds the claim the reconcilers
//! read, the small loop that observes, steps and acts, and the release on the way out.
//!
//! NOTE: this replaces kube-lease-manager, whose `changed()` returns an error while it keeps
//! its own idea of being the holder: the caller cannot tell whether it leads, and after one
//! failed renewal the library renewed as holder while the controller acted as follower (nobody
//! acted). Its holder also judges expiry by the Lease's timestamps (the wall clock) and exposes
//! no time of the last renewal, so a renew deadline cannot be built on it. linkerd's kubert
//! lease is the model for the resourceVersion preconditions.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, instrument, warn};

use super::campaign::{self, Action, Moment, Seen, State};
pub use super::lease::{Holding, KubeLease, LeaseStore, Observed, StoreError};
use crate::metrics::Metrics;

/// How to take part in the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal: a follower waits this long after it last
    /// saw the Lease change before it takes over.
    pub duration: Duration,
    /// The holder renews this long before the Lease would expire.
    pub grace: Duration,
}

impl LeaseSettings {
    /// Rejects settings the election cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        let (d, g) = (self.duration, self.grace);
        if d.subsec_nanos() != 0 || d.is_zero() || g.is_zero() || g >= d {
            return Err(format!(
                "lease duration ({}) and grace ({}) must satisfy 0 < grace < duration, the duration in whole seconds",
                humantime::format_duration(d),
                humantime::format_duration(g)
            ));
        }
        if d.as_secs() > i32::MAX as u64 {
            return Err("lease duration is too long".into());
        }
        if self.identity.is_empty() {
            return Err("lease identity must not be empty".into());
        }
        Ok(())
    }

    /// When the holder starts renewing, after its last successful renewal was sent.
    pub fn renew_after(&self) -> Duration {
        self.duration - self.grace
    }

    /// The holder's renew deadline: without a successful renewal sent within this time it stops
    /// acting. Half the grace before the Lease could expire, so that a write started just before
    /// the deadline has landed before a follower may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration - self.grace / 2
    }

    /// How often a follower reads the Lease, and a failed step is retried (with jitter).
    pub fn retry_period(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }

    /// The longest any one Lease call may take.
    pub fn call_timeout(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// The election loop counts as wedged (and `/healthz` fails) when it has not completed a
    /// step for this long.
    pub fn wedged_after(&self) -> Duration {
        self.duration * 2
    }
}

/// Until when this replica may act as leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Election is off (`--leader-elect=false`): the only replica always leads.
    Always,
    /// Held until this instant of the local monotonic clock (the renew deadline).
    Until(Instant),
}

impl Claim {
    pub fn is_current(&self, now: Instant) -> bool {
        match self {
            Claim::Always => true,
            Claim::Until(until) => now < *until,
        }
    }
}

/// Whether this replica may act, as the reconcilers see it. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    claim: watch::Receiver<Option<Claim>>,
    health: Arc<Health>,
}

struct Health {
    /// When the election loop last completed a step (successful or not).
    heartbeat: Mutex<Instant>,
    /// `None` without election.
    wedged_after: Option<Duration>,
}

impl Leadership {
    /// True when this replica may make the write (or STS call) `what` now; otherwise the
    /// skipped write is counted in `metrics`. The one leadership gate: checked right before
    /// each STS call and each write.
    pub fn may_write(&self, metrics: &crate::metrics::Metrics, what: &'static str) -> bool {
        if self.is_leader() {
            return true;
        }
        metrics.write_skipped("not-leader", what);
        false
    }

    /// Leadership without election: always the leader.
    pub fn always() -> Self {
        let (tx, claim) = watch::channel(Some(Claim::Always));
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        Leadership {
            claim,
            health: Arc::new(Health {
                heartbeat: Mutex::new(Instant::now()),
                wedged_after: None,
            }),
        }
    }

    /// Leadership that follows `claim` (for the reconcile tests in `fixtures.rs`).
    #[cfg(test)]
    pub fn following(claim: watch::Receiver<Option<Claim>>) -> Self {
        Leadership {
            claim,
            health: Arc::new(Health {
                heartbeat: Mutex::new(Instant::now()),
                wedged_after: None,
            }),
        }
    }

    /// True while this replica holds an unexpired claim: THE gate right before each STS call
    /// and each write.
    pub fn is_leader(&self) -> bool {
        self.claim
            .borrow()
            .is_some_and(|c| c.is_current(Instant::now()))
    }

    /// The claim as the election publishes it (every acquisition, renewal and loss).
    pub fn changes(&self) -> watch::Receiver<Option<Claim>> {
        self.claim.clone()
    }

    /// `Some(time since the last step)` when the election loop has neither led nor competed
    /// for longer than twice the lease duration.
    pub fn wedged(&self) -> Option<Duration> {
        let limit = self.health.wedged_after?;
        let since = self.health.heartbeat.lock().map(|h| h.elapsed()).ok()?;
        (since > limit).then_some(since)
    }
}

/// The election's side of a [`Leadership`]: publishes the claim and the loop's heartbeat.
pub struct Elector {
    claim: watch::Sender<Option<Claim>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// A leadership handle for the reconcilers and the elector that drives it.
pub fn elected(settings: &LeaseSettings, metrics: Arc<Metrics>) -> (Leadership, Elector) {
    let (tx, rx) = watch::channel(None);
    let health = Arc::new(Health {
        heartbeat: Mutex::new(Instant::now()),
        wedged_after: Some(settings.wedged_after()),
    });
    // NOTE: the age counts from the election's start until a Lease call completes, so an
    // election that never reaches the API server shows a growing age, not 0.
    metrics.election_succeeded();
    (
        Leadership {
            claim: rx,
            health: health.clone(),
        },
        Elector {
            claim: tx,
            health,
            metrics,
        },
    )
}

impl Elector {
    fn beat(&self) {
        if let Ok(mut h) = self.health.heartbeat.lock() {
            *h = Instant::now();
        }
    }

    fn succeeded(&self) {
        self.metrics.election_succeeded();
    }

    /// Publishes the claim when it changed.
    fn publish(&self, claim: Option<Claim>) {
        self.claim.send_if_modified(|c| {
            let changed = *c != claim;
            *c = claim;
            changed
        });
    }
}

/// How the election ends once the controller has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resign {
    /// In-flight work drained: free the Lease so a follower takes over at once.
    Release,
    /// In-flight work may still be running: let the Lease expire instead.
    LetExpire,
}

async fn call<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Failed(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

/// Runs the election until `resign` resolves; then stops acting and, for
/// [`Resign::Release`], frees the Lease if this replica still holds it.
pub async fn run<S: LeaseStore>(
    store: S,
    settings: LeaseSettings,
    elector: Elector,
    resign: impl Future<Output = Resign>,
) {
    let how = {
        let work = campaign(&store, &settings, &elector);
        tokio::pin!(work);
        tokio::pin!(resign);
        tokio::select! {
            how = &mut resign => how,
            () = &mut work => Resign::LetExpire,
        }
    };
    elector.publish(None);
    if how == Resign::LetExpire {
        info!("leadership given up; the lease is left to expire");
        return;
    }
    release(&store, &settings).await;
}

#[instrument(name = "lease_release", skip_all, fields(lease = %settings.name))]
async fn release<S: LeaseStore>(store: &S, settings: &LeaseSettings) {
    for _ in 0..2 {
        let observed = match call(settings.call_timeout(), store.get()).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "could not read the lease to release it");
                return;
            }
        };
        if observed.holder.as_deref() != Some(settings.identity.as_str()) {
            return;
        }
        match call(
            settings.call_timeout(),
            store.update(&observed.version, None),
        )
        .await
        {
            Ok(_) => {
                info!("lease released");
                return;
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => {
                warn!(error = %e, "could not release the lease; it expires on its own");
                return;
            }
        }
    }
}

/// The election loop: observes (the answer to its last call, or the end of a wait), lets
/// [`campaign::step`] decide, publishes the claim, acts. Never returns.
async fn campaign<S: LeaseStore>(store: &S, settings: &LeaseSettings, elector: &Elector) {
    let mut state = State::Candidate(None);
    let mut seen = Seen::Nothing;
    loop {
        elector.beat();
        let was_leading = matches!(state, State::Leader(_));
        let (next, action) = campaign::step(settings, state, seen, Moment::read());
        state = next;
        elector.publish(state.claim(settings));
        if !was_leading && matches!(state, State::Leader(_)) {
            info!(
                identity = settings.identity.as_str(),
                "leader election: acquired the lease; leading"
            );
        }
        if let (State::Candidate(Some(view)), Action::WaitUntil(_)) = (&state, &action) {
            debug!(holder = ?view.observed.holder, "leader election: following");
        }
        seen = act(store, elector, action).await;
    }
}

/// Carries out one action and reports what came of it.
async fn act<S: LeaseStore>(store: &S, elector: &Elector, action: Action) -> Seen {
    let sent = Instant::now();
    match action {
        Action::Read { limit } => {
            let result = call(limit, store.get()).await;
            answered(elector, &result, "read");
            Seen::Read { sent, result }
        }
        Action::Create { holding, limit } => {
            let result = call(limit, store.create(&holding)).await;
            answered(elector, &result, "create");
            Seen::Wrote {
                sent,
                holding,
                result,
            }
        }
        Action::TakeOver {
            version,
            holding,
            limit,
        }
        | Action::Renew {
            version,
            holding,
            limit,
        } => {
            let result = call(limit, store.update(&version, Some(&holding))).await;
            answered(elector, &result, "update");
            Seen::Wrote {
                sent,
                holding,
                result,
            }
        }
        Action::WaitUntil(until) => {
            sleep_until(until).await;
            Seen::Nothing
        }
        Action::StepDown(why) => {
            warn!(
                reason = why,
                "leader election: stopped leading; competing for the lease again"
            );
            Seen::Nothing
        }
    }
}

/// A call the API server answered (a conflict included) counts as the election's success.
fn answered<T>(elector: &Elector, result: &Result<T, StoreError>, call: &'static str) {
    match result {
        Ok(_) => elector.succeeded(),
        Err(StoreError::Conflict) => {
            elector.succeeded();
            debug!(call, "leader election: the lease changed meanwhile");
        }
        Err(e) => warn!(error = %e, call, "leader election: a lease call failed; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    fn settings(d: u64, g: u64) -> LeaseSettings {
        LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration: Duration::from_secs(d),
            grace: Duration::from_secs(g),
        }
    }

    #[test]
    fn lease_settings_are_checked_before_use() {
        assert!(settings(15, 5).validate().is_ok());
        assert!(settings(5, 5).validate().is_err());
        assert!(settings(0, 0).validate().is_err());
        let mut s = settings(15, 5);
        s.duration = Duration::from_millis(15_500);
        assert!(s.validate().is_err(), "a lease lasts whole seconds");
    }

    #[test]
    fn the_renew_deadline_falls_between_the_renewal_and_the_expiry() {
        let s = settings(15, 5);
        assert_eq!(s.renew_after(), Duration::from_secs(10));
        assert_eq!(s.renew_deadline(), Duration::from_millis(12_500));
        assert!(s.renew_after() < s.renew_deadline() && s.renew_deadline() < s.duration);
        assert!(s.call_timeout() <= s.renew_deadline() - s.renew_after());
    }

    #[test]
    fn a_claim_ends_at_its_deadline() {
        let t0 = Instant::now();
        let c = Claim::Until(t0 + Duration::from_secs(1));
        assert!(c.is_current(t0));
        assert!(!c.is_current(t0 + Duration::from_secs(1)));
        assert!(Claim::Always.is_current(t0 + Duration::from_secs(1_000_000)));
        assert!(Leadership::always().is_leader());
        assert!(Leadership::always().wedged().is_none());
    }

    /// An in-memory Lease with the API server's resourceVersion semantics, and faults.
    #[derive(Clone, Default)]
    struct FakeLease(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        lease: Option<(u64, Option<Holding>)>,
        version: u64,
        /// Every call fails (RBAC removed, API server down).
        failing: bool,
        /// Writes are applied but their answer is lost.
        lose_answers: bool,
        writes: Vec<(Instant, String)>,
    }

    impl FakeLease {
        fn set_failing(&self, on: bool) {
            self.0.lock().expect("lock").failing = on;
        }
        fn set_lose_answers(&self, on: bool) {
            self.0.lock().expect("lock").lose_answers = on;
        }
        fn holder(&self) -> Option<String> {
            let s = self.0.lock().expect("lock");
            s.lease.as_ref()?.1.as_ref().map(|h| h.holder.clone())
        }
        fn write(
            &self,
            expected: Option<u64>,
            holding: Option<&Holding>,
        ) -> Result<String, StoreError> {
            let mut s = self.0.lock().expect("lock");
            if s.failing {
                return Err(StoreError::Failed("forbidden".into()));
            }
            if s.lease.as_ref().map(|l| l.0) != expected {
                return Err(StoreError::Conflict);
            }
            s.version += 1;
            let v = s.version;
            s.lease = Some((v, holding.cloned()));
            let who = holding.map(|h| h.holder.clone()).unwrap_or_default();
            s.writes.push((Instant::now(), who));
            if s.lose_answers {
                return Err(StoreError::Failed("timed out".into()));
            }
            Ok(v.to_string())
        }
    }

    impl LeaseStore for FakeLease {
        async fn get(&self) -> Result<Option<Observed>, StoreError> {
            sleep(Duration::from_millis(5)).await;
            let s = self.0.lock().expect("lock");
            if s.failing {
                return Err(StoreError::Failed("forbidden".into()));
            }
            Ok(s.lease.as_ref().map(|(v, h)| Observed {
                version: v.to_string(),
                holder: h.as_ref().map(|h| h.holder.clone()),
                duration: h
                    .as_ref()
                    .map(|h| Duration::from_secs(h.duration_seconds as u64)),
                transitions: h.as_ref().map_or(0, |h| h.transitions),
            }))
        }
        async fn create(&self, holding: &Holding) -> Result<String, StoreError> {
            sleep(Duration::from_millis(5)).await;
            self.write(None, Some(holding))
        }
        async fn update(
            &self,
            version: &str,
            holding: Option<&Holding>,
        ) -> Result<String, StoreError> {
            sleep(Duration::from_millis(5)).await;
            let expected = version.parse().ok();
            if expected.is_none() {
                return Err(StoreError::Conflict);
            }
            self.write(expected, holding)
        }
    }

    struct Replica {
        leadership: Leadership,
        stop: Option<tokio::sync::oneshot::Sender<Resign>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn replica(store: &FakeLease, name: &str) -> Replica {
        let mut s = settings(6, 2);
        s.identity = name.into();
        let (leadership, elector) = elected(&s, Arc::new(Metrics::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(store.clone(), s, elector, async move {
            rx.await.unwrap_or(Resign::LetExpire)
        }));
        Replica {
            leadership,
            stop: Some(tx),
            task,
        }
    }

    /// Samples both replicas every 50 ms for `span`: panics if both lead at once; returns how
    /// long after `from` exactly one led without a break until the end (None if never).
    async fn watch_pair(a: &Replica, b: &Replica, span: Duration) -> Vec<(Instant, bool, bool)> {
        let end = Instant::now() + span;
        let mut samples = Vec::new();
        while Instant::now() < end {
            let (la, lb) = (a.leadership.is_leader(), b.leadership.is_leader());
            assert!(!(la && lb), "two leaders at once");
            samples.push((Instant::now(), la, lb));
            sleep(Duration::from_millis(50)).await;
        }
        samples
    }

    /// When exactly one replica led continuously from then until the end of the samples.
    fn stable_leader_since(samples: &[(Instant, bool, bool)]) -> Option<Instant> {
        let last = samples.last()?;
        let who = if last.1 {
            0
        } else if last.2 {
            1
        } else {
            return None;
        };
        let mut since = last.0;
        for s in samples.iter().rev() {
            let leads = if who == 0 { s.1 } else { s.2 };
            if !leads {
                break;
            }
            since = s.0;
        }
        Some(since)
    }

    async fn failure_window_recovers(window: Duration) {
        let store = FakeLease::default();
        let a = replica(&store, "a");
        sleep(Duration::from_millis(100)).await;
        let b = replica(&store, "b");
        watch_pair(&a, &b, Duration::from_secs(3)).await;
        assert!(a.leadership.is_leader(), "the first replica leads");
        store.set_failing(true);
        let failed = watch_pair(&a, &b, window).await;
        // A leader that cannot renew stops before the Lease could expire (6 s).
        if window >= Duration::from_secs(6) {
            assert!(
                failed.iter().any(|s| !s.1 && !s.2),
                "nobody may lead through a failure longer than the lease"
            );
        }
        store.set_failing(false);
        let restored = Instant::now();
        let after = watch_pair(&a, &b, Duration::from_secs(20)).await;
        let since = stable_leader_since(&after).expect("a leader after the failure");
        // Within lease duration + grace of the end of the failure.
        assert!(
            since - restored <= Duration::from_secs(8),
            "leader again {:?} after the failure ended",
            since - restored
        );
        assert!(store.holder().is_some());
        a.task.abort();
        b.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_recovers_after_a_failure_shorter_than_one_renewal() {
        failure_window_recovers(Duration::from_secs(2)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_recovers_after_a_failure_of_about_one_renewal() {
        failure_window_recovers(Duration::from_millis(4_500)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_recovers_after_a_failure_longer_than_the_lease() {
        failure_window_recovers(Duration::from_secs(15)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_recovers_after_failures_of_many_lengths() {
        for ms in [300, 1_000, 3_900, 4_100, 5_000, 5_900, 6_100, 9_000] {
            failure_window_recovers(Duration::from_millis(ms)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_stops_before_its_lease_can_expire() {
        let store = FakeLease::default();
        let a = replica(&store, "a");
        sleep(Duration::from_secs(1)).await;
        assert!(a.leadership.is_leader());
        let last_write = store
            .0
            .lock()
            .expect("lock")
            .writes
            .last()
            .expect("write")
            .0;
        store.set_failing(true);
        while a.leadership.is_leader() {
            sleep(Duration::from_millis(10)).await;
        }
        let stopped = Instant::now() - last_write;
        assert!(
            stopped < Duration::from_secs(6),
            "stopped {stopped:?} after its last renewal, at or after the lease's expiry"
        );
        a.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_whose_answer_was_lost_is_recovered_from_the_conflict() {
        let store = FakeLease::default();
        let a = replica(&store, "a");
        let b = replica(&store, "b");
        watch_pair(&a, &b, Duration::from_secs(2)).await;
        let first = if a.leadership.is_leader() { &a } else { &b };
        store.set_lose_answers(true);
        watch_pair(&a, &b, Duration::from_secs(5)).await;
        store.set_lose_answers(false);
        let after = watch_pair(&a, &b, Duration::from_secs(10)).await;
        assert!(stable_leader_since(&after).is_some());
        let _ = first;
        a.task.abort();
        b.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_over_within_a_poll() {
        let store = FakeLease::default();
        let mut a = replica(&store, "a");
        sleep(Duration::from_millis(100)).await;
        let b = replica(&store, "b");
        watch_pair(&a, &b, Duration::from_secs(2)).await;
        assert!(a.leadership.is_leader());
        let _ = a.stop.take().expect("stop").send(Resign::Release);
        let _ = (&mut a.task).await;
        assert!(!a.leadership.is_leader());
        let released = Instant::now();
        while !b.leadership.is_leader() {
            sleep(Duration::from_millis(10)).await;
        }
        assert!(Instant::now() - released < Duration::from_secs(3));
        b.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_resigning_leader_that_lets_the_lease_expire_stops_at_once_and_keeps_it() {
        let store = FakeLease::default();
        let mut a = replica(&store, "a");
        sleep(Duration::from_secs(1)).await;
        assert!(a.leadership.is_leader());
        let _ = a.stop.take().expect("stop").send(Resign::LetExpire);
        let _ = (&mut a.task).await;
        assert!(!a.leadership.is_leader());
        assert_eq!(store.holder().as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_election_is_reported_wedged() {
        let s = settings(6, 2);
        let (leadership, elector) = elected(&s, Arc::new(Metrics::new()));
        assert!(leadership.wedged().is_none());
        sleep(Duration::from_secs(13)).await;
        assert!(leadership.wedged().is_some(), "no step for twice the lease");
        elector.beat();
        assert!(leadership.wedged().is_none());
    }
}
