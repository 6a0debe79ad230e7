//! The endpoint mode's sidecar, the real binary (`kube-aws-iam-controller serve-credentials`),
//! on a directory laid out as the kubelet lays out a Secret volume (`..data` symlink to a
//! timestamped directory, the keys as symlinks through it, replaced by swapping `..data`): it
//! refuses callers without the pod's token and never serves expired credentials, whatever the
//! volume holds. The SDK matrix through the sidecar is tests/sdk.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};

const BINARY: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");

struct Sidecar {
    child: Child,
    port: u16,
    token: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(volume: &Path, token_dir: &Path) -> Sidecar {
    let port = free_port();
    let token_file = token_dir.join("token");
    let child = Command::new(BINARY)
        .args([
            "serve-credentials".to_string(),
            format!("--dir={}", volume.display()),
            format!("--listen=127.0.0.1:{port}"),
            format!("--token-file={}", token_file.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start serve-credentials");
    // Killed and waited for by Drop, also when it does not come up.
    let mut sidecar = Sidecar {
        child,
        port,
        token: String::new(),
    };
    for _ in 0..100 {
        if let (Ok(token), Ok(_)) = (
            std::fs::read_to_string(&token_file),
            TcpStream::connect(("127.0.0.1", port)),
        ) {
            sidecar.token = token;
            return sidecar;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("serve-credentials did not listen within 10 s");
}

/// `GET path` with an optional `Authorization` header: (status, body).
fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn probe(port: u16) -> bool {
    Command::new(BINARY)
        .args([
            "serve-credentials",
            "--probe",
            &format!("--listen=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The kubelet's AtomicWriter, by hand: a new timestamped directory, then `..data` swapped to
/// it with a rename, the user-visible names symlinks through `..data`.
fn project(volume: &Path, version: u32, key: &str, expiration: DateTime<Utc>) {
    let dir: PathBuf = volume.join(format!("..2026_12_04_00_00_0{version}.{version}"));
    std::fs::create_dir_all(&dir).expect("version dir");
    std::fs::write(
        dir.join("credentials.json"),
        format!(
            r#"{{"Version":1,"AccessKeyId":"{key}","SecretAccessKey":"secret-{key}","SessionToken":"token-{key}","Expiration":"{}"}}"#,
            expiration.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    )
    .expect("write");
    let tmp = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.file_name().expect("name"), &tmp).expect("symlink");
    std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");
    let visible = volume.join("credentials.json");
    if std::fs::symlink_metadata(&visible).is_err() {
        std::os::unix::fs::symlink("..data/credentials.json", &visible).expect("symlink");
    }
}

#[test]
fn a_request_without_the_token_or_with_a_wrong_one_is_refused() {
    let volume = tempfile::tempdir().expect("volume");
    let tokens = tempfile::tempdir().expect("token volume");
    project(
        volume.path(),
        1,
        "ASIAVALID",
        Utc::now() + chrono::Duration::hours(1),
    );
    let s = start(volume.path(), tokens.path());
    assert_eq!(s.token.len(), 64, "a 256-bit random token, hex");
    let wrong = format!("{}0", &s.token[..63]);
    let bearer = format!("Bearer {}", s.token);
    for (auth, want) in [
        (None, 401),
        (Some(wrong.as_str()), 403),
        (Some(bearer.as_str()), 403),
    ] {
        let (status, body) = get(s.port, "/v1/credentials", auth);
        assert_eq!(status, want, "{auth:?}: {body}");
        assert!(
            !body.contains("ASIAVALID") && !body.contains("secret-"),
            "{body}"
        );
    }
    let (status, body) = get(s.port, "/v1/credentials", Some(&s.token));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["AccessKeyId"], "ASIAVALID");
    assert_eq!(v["SecretAccessKey"], "secret-ASIAVALID");
    assert_eq!(v["Token"], "token-ASIAVALID");
    // Only the pod's own token volume holds the token; another pod's sidecar has its own.
    let other_tokens = tempfile::tempdir().expect("token volume");
    let other = start(volume.path(), other_tokens.path());
    assert_ne!(other.token, s.token);
    let (status, _) = get(other.port, "/v1/credentials", Some(&s.token));
    assert_eq!(status, 403);
}

#[test]
fn a_secret_holding_expired_credentials_is_never_served() {
    let volume = tempfile::tempdir().expect("volume");
    let tokens = tempfile::tempdir().expect("token volume");
    project(
        volume.path(),
        1,
        "ASIAEXPIRED",
        Utc::now() - chrono::Duration::minutes(1),
    );
    let s = start(volume.path(), tokens.path());
    let (status, body) = get(s.port, "/v1/credentials", Some(&s.token));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("Expired") && !body.contains("secret-"),
        "{body}"
    );
    assert!(
        !probe(s.port),
        "the startup probe must fail on expired credentials"
    );

    // The kubelet swaps in the renewed Secret: served from the next request on.
    project(
        volume.path(),
        2,
        "ASIARENEWED",
        Utc::now() + chrono::Duration::hours(1),
    );
    let (status, body) = get(s.port, "/v1/credentials", Some(&s.token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ASIARENEWED"), "{body}");
    assert!(probe(s.port));

    // Credentials that expire while served are not served on from memory.
    project(
        volume.path(),
        3,
        "ASIASHORT",
        Utc::now() + chrono::Duration::seconds(7),
    );
    let (status, body) = get(s.port, "/v1/credentials", Some(&s.token));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = get(s.port, "/v1/credentials", Some(&s.token));
    assert_eq!(
        status, 503,
        "within --min-remaining (5 s) of expiry: {body}"
    );
    assert!(!probe(s.port));
}
