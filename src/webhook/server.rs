//! HTTPS for the webhook: a rustls (ring) acceptor whose certificate can be swapped at any time
//! (new connections get the new one; open ones keep theirs), serving an axum router over HTTP/1.1,
//! and drained, not cut, when the replica stops.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// The certificate currently served; empty until the first one is loaded.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(String, Arc<CertifiedKey>)>>,
}

impl CertStore {
    /// Loads a PEM certificate chain and key; returns whether it differed from the current one.
    pub fn load(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        let fingerprint = format!("{cert_pem}\n{key_pem}");
        if let Ok(cur) = self.current.read()
            && cur.as_ref().is_some_and(|(f, _)| *f == fingerprint)
        {
            return Ok(false);
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate PEM: {e}"))?;
        if certs.is_empty() {
            return Err("certificate PEM holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("private key PEM: {e}"))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("private key: {e}"))?;
        let ck = CertifiedKey::new(certs, signing);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            ck.keys_match()
        {
            return Err("the private key does not belong to the certificate".into());
        }
        let ck = Arc::new(ck);
        if let Ok(mut cur) = self.current.write() {
            *cur = Some((fingerprint, ck));
        }
        Ok(true)
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().is_ok_and(|c| c.is_some())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, k)| k.clone()))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings serving whatever `certs` holds.
pub fn tls_config(certs: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the server is in its life: a replica that is asked to stop drains its connections
/// instead of cutting them, so the API server's admissions in flight or about to be sent on a
/// kept-alive connection do not fail (`failurePolicy: Fail` would refuse those pods).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Every answer carries `Connection: close`, so each connection the API server keeps ends
    /// cleanly after its next answer; new connections (routed here while the Service's
    /// endpoints update) are still accepted.
    Closing,
    /// No new connections; idle ones are closed, requests in flight finish.
    Closed,
}

/// Accepts connections until `phase` turns [`Phase::Closed`], then waits (at most 10 s) for the
/// requests in flight; each handshake and connection runs in its own task, so a slow client
/// holds up no one else. Dropping the future ends every connection at once (as a killed process
/// would).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    phase: watch::Receiver<Phase>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let closing = phase.clone();
    let router = router.layer(axum::middleware::map_response(move |mut res: Response| {
        let closing = *closing.borrow() != Phase::Serving;
        async move {
            if closing {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
    }));
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = phase.clone();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|p| *p == Phase::Closed) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let mut closed = phase.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                _ = closed.wait_for(|p| *p == Phase::Closed) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
