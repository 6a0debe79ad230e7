//! Admin HTTP server: `/healthz` (the loops run; it answers from the start, before discovery or
//! the first election step), `/readyz` (caches synced; never depends on leadership), `/metrics`
//! (OpenMetrics text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::leader::Leadership;
use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// The AWSIAMRole and Secret watch caches are filled, and the Namespace cache when a
    /// namespace role policy is on (so the CRD is served and the policy can judge).
    pub ready: Arc<AtomicBool>,
    /// The controller loop is running.
    pub alive: Arc<AtomicBool>,
    /// The election loop, which is wedged if it neither leads nor competes.
    pub leadership: Leadership,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if !s.alive.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "controller loop stopped\n".to_string(),
        );
    }
    match s.leadership.wedged() {
        Some(since) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("leader election wedged: no step for {}s\n", since.as_secs()),
        ),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: AWSIAMRole, Secret or Namespace caches not synced (is the CRD installed?)\n",
        )
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::controller::leader::{self, LeaseSettings};

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_when_the_election_is_wedged() {
        let metrics = Arc::new(Metrics::new());
        let settings = LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        };
        let (leadership, _elector) = leader::elected(&settings, metrics.clone());
        let state = AdminState {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            alive: Arc::new(AtomicBool::new(true)),
            leadership,
        };
        let status = |s: AdminState| async { healthz(State(s)).await.into_response().status() };
        // Healthy from the start, before any election step (or discovery) finished.
        assert_eq!(status(state.clone()).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            status(state.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "no election step for twice the lease duration"
        );
        state.alive.store(false, Ordering::SeqCst);
        assert_eq!(status(state).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
