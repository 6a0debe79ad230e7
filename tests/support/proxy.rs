//! A TCP proxy between a client and the API server that a test can cut and restore, as a
//! network partition cuts a controller off its API server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use kube::{Client, Config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Env, base64_std, pem_der};

/// Forwards 127.0.0.1:<port> to a target address until dropped.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CutProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local_addr");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    // Cut: the connection is accepted and dropped at once, like a reset.
                    continue;
                }
                let mut rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        CutProxy { addr, cut, task }
    }

    /// Ends every open connection and turns new ones away until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Env {
    /// The API server's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_url
            .trim_start_matches("https://")
            .parse()
            .expect("API server address")
    }

    /// An admin client that reaches the API server through `proxy`.
    pub fn client_through(&self, proxy: &CutProxy) -> Client {
        let url = format!("https://{}", proxy.addr);
        let mut config = Config::new(url.parse().expect("url"));
        config.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        config.auth_info.client_certificate_data = Some(base64_std(&self.admin_cert_pem));
        config.auth_info.client_key_data = Some(base64_std(&self.admin_key_pem).into());
        config.connect_timeout = Some(Duration::from_secs(5));
        Client::try_from(config).expect("kube client")
    }
}
