//! Prometheus metrics. Every label value is a `&'static str` from a closed set: no ARNs,
//! names, messages or error texts ever become labels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::controller::key::RoleKey;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The controller's metrics and the registry that serves them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    sts_calls: Family<Labels, Counter>,
    sts_duration: Family<Labels, Histogram>,
    credentials_issued: Family<Labels, Counter>,
    roles: Family<Labels, Gauge>,
    earliest_expiry: Gauge<f64, AtomicU64>,
    in_backoff: Gauge,
    leader: Gauge,
    policy_denied: Gauge,
    policy_would_deny: Gauge,
    webhook_admissions: Family<Labels, Counter>,
    webhook_duration: Histogram,
    webhook_cert_expiry: Gauge<f64, AtomicU64>,
    election_success_age: Gauge<f64, AtomicU64>,
    election_last_success: Mutex<Option<Instant>>,
    /// Role gauges are reported only while leading (a follower's would be stale).
    leading: AtomicBool,
    watch_expired: Family<Labels, Counter>,
    watch_relists: Family<Labels, Counter>,
    writes_skipped: Family<Labels, Counter>,
    secret_observations: Family<Labels, Counter>,
    roles_state: Mutex<HashMap<RoleKey, RoleState>>,
    policy_state: Mutex<HashMap<RoleKey, PolicyState>>,
}

/// How the namespace role policy judged one AWSIAMRole, for the policy gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyState {
    Permitted,
    Denied,
    WouldDeny,
}

#[derive(Clone, Copy)]
struct RoleState {
    ready: bool,
    expiry: Option<i64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("kaic"),
            reconciles: Family::default(),
            reconcile_duration: histogram(),
            sts_calls: Family::default(),
            sts_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            credentials_issued: Family::default(),
            roles: Family::default(),
            earliest_expiry: Gauge::default(),
            in_backoff: Gauge::default(),
            leader: Gauge::default(),
            policy_denied: Gauge::default(),
            policy_would_deny: Gauge::default(),
            webhook_admissions: Family::default(),
            webhook_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            webhook_cert_expiry: Gauge::default(),
            election_success_age: Gauge::default(),
            election_last_success: Mutex::new(None),
            leading: AtomicBool::new(true),
            watch_expired: Family::default(),
            watch_relists: Family::default(),
            writes_skipped: Family::default(),
            secret_observations: Family::default(),
            roles_state: Mutex::new(HashMap::new()),
            policy_state: Mutex::new(HashMap::new()),
        };
        metrics.register_reconciles();
        metrics.register_sts();
        metrics.register_roles();
        metrics.register_election();
        metrics.register_watches();
        metrics.register_webhook();
        metrics
    }

    /// Reconciles: results, durations, how the Secret was observed, backoff, writes skipped.
    fn register_reconciles(&mut self) {
        let r = &mut self.registry;
        r.register(
            "reconciles",
            "Reconciles of AWSIAMRoles by result (ok, or the failure: kube, Throttled, STSUnavailable, ...)",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, STS call included",
            self.reconcile_duration.clone(),
        );
        r.register(
            "secret_observations",
            "How reconciles observed their Secret: cache (metadata cached, data known from this process's last write or read of that version) or api (read live)",
            self.secret_observations.clone(),
        );
        r.register(
            "objects_in_backoff",
            "AWSIAMRoles waiting in error backoff",
            self.in_backoff.clone(),
        );
        r.register(
            "writes_skipped",
            "STS calls and writes (secret, status, event, delete) not made, by reason (not-leader)",
            self.writes_skipped.clone(),
        );
    }

    /// STS calls and the credentials they issued.
    fn register_sts(&mut self) {
        let r = &mut self.registry;
        r.register(
            "sts_calls",
            "STS calls by operation and result (Success or a bounded failure reason)",
            self.sts_calls.clone(),
        );
        r.register(
            "sts_call_duration_seconds",
            "STS call latency by operation, SDK retries included",
            self.sts_duration.clone(),
        );
        r.register(
            "credentials_issued",
            "Credentials written to Secrets, by reason (missing, unreadable, spec-changed, recreated, expiring)",
            self.credentials_issued.clone(),
        );
    }

    /// The AWSIAMRoles' state: readiness, expiry, the namespace role policy.
    fn register_roles(&mut self) {
        let r = &mut self.registry;
        r.register(
            "awsiamroles",
            "AWSIAMRoles by Ready state (true, false)",
            self.roles.clone(),
        );
        r.register(
            "credentials_earliest_expiry_timestamp_seconds",
            "Unix time at which the first managed credentials expire (0 when none)",
            self.earliest_expiry.clone(),
        );
        r.register(
            "policy_denied",
            "AWSIAMRoles refused by the namespace role policy or the controller's guard (RoleNotPermitted)",
            self.policy_denied.clone(),
        );
        r.register(
            "policy_would_deny",
            "AWSIAMRoles issued under --namespace-policy=audit that enforce would deny",
            self.policy_would_deny.clone(),
        );
    }

    /// Leader election.
    fn register_election(&mut self) {
        let r = &mut self.registry;
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
        r.register(
            "leader_election_seconds_since_success",
            "Seconds since the leader election last completed a Lease call, or since it started while none has (0 without election)",
            self.election_success_age.clone(),
        );
    }

    /// The watches.
    fn register_watches(&mut self) {
        let r = &mut self.registry;
        r.register(
            "watch_expired",
            "Watches the API server ended with 410 Gone (history compacted), by resource",
            self.watch_expired.clone(),
        );
        r.register(
            "watch_relists",
            "Lists after the first, by resource: the watch cache was rebuilt",
            self.watch_relists.clone(),
        );
    }

    /// The admission webhook.
    fn register_webhook(&mut self) {
        let r = &mut self.registry;
        r.register(
            "webhook_admissions",
            "Pod admissions by result (mutated, unchanged, skipped, denied, error)",
            self.webhook_admissions.clone(),
        );
        r.register(
            "webhook_admission_duration_seconds",
            "Time the webhook took to answer one admission",
            self.webhook_duration.clone(),
        );
        r.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "Unix time at which the served webhook certificate expires",
            self.webhook_cert_expiry.clone(),
        );
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Ok(Some(t)) = self.election_last_success.lock().as_deref() {
            self.election_success_age.set(t.elapsed().as_secs_f64());
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a reconcile; `result` is "ok" or an error's bounded `metric_label()`.
    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconciles
            .get_or_create(&vec![("result", result)])
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn sts_call(&self, operation: &'static str, result: &'static str, seconds: f64) {
        self.sts_calls
            .get_or_create(&vec![("operation", operation), ("result", result)])
            .inc();
        self.sts_duration
            .get_or_create(&vec![("operation", operation)])
            .observe(seconds);
    }

    pub fn issued(&self, reason: &'static str) {
        self.credentials_issued
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn set_backoff(&self, objects: usize) {
        self.in_backoff
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Counts how a reconcile observed its Secret (`source`: cache, api).
    pub fn secret_observed(&self, source: &'static str) {
        self.secret_observations
            .get_or_create(&vec![("source", source)])
            .inc();
    }

    /// Counts an STS call or write (`what`: sts, secret, status, event, delete) not made.
    pub fn write_skipped(&self, reason: &'static str, what: &'static str) {
        self.writes_skipped
            .get_or_create(&vec![("reason", reason), ("write", what)])
            .inc();
    }

    /// Sets `kaic_leader`. Losing leadership also clears the role gauges (`kaic_awsiamroles`,
    /// the earliest expiry) and ignores role states until leading again: a follower's view is
    /// stale and must not fire alerts.
    /// `resource` is `awsiamroles`, `secrets` or `namespaces`.
    pub fn watch_expired(&self, resource: &'static str) {
        self.watch_expired
            .get_or_create(&vec![("resource", resource)])
            .inc();
    }

    pub fn watch_relisted(&self, resource: &'static str) {
        self.watch_relists
            .get_or_create(&vec![("resource", resource)])
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        let was = self.leading.swap(leader, Ordering::SeqCst);
        if was && !leader {
            self.update_roles(|m| m.clear());
        }
    }

    /// The leader election completed a Lease call.
    pub fn election_succeeded(&self) {
        if let Ok(mut t) = self.election_last_success.lock() {
            *t = Some(Instant::now());
        }
    }

    /// Counts an admission; `result` is one of `webhook::review::result`.
    pub fn webhook_admission(&self, result: &'static str, seconds: f64) {
        self.webhook_admissions
            .get_or_create(&vec![("result", result)])
            .inc();
        self.webhook_duration.observe(seconds);
    }

    pub fn webhook_certificate_expiry(&self, unix_seconds: f64) {
        self.webhook_cert_expiry.set(unix_seconds);
    }

    /// Records an AWSIAMRole's state and refreshes the derived gauges. Ignored while not
    /// leading.
    pub fn role_state(&self, key: &RoleKey, ready: bool, expiry: Option<i64>) {
        if !self.leading.load(Ordering::SeqCst) {
            return;
        }
        self.update_roles(|m| {
            m.insert(key.clone(), RoleState { ready, expiry });
        });
    }

    /// Forgets a deleted AWSIAMRole.
    pub fn forget_role(&self, key: &RoleKey) {
        self.update_roles(|m| {
            m.remove(key);
        });
        self.update_policy(|m| {
            m.remove(key);
        });
    }

    /// Records how the namespace role policy judged an AWSIAMRole.
    pub fn policy(&self, key: &RoleKey, state: PolicyState) {
        self.update_policy(|m| {
            m.insert(key.clone(), state);
        });
    }

    fn update_policy(&self, f: impl FnOnce(&mut HashMap<RoleKey, PolicyState>)) {
        let Ok(mut m) = self.policy_state.lock() else {
            return;
        };
        f(&mut m);
        let count = |state| {
            let n = m.values().filter(|s| **s == state).count();
            i64::try_from(n).unwrap_or(i64::MAX)
        };
        self.policy_denied.set(count(PolicyState::Denied));
        self.policy_would_deny.set(count(PolicyState::WouldDeny));
    }

    fn update_roles(&self, f: impl FnOnce(&mut HashMap<RoleKey, RoleState>)) {
        let Ok(mut m) = self.roles_state.lock() else {
            return;
        };
        f(&mut m);
        let ready = m.values().filter(|s| s.ready).count();
        self.roles
            .get_or_create(&vec![("ready", "true")])
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
        self.roles
            .get_or_create(&vec![("ready", "false")])
            .set(i64::try_from(m.len() - ready).unwrap_or(i64::MAX));
        let earliest = m.values().filter_map(|s| s.expiry).min().unwrap_or(0);
        self.earliest_expiry.set(earliest as f64);
    }

    /// The AWSIAMRoles currently tracked.
    pub fn tracked_roles(&self) -> Vec<RoleKey> {
        self.roles_state
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_bounded_labels() {
        let m = Metrics::new();
        m.reconciled("ok", 0.01);
        m.sts_call("AssumeRole", "Success", 0.2);
        m.issued("missing");
        m.role_state(&RoleKey::new("ns", "a"), true, Some(2000));
        m.role_state(&RoleKey::new("ns", "b"), false, Some(1000));
        let text = m.render();
        assert!(
            text.contains("kaic_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kaic_sts_calls_total{operation=\"AssumeRole\",result=\"Success\"} 1")
        );
        assert!(text.contains("kaic_credentials_issued_total{reason=\"missing\"} 1"));
        assert!(text.contains("kaic_awsiamroles{ready=\"true\"} 1"));
        assert!(text.contains("kaic_credentials_earliest_expiry_timestamp_seconds 1000"));
        m.forget_role(&RoleKey::new("ns", "b"));
        assert!(
            m.render()
                .contains("kaic_credentials_earliest_expiry_timestamp_seconds 2000")
        );
    }

    #[test]
    fn losing_leadership_clears_the_role_gauges_until_leading_again() {
        let m = Metrics::new();
        m.set_leader(true);
        m.role_state(&RoleKey::new("ns", "a"), true, Some(2000));
        m.role_state(&RoleKey::new("ns", "b"), false, Some(1000));
        m.set_leader(false);
        let text = m.render();
        assert!(text.contains("kaic_leader 0"), "{text}");
        assert!(
            text.contains("kaic_awsiamroles{ready=\"true\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kaic_awsiamroles{ready=\"false\"} 0"),
            "{text}"
        );
        assert!(text.contains("kaic_credentials_earliest_expiry_timestamp_seconds 0"));
        // A reconcile that was in flight when leadership ended reports nothing.
        m.role_state(&RoleKey::new("ns", "a"), true, Some(2000));
        assert!(m.tracked_roles().is_empty());
        m.set_leader(true);
        m.role_state(&RoleKey::new("ns", "a"), true, Some(2000));
        assert!(m.render().contains("kaic_awsiamroles{ready=\"true\"} 1"));
    }

    #[test]
    fn the_time_since_the_last_election_success_is_exported() {
        let m = Metrics::new();
        m.election_succeeded();
        let text = m.render();
        assert!(
            text.contains("kaic_leader_election_seconds_since_success "),
            "{text}"
        );
    }
}
