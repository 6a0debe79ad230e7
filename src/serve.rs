//! `serve-credentials`: the native sidecar of the webhook's endpoint mode. Serves the mounted
//! Secret's `credentials.json` over the container credentials protocol (the one the AWS SDKs
//! read from `AWS_CONTAINER_CREDENTIALS_FULL_URI`) on a loopback address, to callers that send
//! the pod's token (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), and never serves expired keys.
//!
//! The file is read again on every request: the kubelet replaces a Secret volume's files by
//! swapping its `..data` symlink, so each read sees one whole version, and a read of a file of
//! a few hundred bytes costs less than checking whether it changed.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::cli::ServeArgs;

/// The port the webhook points the SDKs at (`127.0.0.1:61112`): unassigned by IANA and
/// outside the usual ephemeral range, so it rarely meets an application's own port.
pub const DEFAULT_PORT: u16 = 61112;
/// The path of the credentials, as in `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// 200 once, and while, the sidecar serves valid credentials (the startup probe's check).
pub const READY_PATH: &str = "/ready";
/// Largest `credentials.json` read (one is well under 4 KiB).
const MAX_BYTES: u64 = 64 * 1024;
/// Random bytes in a token (hex-encoded in the file: 64 characters).
const TOKEN_BYTES: usize = 32;

// `credentials.json`: the process-credentials JSON the controller writes (docs/secret-format.md).
use crate::aws::file_credentials::ProcessCredentials;

/// The container credentials protocol's answer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Served {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// RFC 3339 in whole seconds, rounded down: every SDK of the matrix parses this form.
    pub expiration: String,
}

/// Why nothing is served; messages name the problem, never a value from the file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{0} is not process-credentials JSON with Version 1, keys and an Expiration")]
    Malformed(String),
    #[error(
        "the mounted credentials expire at {0} (is the AWSIAMRole Ready and its Secret renewed?)"
    )]
    Expired(String),
}

impl Unavailable {
    /// A bounded label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Unavailable::Unreadable { .. } => "Unreadable",
            Unavailable::Malformed(_) => "Malformed",
            Unavailable::Expired(_) => "Expired",
        }
    }
}

/// The credentials in `dir/credentials.json` now, if they are valid for more than `margin`.
pub fn current(dir: &Path, now: DateTime<Utc>, margin: Duration) -> Result<Served, Unavailable> {
    let path = dir.join("credentials.json");
    let shown = path.display().to_string();
    let text = read_bounded(&path).map_err(|reason| Unavailable::Unreadable {
        path: shown.clone(),
        reason,
    })?;
    let c: ProcessCredentials =
        serde_json::from_str(&text).map_err(|_| Unavailable::Malformed(shown.clone()))?;
    let (1, false, false, Some(expiration)) = (
        c.version,
        c.access_key_id.is_empty(),
        c.secret_access_key.is_empty(),
        c.expiration,
    ) else {
        return Err(Unavailable::Malformed(shown));
    };
    let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
    let expires = expiration.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    if now
        .checked_add_signed(margin)
        .is_none_or(|t| expiration <= t)
    {
        return Err(Unavailable::Expired(expires));
    }
    Ok(Served {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        token: c.session_token.unwrap_or_default(),
        expiration: expires,
    })
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.kind().to_string())?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.kind().to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    Ok(text)
}

/// The pod's token: the one already in `path` (the sidecar restarted; the app containers may
/// hold it), else a new random one, written atomically with mode 0444 so that app containers
/// running as any user can read it. Only containers that mount the pod's in-memory volume see it.
pub fn token(path: &Path) -> std::io::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && existing.len() == 2 * TOKEN_BYTES
        && existing.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(existing);
    }
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let token = hex::encode(bytes);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token")
    ));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

/// What the handlers share.
pub struct Endpoint {
    pub dir: PathBuf,
    pub token: String,
    pub margin: Duration,
    /// Whether the last answer served credentials: only changes are logged.
    serving: AtomicBool,
}

impl Endpoint {
    pub fn new(dir: PathBuf, token: String, margin: Duration) -> Self {
        Endpoint {
            dir,
            token,
            margin,
            serving: AtomicBool::new(false),
        }
    }

    /// Constant-time comparison of the `Authorization` header with the token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(self.token.as_bytes())))
    }

    fn current(&self) -> Result<Served, Unavailable> {
        let r = current(&self.dir, Utc::now(), self.margin);
        match (&r, self.serving.swap(r.is_ok(), Ordering::SeqCst)) {
            (Ok(s), false) => info!(expiration = %s.expiration, "serving credentials"),
            (Err(e), true) => {
                warn!(reason = e.reason(), error = %e, "not serving credentials")
            }
            _ => {}
        }
        r
    }
}

/// The sidecar's routes.
pub fn router(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route(CREDENTIALS_PATH, get(credentials))
        .route(READY_PATH, get(ready))
        .with_state(endpoint)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::RETRY_AFTER, "1"),
        ],
        body,
    )
        .into_response()
}

async fn credentials(State(e): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if !headers.contains_key(header::AUTHORIZATION) {
        return error(
            StatusCode::UNAUTHORIZED,
            "MissingToken",
            "send the token of AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE in the Authorization header"
                .into(),
        );
    }
    if !e.authorized(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "InvalidToken",
            "the Authorization header is not this pod's token".into(),
        );
    }
    match e.current() {
        Ok(served) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&served).unwrap_or_default(),
        )
            .into_response(),
        // 503: every SDK of the matrix retries a 5xx from the container endpoint.
        Err(u) => error(StatusCode::SERVICE_UNAVAILABLE, u.reason(), u.to_string()),
    }
}

async fn ready(State(e): State<Arc<Endpoint>>) -> Response {
    match e.current() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(u) => (StatusCode::SERVICE_UNAVAILABLE, format!("{u}\n")).into_response(),
    }
}

/// Runs the sidecar (or, with `--probe`, asks a running one whether it is ready) on its own
/// single-threaded runtime: one connection at a time is all a pod's SDKs need.
pub fn main(args: &ServeArgs) -> Result<(), crate::Error> {
    if args.probe {
        return probe(args.listen, Duration::from_secs(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| crate::Error::Config(format!("runtime: {e}")))?;
    runtime.block_on(serve(args))
}

async fn serve(args: &ServeArgs) -> Result<(), crate::Error> {
    let token = token(&args.token_file).map_err(|e| {
        crate::Error::Config(format!(
            "--token-file {}: {}",
            args.token_file.display(),
            e.kind()
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| crate::Error::Config(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    info!(%addr, dir = %args.dir.display(), token_file = %args.token_file.display(), "serving the container credentials protocol");
    let endpoint = Arc::new(Endpoint::new(args.dir.clone(), token, args.min_remaining));
    // Logs why it cannot serve yet (the Secret is mounted before any container starts).
    let _ = endpoint.current();
    axum::serve(listener, router(endpoint))
        .with_graceful_shutdown(terminated())
        .await
        .map_err(|e| crate::Error::Config(format!("server: {e}")))
}

async fn terminated() {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The startup probe: `GET READY_PATH` on the sidecar's address, success on 200. An exec probe,
/// because the kubelet's HTTP probes reach the pod's IP, never its loopback.
fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), crate::Error> {
    let fail = |what: String| crate::Error::Config(format!("probe {addr}: {what}"));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        s,
        "GET {READY_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut answer = String::new();
    s.take(4096)
        .read_to_string(&mut answer)
        .map_err(|e| fail(e.to_string()))?;
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let why = answer.split("\r\n\r\n").nth(1).unwrap_or(status).trim();
        Err(fail(why.chars().take(300).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    fn write(dir: &Path, expiration: DateTime<Utc>) {
        std::fs::write(
            dir.join("credentials.json"),
            format!(
                r#"{{"Version":1,"AccessKeyId":"ASIAKEY","SecretAccessKey":"s3cr3t","SessionToken":"tok","Expiration":"{}"}}"#,
                expiration.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        )
        .expect("write");
    }

    fn endpoint(dir: &Path) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            dir.to_path_buf(),
            "a".repeat(64),
            Duration::from_secs(5),
        ))
    }

    async fn get(e: Arc<Endpoint>, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = router(e)
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_right_token_gets_the_credentials_in_the_container_protocol() {
        let dir = tempfile::tempdir().expect("tmp");
        let exp = Utc::now() + chrono::Duration::minutes(30);
        write(dir.path(), exp);
        let (status, body) = get(
            endpoint(dir.path()),
            CREDENTIALS_PATH,
            Some(&"a".repeat(64)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["AccessKeyId"], "ASIAKEY");
        assert_eq!(v["SecretAccessKey"], "s3cr3t");
        assert_eq!(v["Token"], "tok");
        assert_eq!(
            v["Expiration"],
            exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        );
    }

    #[tokio::test]
    async fn a_request_without_the_token_or_with_a_wrong_one_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), Utc::now() + chrono::Duration::minutes(30));
        let e = endpoint(dir.path());
        for (auth, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(String::new()), StatusCode::FORBIDDEN),
            (Some("b".repeat(64)), StatusCode::FORBIDDEN),
            (Some("a".repeat(63)), StatusCode::FORBIDDEN),
            (Some(format!("{} ", "a".repeat(64))), StatusCode::FORBIDDEN),
            (
                Some(format!("Bearer {}", "a".repeat(64))),
                StatusCode::FORBIDDEN,
            ),
        ] {
            let (status, body) = get(e.clone(), CREDENTIALS_PATH, auth.as_deref()).await;
            assert_eq!(status, want, "{auth:?}");
            assert!(
                !body.contains("s3cr3t") && !body.contains("ASIAKEY"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn expired_credentials_are_never_served_and_the_probe_fails_on_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = endpoint(dir.path());
        // Expired, and valid for less than the margin.
        for exp in [
            Utc::now() - chrono::Duration::seconds(1),
            Utc::now() + chrono::Duration::seconds(3),
        ] {
            write(dir.path(), exp);
            let (status, body) = get(e.clone(), CREDENTIALS_PATH, Some(&"a".repeat(64))).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(
                body.contains("Expired") && !body.contains("s3cr3t"),
                "{body}"
            );
            let (status, _) = get(e.clone(), READY_PATH, None).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
        // The kubelet updates the volume: served at once, and ready.
        write(dir.path(), Utc::now() + chrono::Duration::minutes(30));
        let (status, _) = get(e.clone(), CREDENTIALS_PATH, Some(&"a".repeat(64))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = get(e, READY_PATH, None).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn missing_or_malformed_files_are_not_ready_and_name_no_value() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = endpoint(dir.path());
        let (status, body) = get(e.clone(), READY_PATH, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("cannot read"), "{body}");
        for bad in [
            r#"{"Version":2,"AccessKeyId":"ASIAKEY","SecretAccessKey":"s3cr3t","Expiration":"2099-01-01T00:00:00Z"}"#,
            r#"{"Version":1,"AccessKeyId":"ASIAKEY","SecretAccessKey":"s3cr3t"}"#,
            r#"{"Version":1,"AccessKeyId":"","SecretAccessKey":"s3cr3t","Expiration":"2099-01-01T00:00:00Z"}"#,
            "s3cr3t",
        ] {
            std::fs::write(dir.path().join("credentials.json"), bad).expect("write");
            let (status, body) = get(e.clone(), CREDENTIALS_PATH, Some(&"a".repeat(64))).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{bad}");
            assert!(!body.contains("s3cr3t"), "{body}");
        }
    }

    #[test]
    fn the_token_is_random_hex_readable_by_all_and_kept_across_restarts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        let first = token(&path).expect("token");
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(token(&path).expect("again"), first, "a restart keeps it");
        let other = tempfile::tempdir().expect("tmp");
        assert_ne!(token(&other.path().join("token")).expect("token"), first);
    }

    #[tokio::test]
    async fn the_probe_succeeds_only_while_valid_credentials_are_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server =
            tokio::spawn(axum::serve(listener, router(endpoint(dir.path()))).into_future());
        let probe_now = || async move {
            tokio::task::spawn_blocking(move || probe(addr, Duration::from_secs(2)))
                .await
                .expect("probe")
        };
        let err = probe_now().await.expect_err("no credentials yet");
        assert!(err.to_string().contains("cannot read"), "{err}");
        write(dir.path(), Utc::now() + chrono::Duration::minutes(30));
        probe_now().await.expect("ready");
        server.abort();
    }
}
