//! A replica of the built binary that gets SIGTERM drains its webhook instead of cutting it: the
//! API server keeps connections alive and sends on them without knowing the pod is stopping,
//! and with `failurePolicy: Fail` every admission lost there is a refused pod (the admission
//! benchmark's rolling restart found one in 47 at 10 admissions/s before this).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use kube_aws_iam_controller::webhook;
use kube_aws_iam_controller::webhook::mutate::ROLE_LABEL;

fn review() -> String {
    support::admission_review(
        "team",
        "CREATE",
        None,
        json!({"metadata": {"name": "p", "labels": {ROLE_LABEL: "app"}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .to_string()
}

/// A kept-alive HTTPS connection to the webhook, trusting the CA in its Secret.
async fn connect(port: u16, ca_pem: &str) -> SendRequest<Full<Bytes>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the webhook");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// POSTs a review; the status, the `Connection` header and whether the pod was allowed.
async fn post(sender: &mut SendRequest<Full<Bytes>>) -> Result<(u16, String, bool), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post("/mutate")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review())))
        .expect("request");
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let connection = res
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let out: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((
        status,
        connection,
        out["response"]["allowed"].as_bool() == Some(true),
    ))
}

#[tokio::test]
async fn after_sigterm_the_webhook_answers_on_kept_connections_and_new_ones_then_stops() {
    let s = support::scene("hook-drain").await;
    let port = support::free_port();
    let flags = [
        "--webhook".to_string(),
        format!("--webhook-addr=127.0.0.1:{port}"),
        format!("--webhook-namespace={}", s.ns),
        "--webhook-san=127.0.0.1".into(),
        format!("--webhook-configuration=kaic-{}", s.ns),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bin = support::start_binary(s.env, &s.ns, &s.env.moto_endpoint, &flags).await;
    support::wait_for("the webhook's certificate", || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let ca = webhook::material(
        &secrets
            .get("kube-aws-iam-controller-webhook-tls")
            .await
            .expect("TLS Secret"),
    )
    .expect("material")
    .bundle();

    let mut kept = connect(port, &ca).await;
    let (status, connection, allowed) = post(&mut kept).await.expect("first admission");
    assert_eq!((status, allowed), (200, true));
    assert_ne!(connection, "close", "closed before the stop");

    let pid = bin.pid().expect("controller pid");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    // The API server may send on its connection at any moment after the SIGTERM (it does not
    // know), and open new ones until the Service's endpoints drop the pod.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = post(&mut kept).await;
    assert_eq!(
        answer,
        Ok((200, "close".to_string(), true)),
        "the admission sent on a kept connection after SIGTERM"
    );
    let mut fresh = connect(port, &ca).await;
    let answer = post(&mut fresh).await;
    assert_eq!(
        answer,
        Ok((200, "close".to_string(), true)),
        "an admission on a new connection after SIGTERM"
    );

    let status = tokio::task::spawn_blocking(move || {
        let mut bin = bin;
        let status = bin.child.wait().expect("watchdog exit");
        (status, bin)
    })
    .await
    .expect("wait");
    assert!(
        status.0.success(),
        "exit {:?}:\n{}",
        status.0,
        status.1.logs()
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the webhook still accepts after the process ended"
    );
}
