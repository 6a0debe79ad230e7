//! HTTPS for the webhook: a rustls (ring) acceptor whose certificate can be swapped at any time
//! (new connections get the new one; open ones keep theirs), serving an axum router over HTTP/1.1.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
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

/// Accepts connections until the task is dropped; each handshake and connection runs in its
/// own task, so a slow client holds up no one else. Dropping the future ends every connection
/// too (as a stopped process would), not only the listener.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
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
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
