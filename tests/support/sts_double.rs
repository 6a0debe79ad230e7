//! An in-process AWS STS **test double** for integration tests.
//!
//! `moto`'s STS server accepts any role, any duration and any signature, and its
//! error XML cannot be parsed by `aws-sdk-sts`. This test double fills that gap:
//! it is a small axum HTTP server on `127.0.0.1:<free port>`, running in a tokio
//! task, that speaks the AWS STS Query protocol (`Action=AssumeRole` and
//! `Action=GetCallerIdentity`, form-encoded POST bodies, version `2011-06-15`)
//! and answers with the XML documents AWS STS returns, errors included
//! (`<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`
//! with the matching HTTP status).
//!
//! What it models:
//! * per-role faults: [`StsDouble::deny`] (403 `AccessDenied`),
//!   [`StsDouble::throttle`] (400 `Throttling`), [`StsDouble::server_error`]
//!   (500 `InternalFailure`), [`StsDouble::latency`] (with a long one: a peer that
//!   never answers), [`StsDouble::trickle`] (one byte a second); and a global
//!   [`StsDouble::unavailable`] (503 `ServiceUnavailable` for every request),
//!   [`StsDouble::caller_identity_unavailable`] (the same for `GetCallerIdentity` only);
//! * validation like AWS's: role ARN shape, `RoleSessionName` (2–64 chars of
//!   `[\w+=,.@-]`), `DurationSeconds` within `900..=MaxSessionDuration` of the
//!   role ([`StsDouble::max_session`], default 3600), `ExternalId`,
//!   `SourceIdentity`, at most 10 policy ARNs and 50 tags;
//! * authentication like STS's: every request must carry a SigV4 `Authorization`
//!   header, and the signature is recomputed with `aws-sigv4` from the secret of
//!   the access key it names: one of the long-term [`USERS`] (or
//!   [`StsDouble::add_user`]) or a session this double issued, which must also
//!   send its own `X-Amz-Security-Token`. An unknown key or a wrong or missing
//!   token is 403 `InvalidClientTokenId`, a wrong secret 403
//!   `SignatureDoesNotMatch`, an expired session 403 `ExpiredToken` (see
//!   [`StsDouble::expire_key`]); an `AssumeRole` made with a session is role
//!   chaining, limited to one hour;
//! * one partition per double (`aws` unless [`StsDouble::partition`] says
//!   otherwise): a role ARN of another partition is a `ValidationError`, and
//!   `DurationSeconds` above 43200 too, whatever the role's maximum.
//!
//! Every request is recorded ([`StsDouble::requests`]) in arrival order. The
//! server stops when the [`StsDouble`] is dropped.

// This file is shared by several integration-test crates, each of which uses
// only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use tokio::sync::oneshot;

/// The account of the default (non-assumed-role) caller.
pub const DEFAULT_ACCOUNT: &str = "123456789012";
/// The ARN reported for callers whose access key the double did not issue.
pub const DEFAULT_CALLER_ARN: &str = "arn:aws:iam::123456789012:user/kaic-test";
/// The unique id reported for callers whose access key the double did not issue.
pub const DEFAULT_CALLER_USER_ID: &str = "AIDAKAICTESTUSER00001";
/// `MaxSessionDuration` of a role unless [`StsDouble::max_session`] says otherwise.
pub const DEFAULT_MAX_SESSION_SECS: i64 = 3600;
/// The most `DurationSeconds` STS accepts for any role.
pub const MAX_DURATION_SECS: i64 = 43200;
/// The long-term access keys (id, secret) every double knows: the keys the tests sign with.
pub const USERS: &[(&str, &str)] = &[
    ("AKIDCONTROLLER000000", "controller-secret"),
    ("AKIDOPERATOR00000000", "operator-secret"),
    ("AKIDTEST", "secret"),
];

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const STS_VERSION: &str = "2011-06-15";
const SESSION_PATTERN: &str = r"[\w+=,.@-]*";
/// The session-token size that `SessionTokenUtilization` is a percentage of.
const MAX_SESSION_TOKEN_SIZE: usize = 4096;
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE64_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One request the double received, as it was parsed.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The `Action` parameter (`AssumeRole`, `GetCallerIdentity`, ...); empty when absent.
    pub action: String,
    pub role_arn: Option<String>,
    pub session_name: Option<String>,
    /// `DurationSeconds`, when present and an integer.
    pub duration_seconds: Option<i64>,
    pub external_id: Option<String>,
    pub source_identity: Option<String>,
    pub policy: Option<String>,
    /// `PolicyArns.member.N.arn`, ordered by N.
    pub policy_arns: Vec<String>,
    /// `Tags.member.N.Key` / `Tags.member.N.Value`, ordered by N.
    pub tags: Vec<(String, String)>,
    /// `TransitiveTagKeys.member.N`, ordered by N.
    pub transitive_tag_keys: Vec<String>,
    /// The access key id from the `Authorization` header's `Credential=`.
    pub caller_access_key: Option<String>,
    /// The HTTP status answered; 0 while the request is still being served
    /// (or if the client went away before the answer).
    pub status: u16,
    /// When the request arrived (before any [`StsDouble::latency`]).
    pub received_at: std::time::Instant,
    /// The SDK's `amz-sdk-invocation-id`: the same for the attempts (retries) of one call.
    pub invocation_id: Option<String>,
}

/// A session the double issued.
#[derive(Clone, Debug)]
struct IssuedSession {
    role_arn: String,
    assumed_role_arn: String,
    assumed_role_id: String,
    account: String,
    expiration: DateTime<Utc>,
    secret_access_key: String,
    session_token: String,
}

#[derive(Default)]
struct Inner {
    /// Long-term access key id -> secret.
    users: HashMap<String, String>,
    /// The partition this STS serves; `None` is `aws`.
    partition: Option<String>,
    denied: HashSet<String>,
    throttled: HashSet<String>,
    server_errors: HashSet<String>,
    unavailable: bool,
    caller_identity_unavailable: bool,
    latency: HashMap<String, Duration>,
    /// Roles whose `AssumeRole` answers are sent one byte a second.
    trickle: HashSet<String>,
    max_session: HashMap<String, i64>,
    lifetimes: HashMap<String, Duration>,
    role_ids: HashMap<String, String>,
    requests: Vec<RecordedRequest>,
    sessions: HashMap<String, IssuedSession>,
    /// (role ARN, access key id) in issue order.
    issued: Vec<(String, String)>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the double's state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The STS test double. See the module documentation.
pub struct StsDouble {
    /// `http://127.0.0.1:PORT`, to give to `endpoint_url`.
    pub endpoint: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Asserts the suite's call-rate invariant when dropped (see [`StsDouble::start_checked`]).
    check_call_rate: bool,
}

impl StsDouble {
    /// Binds a free port on 127.0.0.1 and serves until the double is dropped.
    pub async fn start() -> StsDouble {
        Self::start_on("127.0.0.1").await
    }

    /// Binds a free port on `ip` (the real node's address, which its pods reach) and serves
    /// until the double is dropped.
    pub async fn start_on(ip: &str) -> StsDouble {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("STS double: bind {ip}:0: {e}"));
        let addr = listener.local_addr().expect("STS double: local_addr");
        let shared = Arc::new(Shared::default());
        shared.lock().users = USERS
            .iter()
            .map(|(id, secret)| ((*id).to_owned(), (*secret).to_owned()))
            .collect();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        StsDouble {
            endpoint: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            check_call_rate: false,
        }
    }

    /// Adds a long-term access key the double accepts (signed with `secret`).
    pub fn add_user(&self, access_key_id: &str, secret: &str) {
        self.shared
            .lock()
            .users
            .insert(access_key_id.to_owned(), secret.to_owned());
    }

    /// Makes the double an STS of `partition` (`aws`, `aws-cn`, `aws-us-gov`): role ARNs of
    /// other partitions are then rejected.
    pub fn partition(&self, partition: &str) {
        self.shared.lock().partition = Some(partition.to_owned());
    }

    /// Like [`start`](Self::start), and when dropped (the test's end) asserts that no role got
    /// more than 2 `AssumeRole` calls in any minute.
    pub async fn start_checked() -> StsDouble {
        let mut double = Self::start().await;
        double.check_call_rate = true;
        double
    }

    /// Credentials issued for `role_arn` expire after `d` whatever `DurationSeconds` asked for,
    /// so renewal can be tested in seconds.
    pub fn lifetime(&self, role_arn: &str, d: Duration) {
        self.shared.lock().lifetimes.insert(role_arn.to_owned(), d);
    }

    /// `AssumeRole` on `role_arn` answers 403 `AccessDenied` until [`allow`](Self::allow).
    pub fn deny(&self, role_arn: &str) {
        self.shared.lock().denied.insert(role_arn.to_owned());
    }

    /// Undoes [`deny`](Self::deny).
    pub fn allow(&self, role_arn: &str) {
        self.shared.lock().denied.remove(role_arn);
    }

    /// While on, `AssumeRole` on `role_arn` answers 400 `Throttling`.
    pub fn throttle(&self, role_arn: &str, on: bool) {
        toggle(&mut self.shared.lock().throttled, role_arn, on);
    }

    /// While on, `AssumeRole` on `role_arn` answers 500 `InternalFailure`.
    pub fn server_error(&self, role_arn: &str, on: bool) {
        toggle(&mut self.shared.lock().server_errors, role_arn, on);
    }

    /// While on, every request answers 503 `ServiceUnavailable`.
    pub fn unavailable(&self, on: bool) {
        self.shared.lock().unavailable = on;
    }

    /// While on, `GetCallerIdentity` (only) answers 503 `ServiceUnavailable`: base role ARN
    /// discovery fails while `AssumeRole` works.
    pub fn caller_identity_unavailable(&self, on: bool) {
        self.shared.lock().caller_identity_unavailable = on;
    }

    /// Delays every `AssumeRole` on `role_arn` (answered or failed) by `d`;
    /// `Duration::ZERO` removes the delay.
    pub fn latency(&self, role_arn: &str, d: Duration) {
        let mut inner = self.shared.lock();
        if d.is_zero() {
            inner.latency.remove(role_arn);
        } else {
            inner.latency.insert(role_arn.to_owned(), d);
        }
    }

    /// Sends every answer to an `AssumeRole` on `role_arn` one byte a second (headers at once,
    /// with the whole body's `Content-Length`): a peer that answers but never finishes.
    pub fn trickle(&self, role_arn: &str, on: bool) {
        let mut inner = self.shared.lock();
        if on {
            inner.trickle.insert(role_arn.to_owned());
        } else {
            inner.trickle.remove(role_arn);
        }
    }

    /// Sets the role's `MaxSessionDuration` (default 3600). `DurationSeconds`
    /// outside `900..=secs` then answers 400 `ValidationError`.
    pub fn max_session(&self, role_arn: &str, secs: i64) {
        self.shared
            .lock()
            .max_session
            .insert(role_arn.to_owned(), secs);
    }

    /// Makes the session of `access_key_id` (one the double issued) expired:
    /// any request signed with it then answers 403 `ExpiredToken`.
    /// Returns false if the double did not issue that key.
    pub fn expire_key(&self, access_key_id: &str) -> bool {
        match self.shared.lock().sessions.get_mut(access_key_id) {
            Some(session) => {
                session.expiration = Utc::now() - chrono::Duration::seconds(1);
                true
            }
            None => false,
        }
    }

    /// Every `AssumeRole` request received for `role_arn`, failed ones included.
    pub fn assume_role_calls(&self, role_arn: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.action == "AssumeRole" && r.role_arn.as_deref() == Some(role_arn))
            .count()
    }

    /// The controller's `AssumeRole` calls per role ARN (the SDK's retries of one call count
    /// once), as the times the first attempt of each arrived.
    pub fn assume_role_call_times(&self) -> BTreeMap<String, Vec<std::time::Instant>> {
        let mut seen = HashSet::new();
        let mut calls: BTreeMap<String, Vec<std::time::Instant>> = BTreeMap::new();
        for r in self.shared.lock().requests.iter() {
            let (Some(arn), true) = (r.role_arn.as_ref(), r.action == "AssumeRole") else {
                continue;
            };
            if let Some(id) = &r.invocation_id
                && !seen.insert(id.clone())
            {
                continue;
            }
            calls.entry(arn.clone()).or_default().push(r.received_at);
        }
        calls
    }

    /// The suite's invariant: no role gets more than 2 `AssumeRole` calls in any minute.
    /// (Three calls must span at least 58 s: 2 s of slack for requests in flight.)
    pub fn assert_at_most_two_calls_per_role_per_minute(&self) {
        for (arn, times) in self.assume_role_call_times() {
            for w in times.windows(3) {
                let span = w[2].duration_since(w[0]);
                assert!(
                    span >= Duration::from_secs(58),
                    "{arn}: 3 AssumeRole calls within {span:?} ({} calls in all): more than 2 a minute",
                    times.len()
                );
            }
        }
    }

    /// Every request received, whatever its action or outcome.
    pub fn total_calls(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The access key ids issued for `role_arn`, in issue order.
    pub fn issued_keys(&self, role_arn: &str) -> Vec<String> {
        self.shared
            .lock()
            .issued
            .iter()
            .filter(|(role, _)| role == role_arn)
            .map(|(_, key)| key.clone())
            .collect()
    }
}

impl Drop for StsDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if self.check_call_rate && !std::thread::panicking() {
            self.assert_at_most_two_calls_per_role_per_minute();
        }
    }
}

fn toggle(set: &mut HashSet<String>, role_arn: &str, on: bool) {
    if on {
        set.insert(role_arn.to_owned());
    } else {
        set.remove(role_arn);
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

/// An STS error answer.
struct StsError {
    status: StatusCode,
    /// `Sender` (the caller's fault) or `Receiver` (the service's).
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl StsError {
    fn sender(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        StsError {
            status,
            kind: "Sender",
            code,
            message: message.into(),
        }
    }

    fn receiver(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        StsError {
            status,
            kind: "Receiver",
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::sender(StatusCode::BAD_REQUEST, "ValidationError", message)
    }
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Collects `Prefix.member.N[.field]` values, ordered by N.
fn members(params: &Params, prefix: &str, field: Option<&str>) -> Vec<String> {
    let mut found = BTreeMap::new();
    let head = format!("{prefix}.member.");
    for (k, v) in params {
        let Some(rest) = k.strip_prefix(&head) else {
            continue;
        };
        let index = match field {
            Some(field) => match rest.split_once('.') {
                Some((n, f)) if f == field => n,
                _ => continue,
            },
            None => rest,
        };
        if let Ok(n) = index.parse::<usize>() {
            found.insert(n, v.clone());
        }
    }
    found.into_values().collect()
}

fn parse_tags(params: &Params) -> Vec<(String, String)> {
    let mut found: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix("Tags.member.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        let entry = found.entry(n).or_default();
        match field {
            "Key" => entry.0 = v.clone(),
            "Value" => entry.1 = v.clone(),
            _ => {}
        }
    }
    found.into_values().collect()
}

/// Decodes an `application/x-www-form-urlencoded` string.
fn parse_form(input: &str, out: &mut Params) {
    for pair in input.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((url_decode(k), url_decode(v)));
    }
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The access key id of `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/sts/aws4_request, ...`.
fn caller_access_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let start = auth.find("Credential=")? + "Credential=".len();
    let key = auth[start..].split('/').next()?.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// What authentication looks at: the request as it arrived.
struct SignedRequest<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
struct Authorization<'a> {
    access_key_id: &'a str,
    /// `date/region/service/aws4_request`
    scope: Vec<&'a str>,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let access_key_id = scope.next().filter(|k| !k.is_empty())?;
    let scope: Vec<&str> = scope.collect();
    (scope.len() == 4 && scope[3] == "aws4_request").then_some(())?;
    Some(Authorization {
        access_key_id,
        scope,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

fn forbidden(code: &'static str, message: &str) -> StsError {
    StsError::sender(StatusCode::FORBIDDEN, code, message)
}

fn invalid_token() -> StsError {
    forbidden(
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
    )
}

/// Authenticates the request as STS does; `Some` is the issued session that signed it, `None` a
/// long-term user.
fn authenticate(
    shared: &Shared,
    req: &SignedRequest<'_>,
) -> Result<Option<IssuedSession>, StsError> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;

    let Some(value) = req.headers.get(header::AUTHORIZATION) else {
        return Err(forbidden(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    };
    let incomplete = || {
        StsError::sender(
            StatusCode::BAD_REQUEST,
            "IncompleteSignature",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' \
             parameters of the AWS4-HMAC-SHA256 algorithm.",
        )
    };
    let auth = value
        .to_str()
        .ok()
        .and_then(parse_authorization)
        .ok_or_else(incomplete)?;
    let token = req
        .headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());

    // Whose key is it, and does the token go with it?
    let (secret, session) = {
        let inner = shared.lock();
        if let Some(session) = inner.sessions.get(auth.access_key_id) {
            if token != Some(session.session_token.as_str()) {
                return Err(invalid_token());
            }
            (session.secret_access_key.clone(), Some(session.clone()))
        } else if let Some(secret) = inner.users.get(auth.access_key_id) {
            if token.is_some() {
                return Err(invalid_token());
            }
            (secret.clone(), None)
        } else {
            return Err(invalid_token());
        }
    };
    if let Some(session) = &session
        && Utc::now() >= session.expiration
    {
        return Err(forbidden(
            "ExpiredToken",
            "The security token included in the request is expired",
        ));
    }

    // Recompute the signature from the secret and compare.
    let mismatch = || {
        forbidden(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        )
    };
    let date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y%m%dT%H%M%SZ").ok())
        .map(|d| d.and_utc())
        .ok_or_else(incomplete)?;
    if (Utc::now() - date).num_minutes().abs() > 15 {
        return Err(forbidden(
            "SignatureDoesNotMatch",
            "Signature expired: the request time is more than 15 minutes away from the server time.",
        ));
    }
    let [_, region, service, _] = auth.scope[..] else {
        return Err(incomplete());
    };
    if service != "sts" {
        return Err(mismatch());
    }
    let signs = |name: &str| auth.signed_headers.contains(&name);
    let mut settings = SigningSettings::default();
    // Sign exactly the headers the client signed (user-agent included, as Java 1.x does).
    settings.excluded_headers = Some(Vec::new());
    settings.session_token_mode = if signs("x-amz-security-token") {
        SessionTokenMode::Include
    } else {
        SessionTokenMode::Exclude
    };
    settings.payload_checksum_kind = if signs("x-amz-content-sha256") {
        PayloadChecksumKind::XAmzSha256
    } else {
        PayloadChecksumKind::NoHeader
    };
    let mut headers = Vec::new();
    for name in &auth.signed_headers {
        if matches!(
            *name,
            "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
        ) {
            continue;
        }
        let values: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(mismatch());
        }
        for v in values {
            headers.push((*name, v));
        }
    }
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{host}{path}");
    let identity = aws_credential_types::Credentials::new(
        auth.access_key_id,
        secret,
        token.map(str::to_owned),
        None,
        "sts-double",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(date.into())
        .settings(settings)
        .build()
        .map_err(|_| incomplete())?
        .into();
    let signable = SignableRequest::new(
        req.method.as_str(),
        &url,
        headers.into_iter(),
        SignableBody::Bytes(req.body),
    )
    .map_err(|_| mismatch())?;
    let (_, expected) = sign(signable, &params)
        .map_err(|_| mismatch())?
        .into_parts();
    if expected != auth.signature {
        return Err(mismatch());
    }
    Ok(session)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = Params::new();
    if let Some(query) = uri.query() {
        parse_form(query, &mut params);
    }
    parse_form(&String::from_utf8_lossy(&body), &mut params);

    let record = RecordedRequest {
        action: param(&params, "Action").unwrap_or_default().to_owned(),
        role_arn: param(&params, "RoleArn").map(str::to_owned),
        session_name: param(&params, "RoleSessionName").map(str::to_owned),
        duration_seconds: param(&params, "DurationSeconds").and_then(|d| d.trim().parse().ok()),
        external_id: param(&params, "ExternalId").map(str::to_owned),
        source_identity: param(&params, "SourceIdentity").map(str::to_owned),
        policy: param(&params, "Policy").map(str::to_owned),
        policy_arns: members(&params, "PolicyArns", Some("arn")),
        tags: parse_tags(&params),
        transitive_tag_keys: members(&params, "TransitiveTagKeys", None),
        caller_access_key: caller_access_key(&headers),
        status: 0,
        received_at: std::time::Instant::now(),
        invocation_id: headers
            .get("amz-sdk-invocation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let index = {
        let mut inner = shared.lock();
        inner.requests.push(record.clone());
        inner.requests.len() - 1
    };

    let request_id = uuid_v4();
    let signed = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let result = serve(&shared, &params, &record, &signed, &request_id).await;
    let (status, body) = match result {
        Ok(xml) => (StatusCode::OK, xml),
        Err(err) => (err.status, error_xml(&err, &request_id)),
    };
    let trickle = {
        let mut inner = shared.lock();
        inner.requests[index].status = status.as_u16();
        record
            .role_arn
            .as_deref()
            .is_some_and(|r| inner.trickle.contains(r))
    };

    let mut response = if trickle {
        trickled(status, body)
    } else {
        (status, body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    response
}

/// `body` sent one byte a second, its length announced up front.
fn trickled(status: StatusCode, body: String) -> Response {
    let len = body.len();
    let bytes = Bytes::from(body);
    let stream = futures::stream::unfold(0usize, move |at| {
        let bytes = bytes.clone();
        async move {
            if at >= bytes.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, std::convert::Infallible>(bytes.slice(at..at + 1)),
                at + 1,
            ))
        }
    });
    let mut response = (status, axum::body::Body::from_stream(stream)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

async fn serve(
    shared: &Shared,
    params: &Params,
    req: &RecordedRequest,
    signed: &SignedRequest<'_>,
    request_id: &str,
) -> Result<String, StsError> {
    // A service-wide outage comes before anything else, then authentication.
    if shared.lock().unavailable {
        return Err(StsError::receiver(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        ));
    }
    let caller_session = authenticate(shared, signed)?;

    let version = param(params, "Version").unwrap_or("NO_VERSION_SPECIFIED");
    let action = param(params, "Action");
    if let Some(action) = action
        && version != STS_VERSION
    {
        return Err(StsError::sender(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {action} for version {version}"),
        ));
    }
    match action {
        None => Err(StsError::sender(
            StatusCode::BAD_REQUEST,
            "MissingAction",
            "Could not find operation  for version NO_VERSION_SPECIFIED",
        )),
        Some("GetCallerIdentity") => {
            if shared.lock().caller_identity_unavailable {
                return Err(StsError::receiver(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                ));
            }
            Ok(get_caller_identity_xml(caller_session.as_ref(), request_id))
        }
        Some("AssumeRole") => {
            let raw_duration = param(params, "DurationSeconds");
            assume_role(
                shared,
                req,
                raw_duration,
                caller_session.as_ref(),
                request_id,
            )
            .await
        }
        Some(other) => Err(StsError::sender(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {other} for version {version}"),
        )),
    }
}

async fn assume_role(
    shared: &Shared,
    req: &RecordedRequest,
    raw_duration: Option<&str>,
    caller: Option<&IssuedSession>,
    request_id: &str,
) -> Result<String, StsError> {
    let role_arn = req.role_arn.as_deref().unwrap_or_default();

    let delay = shared.lock().latency.get(role_arn).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    {
        let inner = shared.lock();
        if inner.throttled.contains(role_arn) {
            return Err(StsError::sender(
                StatusCode::BAD_REQUEST,
                "Throttling",
                "Rate exceeded",
            ));
        }
        if inner.server_errors.contains(role_arn) {
            return Err(StsError::receiver(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.",
            ));
        }
    }

    // Syntactic validation of the parameters.
    let Some(role_arn) = req.role_arn.as_deref() else {
        return Err(not_null("roleArn"));
    };
    let Some(session_name) = req.session_name.as_deref() else {
        return Err(not_null("roleSessionName"));
    };
    let role = parse_role_arn(role_arn)?;
    validate_pattern(
        "roleSessionName",
        session_name,
        2,
        64,
        SESSION_PATTERN,
        is_session_char,
    )?;
    let duration = match (raw_duration, req.duration_seconds) {
        (None, _) => DEFAULT_MAX_SESSION_SECS,
        (Some(_), Some(d)) => d,
        (Some(raw), None) => {
            return Err(StsError::validation(format!(
                "1 validation error detected: Value '{raw}' at 'durationSeconds' failed to \
                 satisfy constraint: Member must be an integer"
            )));
        }
    };
    if duration < 900 {
        let d = duration;
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{d}' at 'durationSeconds' failed to satisfy \
             constraint: Member must have value greater than or equal to 900"
        )));
    }
    if duration > MAX_DURATION_SECS {
        let d = duration;
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{d}' at 'durationSeconds' failed to satisfy \
             constraint: Member must have value less than or equal to {MAX_DURATION_SECS}"
        )));
    }
    let served = shared
        .lock()
        .partition
        .clone()
        .unwrap_or_else(|| "aws".to_owned());
    if role.partition != served {
        return Err(StsError::validation(format!(
            "Partition \"{}\" is not valid for resource \"{role_arn}\".",
            role.partition
        )));
    }
    if let Some(external_id) = req.external_id.as_deref() {
        validate_pattern("externalId", external_id, 2, 1224, r"[\w+=,.@:\/-]*", |c| {
            is_session_char(c) || c == ':' || c == '/'
        })?;
    }
    if let Some(source_identity) = req.source_identity.as_deref() {
        validate_pattern(
            "sourceIdentity",
            source_identity,
            2,
            64,
            SESSION_PATTERN,
            is_session_char,
        )?;
    }
    if req.policy_arns.len() > 10 {
        return Err(StsError::validation(
            "1 validation error detected: Value at 'policyArns' failed to satisfy constraint: \
             Member must have length less than or equal to 10",
        ));
    }
    if req.tags.len() > 50 {
        return Err(StsError::validation(
            "1 validation error detected: Value at 'tags' failed to satisfy constraint: \
             Member must have length less than or equal to 50",
        ));
    }
    let packed = packed_policy_size(req);
    if packed > 100 {
        return Err(StsError::sender(
            StatusCode::BAD_REQUEST,
            "PackedPolicyTooLarge",
            format!(
                "Packed size of consumed session policies and session tags exceeds 100%: {packed}%"
            ),
        ));
    }

    let mut inner = shared.lock();
    if inner.denied.contains(role_arn) {
        let caller_arn = caller.map_or(DEFAULT_CALLER_ARN, |s| s.assumed_role_arn.as_str());
        return Err(StsError::sender(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            ),
        ));
    }
    if caller.is_some() && duration > 3600 {
        return Err(StsError::validation(
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        ));
    }
    let max = inner
        .max_session
        .get(role_arn)
        .copied()
        .unwrap_or(DEFAULT_MAX_SESSION_SECS);
    if duration > max {
        return Err(StsError::validation(
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        ));
    }

    // Issue the session.
    let role_id = inner
        .role_ids
        .entry(role_arn.to_owned())
        .or_insert_with(|| format!("AROA{}", random_from(UPPER_ALNUM, 17)))
        .clone();
    let access_key_id = format!("ASIA{}", random_from(UPPER_ALNUM, 16));
    let secret_access_key = random_from(BASE64_CHARS, 40);
    let session_token = format!("FwoGZXIvYXdzE{}", random_from(BASE64_CHARS, 344));
    let now = Utc::now();
    // A lifetime override stands for credentials that expire sooner than asked (tests of renewal).
    let lifetime = inner
        .lifetimes
        .get(role_arn)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(duration))
        .unwrap_or(duration);
    let expiration = DateTime::<Utc>::from_timestamp(now.timestamp() + lifetime, 0).unwrap_or(now);
    let assumed_role_id = format!("{role_id}:{session_name}");
    let assumed_role_arn = format!(
        "arn:{}:sts::{}:assumed-role/{}/{session_name}",
        role.partition, role.account, role.name
    );
    inner.sessions.insert(
        access_key_id.clone(),
        IssuedSession {
            role_arn: role_arn.to_owned(),
            assumed_role_arn: assumed_role_arn.clone(),
            assumed_role_id: assumed_role_id.clone(),
            account: role.account.to_owned(),
            expiration,
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
        },
    );
    inner
        .issued
        .push((role_arn.to_owned(), access_key_id.clone()));
    drop(inner);

    let source_identity = req
        .source_identity
        .as_deref()
        .map(|s| format!("<SourceIdentity>{}</SourceIdentity>", xml_escape(s)))
        .unwrap_or_default();
    Ok(format!(
        "<AssumeRoleResponse xmlns=\"{XMLNS}\">\
         <AssumeRoleResult>\
         <Credentials>\
         <AccessKeyId>{access_key_id}</AccessKeyId>\
         <SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken>\
         <Expiration>{expiration}</Expiration>\
         </Credentials>\
         <AssumedRoleUser>\
         <AssumedRoleId>{role_id}</AssumedRoleId>\
         <Arn>{arn}</Arn>\
         </AssumedRoleUser>\
         <PackedPolicySize>{packed}</PackedPolicySize>\
         {source_identity}\
         <SessionTokenUtilization>{utilization}</SessionTokenUtilization>\
         <SessionTokenSize>{token_size}</SessionTokenSize>\
         </AssumeRoleResult>\
         <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
         </AssumeRoleResponse>",
        secret = xml_escape(&secret_access_key),
        token = xml_escape(&session_token),
        token_size = session_token.len(),
        utilization = (session_token.len() * 100)
            .div_ceil(MAX_SESSION_TOKEN_SIZE)
            .min(100),
        expiration = expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
        role_id = xml_escape(&assumed_role_id),
        arn = xml_escape(&assumed_role_arn),
    ))
}

fn get_caller_identity_xml(session: Option<&IssuedSession>, request_id: &str) -> String {
    let (user_id, account, arn) = match session {
        Some(s) => (
            s.assumed_role_id.as_str(),
            s.account.as_str(),
            s.assumed_role_arn.as_str(),
        ),
        None => (DEFAULT_CALLER_USER_ID, DEFAULT_ACCOUNT, DEFAULT_CALLER_ARN),
    };
    format!(
        "<GetCallerIdentityResponse xmlns=\"{XMLNS}\">\
         <GetCallerIdentityResult>\
         <Arn>{arn}</Arn>\
         <UserId>{user_id}</UserId>\
         <Account>{account}</Account>\
         </GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
         </GetCallerIdentityResponse>",
        arn = xml_escape(arn),
        user_id = xml_escape(user_id),
        account = xml_escape(account),
    )
}

fn error_xml(err: &StsError, request_id: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\
         <Error>\
         <Type>{kind}</Type>\
         <Code>{code}</Code>\
         <Message>{message}</Message>\
         </Error>\
         <RequestId>{request_id}</RequestId>\
         </ErrorResponse>",
        kind = err.kind,
        code = err.code,
        message = xml_escape(&err.message),
    )
}

fn not_null(member: &str) -> StsError {
    StsError::validation(format!(
        "1 validation error detected: Value null at '{member}' failed to satisfy constraint: \
         Member must not be null"
    ))
}

/// `[\w+=,.@-]`, with `\w` as in Java regular expressions: `[a-zA-Z_0-9]`.
fn is_session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

fn validate_pattern(
    member: &str,
    value: &str,
    min: usize,
    max: usize,
    pattern: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), StsError> {
    let len = value.chars().count();
    let problem = if len < min {
        format!("Member must have length greater than or equal to {min}")
    } else if len > max {
        format!("Member must have length less than or equal to {max}")
    } else if !value.chars().all(allowed) {
        format!("Member must satisfy regular expression pattern: {pattern}")
    } else {
        return Ok(());
    };
    Err(StsError::validation(format!(
        "1 validation error detected: Value '{value}' at '{member}' failed to satisfy \
         constraint: {problem}"
    )))
}

struct RoleArn<'a> {
    partition: &'a str,
    account: &'a str,
    /// The role name, without its path.
    name: &'a str,
}

/// Checks `arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/[path/]name`.
fn parse_role_arn(arn: &str) -> Result<RoleArn<'_>, StsError> {
    if arn.len() < 20 {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{arn}' at 'roleArn' failed to satisfy \
             constraint: Member must have length greater than or equal to 20"
        )));
    }
    let invalid = || StsError::validation(format!("{arn} is invalid"));
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(invalid());
    };
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return Err(invalid());
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let ok = prefix == "arn"
        && matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(is_session_char)
        && path_and_name
            .split('/')
            .all(|seg| !seg.is_empty() && seg.chars().all(is_session_char));
    if ok {
        Ok(RoleArn {
            partition,
            account,
            name,
        })
    } else {
        Err(invalid())
    }
}

/// A percentage of the (made-up) 2048-character budget for session policies and tags.
fn packed_policy_size(req: &RecordedRequest) -> usize {
    let policy = req.policy.as_deref().map_or(0, str::len);
    let arns: usize = req.policy_arns.iter().map(String::len).sum();
    let tags: usize = req.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    (policy + arns + tags) * 100 / 2048
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn random_from(charset: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| charset[rng.random_range(0..charset.len())] as char)
        .collect()
}

fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
