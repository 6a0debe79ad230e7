//! Admin HTTP server: `/healthz` (the loops run; it answers from the start, before discovery or
//! the first election step), `/readyz` (caches synced and, with the webhook on, its certificate
//! loaded; never depends on leadership), `/metrics` (OpenMetrics text format).

use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::leader::Leadership;
use crate::metrics::Metrics;
use crate::webhook::server::CertStore;
use std::sync::{Arc, OnceLock};

/// The webhook's certificate store, once the webhook has started (set once by
/// `runtime::Process::launch`).
pub type WebhookCerts = Arc<OnceLock<Arc<CertStore>>>;

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
    /// With the webhook on: ready only once it serves a certificate, so the Service never
    /// routes an admission to a replica that cannot complete the TLS handshake.
    pub webhook: Option<WebhookCerts>,
}

/// Why this replica is not ready, if it is not.
fn not_ready(s: &AdminState) -> Option<&'static str> {
    if !s.ready.load(Ordering::SeqCst) {
        return Some(
            "not ready: AWSIAMRole, Secret or Namespace caches not synced (is the CRD installed?)\n",
        );
    }
    match &s.webhook {
        Some(certs) if !certs.get().is_some_and(|c| c.is_loaded()) => {
            Some("not ready: the webhook has no serving certificate yet\n")
        }
        _ => None,
    }
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
    match not_ready(&s) {
        None => (StatusCode::OK, "ready\n"),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
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
            webhook: None,
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

    #[tokio::test]
    async fn readyz_waits_for_the_webhook_certificate_when_the_webhook_is_on() {
        let metrics = Arc::new(Metrics::new());
        let certs: WebhookCerts = Arc::new(OnceLock::new());
        let state = AdminState {
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            alive: Arc::new(AtomicBool::new(true)),
            leadership: Leadership::always(),
            webhook: Some(certs.clone()),
        };
        let status = |s: AdminState| async { readyz(State(s)).await.into_response().status() };
        assert_eq!(
            status(state.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook not started"
        );
        let store = Arc::new(CertStore::default());
        assert!(certs.set(store.clone()).is_ok());
        assert_eq!(
            status(state.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "no certificate yet"
        );
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(store.load(&cert.pem(), &key.serialize_pem()), Ok(true));
        assert_eq!(status(state.clone()).await, StatusCode::OK);
        let off = AdminState {
            webhook: None,
            ..state
        };
        assert_eq!(
            status(off).await,
            StatusCode::OK,
            "webhook off: caches are enough"
        );
    }
}
