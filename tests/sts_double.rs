//! Tests of the STS test double (`tests/support/sts_double.rs`) with the real
//! `aws-sdk-sts` client, so that other integration tests can rely on it.

#[path = "support/sts_double.rs"]
mod sts_double;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sts::Client;
use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::RequestId;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use sts_double::StsDouble;

const ROLE: &str = "arn:aws:iam::111122223333:role/app-role";
const ROLE_WITH_PATH: &str = "arn:aws:iam::111122223333:role/team/sub/path-role";
const OTHER_ROLE: &str = "arn:aws:iam::444455556666:role/other-role";

fn client_with(endpoint: &str, creds: Credentials, retry: RetryConfig) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .retry_config(retry)
        .http_client(http_client)
        .build();
    Client::from_conf(config)
}

fn test_creds() -> Credentials {
    Credentials::new("AKIDTEST", "secret", None, None, "test")
}

/// A client signing with the static test key, with SDK retries off.
fn client(double: &StsDouble) -> Client {
    client_with(&double.endpoint, test_creds(), RetryConfig::disabled())
}

/// A client signing with credentials the double issued.
fn client_for(double: &StsDouble, c: &aws_sdk_sts::types::Credentials) -> Client {
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "issued",
    );
    client_with(&double.endpoint, creds, RetryConfig::disabled())
}

fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<String> {
    err.as_service_error()
        .and_then(|e| e.meta().code())
        .map(str::to_owned)
}

fn message<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<String> {
    err.as_service_error()
        .and_then(|e| e.meta().message())
        .map(str::to_owned)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn assume(
    client: &Client,
    role: &str,
    duration: Option<i32>,
) -> Result<
    aws_sdk_sts::operation::assume_role::AssumeRoleOutput,
    SdkError<AssumeRoleError, aws_sdk_sts::config::http::HttpResponse>,
> {
    client
        .assume_role()
        .role_arn(role)
        .role_session_name("kaic-session")
        .set_duration_seconds(duration)
        .send()
        .await
}

#[tokio::test]
async fn assume_role_returns_credentials_and_arn() {
    let double = StsDouble::start().await;
    let client = client(&double);

    let before = now_secs();
    let out = assume(&client, ROLE, None).await.expect("assume_role");
    let creds = out.credentials().expect("credentials");
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert_eq!(creds.access_key_id().len(), 20);
    assert!(
        creds.access_key_id()[4..]
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    );
    assert_eq!(creds.secret_access_key().len(), 40);
    assert!(creds.session_token().len() > 100);
    let exp = creds.expiration().secs();
    assert!(
        exp >= before + 3600 - 1 && exp <= now_secs() + 3600,
        "default duration is one hour, got {exp} vs {before}"
    );

    let user = out.assumed_role_user().expect("assumed role user");
    assert_eq!(
        user.arn(),
        "arn:aws:sts::111122223333:assumed-role/app-role/kaic-session"
    );
    assert!(user.assumed_role_id().starts_with("AROA"));
    assert!(user.assumed_role_id().ends_with(":kaic-session"));
    #[allow(deprecated)]
    let packed = out.packed_policy_size();
    assert_eq!(packed, Some(0));
    let token_len = creds.session_token().len() as i32;
    assert_eq!(out.session_token_size(), Some(token_len));
    assert!(
        out.session_token_utilization()
            .is_some_and(|u| (1..=100).contains(&u))
    );
    assert_eq!(out.source_identity(), None);
    assert!(out.request_id().is_some());

    // The role id is stable per role, the keys are fresh per session.
    let again = assume(&client, ROLE, Some(900))
        .await
        .expect("assume again");
    let creds2 = again.credentials().unwrap();
    assert_ne!(creds2.access_key_id(), creds.access_key_id());
    assert_eq!(
        again.assumed_role_user().unwrap().assumed_role_id(),
        user.assumed_role_id()
    );
    let exp2 = creds2.expiration().secs();
    assert!(exp2 >= before + 900 - 1 && exp2 <= now_secs() + 900);

    assert_eq!(
        double.issued_keys(ROLE),
        vec![
            creds.access_key_id().to_owned(),
            creds2.access_key_id().to_owned()
        ]
    );
    assert!(double.issued_keys(OTHER_ROLE).is_empty());

    // The role's path is not part of the assumed-role ARN.
    let out = assume(&client, ROLE_WITH_PATH, None)
        .await
        .expect("path role");
    assert_eq!(
        out.assumed_role_user().unwrap().arn(),
        "arn:aws:sts::111122223333:assumed-role/path-role/kaic-session"
    );
}

#[tokio::test]
async fn get_caller_identity_reports_the_caller() {
    let double = StsDouble::start().await;
    let client = client(&double);

    let me = client.get_caller_identity().send().await.expect("gci");
    assert_eq!(me.account(), Some("123456789012"));
    assert_eq!(me.arn(), Some("arn:aws:iam::123456789012:user/kaic-test"));
    assert!(me.user_id().is_some());

    let out = assume(&client, ROLE, None).await.unwrap();
    let assumed = client_for(&double, out.credentials().unwrap());
    let me = assumed.get_caller_identity().send().await.expect("gci");
    assert_eq!(me.account(), Some("111122223333"));
    assert_eq!(me.arn(), out.assumed_role_user().map(|u| u.arn()));
    assert_eq!(
        me.user_id(),
        out.assumed_role_user().map(|u| u.assumed_role_id())
    );

    let requests = double.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].action, "GetCallerIdentity");
    assert_eq!(requests[0].caller_access_key.as_deref(), Some("AKIDTEST"));
    assert_eq!(requests[1].action, "AssumeRole");
    assert_eq!(
        requests[2].caller_access_key.as_deref(),
        Some(out.credentials().unwrap().access_key_id())
    );
    assert!(requests.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn denied_role_is_access_denied_until_allowed() {
    let double = StsDouble::start().await;
    let client = client(&double);
    double.deny(ROLE);

    let err = assume(&client, ROLE, None).await.expect_err("denied");
    assert_eq!(
        err.as_service_error()
            .and_then(|e| ProvideErrorMetadata::code(e)),
        Some("AccessDenied")
    );
    // STS does not model AccessDenied: it is no typed variant, only a code.
    assert!(!matches!(
        err.as_service_error(),
        Some(
            AssumeRoleError::ExpiredTokenException(_)
                | AssumeRoleError::MalformedPolicyDocumentException(_)
                | AssumeRoleError::PackedPolicyTooLargeException(_)
                | AssumeRoleError::RegionDisabledException(_)
        )
    ));
    let msg = message(&err).unwrap();
    assert!(msg.contains("is not authorized to perform: sts:AssumeRole"));
    assert!(msg.contains(ROLE));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));

    // Other roles are unaffected.
    assume(&client, OTHER_ROLE, None).await.expect("other role");

    double.allow(ROLE);
    assume(&client, ROLE, None).await.expect("allowed again");

    assert_eq!(double.assume_role_calls(ROLE), 2);
    assert_eq!(double.assume_role_calls(OTHER_ROLE), 1);
    assert_eq!(double.issued_keys(ROLE).len(), 1);
    let statuses: Vec<u16> = double.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![403, 200, 200]);
}

#[tokio::test]
async fn throttling_is_reported_and_counted() {
    let double = StsDouble::start().await;
    double.throttle(ROLE, true);

    let err = assume(&client(&double), ROLE, None)
        .await
        .expect_err("throttled");
    assert_eq!(code(&err).as_deref(), Some("Throttling"));
    assert_eq!(message(&err).as_deref(), Some("Rate exceeded"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert_eq!(double.assume_role_calls(ROLE), 1, "retries are disabled");

    // With SDK retries on, every attempt reaches the double.
    let retrying = client_with(
        &double.endpoint,
        test_creds(),
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(10)),
    );
    let err = assume(&retrying, ROLE, None).await.expect_err("throttled");
    assert_eq!(code(&err).as_deref(), Some("Throttling"));
    assert_eq!(double.assume_role_calls(ROLE), 4);

    double.throttle(ROLE, false);
    assume(&retrying, ROLE, None).await.expect("unthrottled");
    assert_eq!(double.assume_role_calls(ROLE), 5);
    assert_eq!(double.total_calls(), 5);
}

#[tokio::test]
async fn server_error_and_unavailable() {
    let double = StsDouble::start().await;
    let client = client(&double);

    double.server_error(ROLE, true);
    let err = assume(&client, ROLE, None).await.expect_err("500");
    assert_eq!(code(&err).as_deref(), Some("InternalFailure"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assume(&client, OTHER_ROLE, None).await.expect("other role");
    double.server_error(ROLE, false);
    assume(&client, ROLE, None).await.expect("recovered");

    double.unavailable(true);
    let err = assume(&client, OTHER_ROLE, None).await.expect_err("503");
    assert_eq!(code(&err).as_deref(), Some("ServiceUnavailable"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    let err = client
        .get_caller_identity()
        .send()
        .await
        .expect_err("503 for every action");
    assert_eq!(code(&err).as_deref(), Some("ServiceUnavailable"));
    double.unavailable(false);
    client.get_caller_identity().send().await.expect("back");

    let statuses: Vec<u16> = double.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 200, 200, 503, 503, 200]);
    assert_eq!(double.assume_role_calls(OTHER_ROLE), 2);
    assert_eq!(double.total_calls(), 6);
}

#[tokio::test]
async fn duration_is_checked_against_max_session() {
    let double = StsDouble::start().await;
    let client = client(&double);

    let err = assume(&client, ROLE, Some(3601)).await.expect_err("> 1h");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
    assert!(message(&err).unwrap().contains("MaxSessionDuration"));

    let err = assume(&client, ROLE, Some(899)).await.expect_err("< 900");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));

    double.max_session(ROLE, 43200);
    let before = now_secs();
    let out = assume(&client, ROLE, Some(43200)).await.expect("12h");
    let exp = out.credentials().unwrap().expiration().secs();
    // Issued between the two clock readings (whole seconds), however long the call took.
    assert!(exp >= before + 43200 - 1 && exp <= now_secs() + 43200);
    let err = assume(&client, ROLE, Some(43201)).await.expect_err("> max");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));

    let recorded: Vec<Option<i64>> = double
        .requests()
        .iter()
        .map(|r| r.duration_seconds)
        .collect();
    assert_eq!(
        recorded,
        vec![Some(3601), Some(899), Some(43200), Some(43201)]
    );
    assert_eq!(double.assume_role_calls(ROLE), 4);
    assert_eq!(double.issued_keys(ROLE).len(), 1);
}

#[tokio::test]
async fn role_chaining_is_limited_to_one_hour() {
    let double = StsDouble::start().await;
    double.max_session(ROLE, 43200);
    double.max_session(OTHER_ROLE, 43200);
    let first = assume(&client(&double), ROLE, Some(7200))
        .await
        .expect("first hop may be long");
    let chained = client_for(&double, first.credentials().unwrap());

    let err = assume(&chained, OTHER_ROLE, Some(3601))
        .await
        .expect_err("chained > 1h");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
    assert_eq!(
        message(&err).as_deref(),
        Some(
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."
        )
    );

    let second = assume(&chained, OTHER_ROLE, Some(3600))
        .await
        .expect("chained 1h");
    let me = client_for(&double, second.credentials().unwrap())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.arn(),
        Some("arn:aws:sts::444455556666:assumed-role/other-role/kaic-session")
    );
    let first_key = first.credentials().unwrap().access_key_id().to_owned();
    let callers: Vec<Option<String>> = double
        .requests()
        .iter()
        .filter(|r| r.role_arn.as_deref() == Some(OTHER_ROLE))
        .map(|r| r.caller_access_key.clone())
        .collect();
    assert_eq!(
        callers,
        vec![Some(first_key.clone()), Some(first_key.clone())]
    );
}

#[tokio::test]
async fn expired_issued_key_is_rejected() {
    let double = StsDouble::start().await;
    let out = assume(&client(&double), ROLE, None).await.unwrap();
    let key = out.credentials().unwrap().access_key_id().to_owned();
    let assumed = client_for(&double, out.credentials().unwrap());
    assumed
        .get_caller_identity()
        .send()
        .await
        .expect("valid before expiry");

    assert!(double.expire_key(&key));
    assert!(!double.expire_key("AKIDNOTISSUED"));

    let err = assumed
        .get_caller_identity()
        .send()
        .await
        .expect_err("expired");
    assert_eq!(code(&err).as_deref(), Some("ExpiredToken"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));

    let err = assume(&assumed, OTHER_ROLE, None)
        .await
        .expect_err("expired");
    // STS answers `ExpiredToken`, not the modelled `ExpiredTokenException`.
    assert_eq!(code(&err).as_deref(), Some("ExpiredToken"), "{err:?}");
    assert_eq!(double.assume_role_calls(OTHER_ROLE), 1);
    assert!(double.issued_keys(OTHER_ROLE).is_empty());

    // The static key is not affected.
    assume(&client(&double), OTHER_ROLE, None)
        .await
        .expect("static key");
}

#[tokio::test]
async fn parameters_are_recorded_as_sent() {
    let double = StsDouble::start().await;
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    let out = client(&double)
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("ns.pod@cluster=1,x+y_z-")
        .duration_seconds(1800)
        .external_id("ext-id:1/2")
        .source_identity("kaic-controller")
        .policy(policy)
        .policy_arns(
            PolicyDescriptorType::builder()
                .arn("arn:aws:iam::aws:policy/ReadOnlyAccess")
                .build(),
        )
        .policy_arns(
            PolicyDescriptorType::builder()
                .arn("arn:aws:iam::111122223333:policy/extra")
                .build(),
        )
        .tags(
            Tag::builder()
                .key("kubernetes-namespace")
                .value("default")
                .build()
                .unwrap(),
        )
        .tags(
            Tag::builder()
                .key("kubernetes-pod")
                .value("web 1 & co")
                .build()
                .unwrap(),
        )
        .transitive_tag_keys("kubernetes-namespace")
        .send()
        .await
        .expect("assume_role");
    assert_eq!(out.source_identity(), Some("kaic-controller"));
    #[allow(deprecated)]
    let packed = out.packed_policy_size();
    assert!(packed.is_some_and(|p| p > 0));
    assert_eq!(
        out.assumed_role_user().unwrap().arn(),
        "arn:aws:sts::111122223333:assumed-role/app-role/ns.pod@cluster=1,x+y_z-"
    );

    let requests = double.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.action, "AssumeRole");
    assert_eq!(r.role_arn.as_deref(), Some(ROLE));
    assert_eq!(r.session_name.as_deref(), Some("ns.pod@cluster=1,x+y_z-"));
    assert_eq!(r.duration_seconds, Some(1800));
    assert_eq!(r.external_id.as_deref(), Some("ext-id:1/2"));
    assert_eq!(r.source_identity.as_deref(), Some("kaic-controller"));
    assert_eq!(r.policy.as_deref(), Some(policy));
    assert_eq!(
        r.policy_arns,
        vec![
            "arn:aws:iam::aws:policy/ReadOnlyAccess".to_owned(),
            "arn:aws:iam::111122223333:policy/extra".to_owned()
        ]
    );
    assert_eq!(
        r.tags,
        vec![
            ("kubernetes-namespace".to_owned(), "default".to_owned()),
            ("kubernetes-pod".to_owned(), "web 1 & co".to_owned())
        ]
    );
    assert_eq!(r.transitive_tag_keys, vec!["kubernetes-namespace"]);
    assert_eq!(r.caller_access_key.as_deref(), Some("AKIDTEST"));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn invalid_role_arn_and_session_name_are_validation_errors() {
    let double = StsDouble::start().await;
    let client = client(&double);

    for bad_role in [
        "not-an-arn",
        "arn:aws:iam::12345678901:role/short-account",
        "arn:aws:iam::1234567890123:role/long-account",
        "arn:aws:iam::12345678901x:role/letter",
        "arn:aws:s3:::bucket-name-long-enough",
        "arn:aws:iam::111122223333:user/alice",
        "arn:aws:iam::111122223333:role/",
        "arn:aws:iam:us-east-1:111122223333:role/regional",
        "arn:aws-xx:iam::111122223333:role/partition",
        "arn:aws:iam::111122223333:role/bad name",
    ] {
        let err = assume(&client, bad_role, None).await.expect_err(bad_role);
        assert_eq!(code(&err).as_deref(), Some("ValidationError"), "{bad_role}");
    }
    assume(&client, "arn:aws:iam::111122223333:role/a/b/c", None)
        .await
        .expect("a role with a path");
    // Each STS serves one partition: other partitions' roles are not valid there.
    for (partition, role) in [
        ("aws-cn", "arn:aws-cn:iam::111122223333:role/cn"),
        ("aws-us-gov", "arn:aws-us-gov:iam::111122223333:role/gov"),
    ] {
        let err = assume(&client, role, None).await.expect_err(role);
        assert_eq!(code(&err).as_deref(), Some("ValidationError"), "{role}");
        assert!(message(&err).unwrap().contains("Partition"), "{err:?}");
        let regional = StsDouble::start().await;
        regional.partition(partition);
        let out = assume(&self::client(&regional), role, None)
            .await
            .expect(role);
        assert!(
            out.assumed_role_user()
                .unwrap()
                .arn()
                .starts_with(&format!("arn:{partition}:sts::"))
        );
    }

    for bad_session in ["a", &"x".repeat(65), "has space", "slash/no", "colon:no"] {
        let err = client
            .assume_role()
            .role_arn(ROLE)
            .role_session_name(bad_session)
            .send()
            .await
            .expect_err(bad_session);
        assert_eq!(
            code(&err).as_deref(),
            Some("ValidationError"),
            "{bad_session}"
        );
    }
    client
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("x".repeat(64))
        .send()
        .await
        .expect("64 chars");
    client
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("ab")
        .send()
        .await
        .expect("2 chars");

    // A missing session name.
    let err = client
        .assume_role()
        .role_arn(ROLE)
        .send()
        .await
        .expect_err("missing session name");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
    assert_eq!(double.issued_keys(ROLE).len(), 2);
}

#[tokio::test]
async fn latency_delays_only_that_role() {
    let double = StsDouble::start().await;
    let client = client(&double);
    let held = Duration::from_secs(3);
    double.latency(ROLE, held);

    // Ordering, not timing: the other role is answered while this role's call is still held.
    let start = Instant::now();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { assume(&client, ROLE, None).await.map(|_| ()) }
    });
    assume(&client, OTHER_ROLE, None).await.unwrap();
    assert!(!slow.is_finished(), "only {ROLE} is delayed");
    slow.await.expect("task").unwrap();
    assert!(start.elapsed() >= held);

    double.deny(ROLE);
    let start = Instant::now();
    assume(&client, ROLE, None).await.expect_err("denied");
    assert!(start.elapsed() >= held, "failures are delayed too");

    // Removed: this role is answered while another role's call is held.
    double.latency(ROLE, Duration::ZERO);
    double.latency(OTHER_ROLE, held);
    let other = tokio::spawn({
        let client = client.clone();
        async move { assume(&client, OTHER_ROLE, None).await.map(|_| ()) }
    });
    assume(&client, ROLE, None).await.expect_err("denied");
    assert!(!other.is_finished(), "{ROLE} is no longer delayed");
    other.await.expect("task").unwrap();
}

/// SigV4 headers (`Authorization`, `X-Amz-Date`) for a form POST to `endpoint`, signed with
/// `aws-sigv4` as an SDK signs.
fn sigv4_headers(endpoint: &str, body: &str, key: &str, secret: &str) -> String {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let host = endpoint.trim_start_matches("http://");
    let identity = Credentials::new(key, secret, None, None, "raw").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("sts")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [
        ("host", host),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let signable = SignableRequest::new(
        "POST",
        endpoint,
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect()
}

/// Sends one raw HTTP/1.1 request and returns the whole response; `signer` signs it.
async fn raw_post(endpoint: &str, signer: Option<(&str, &str)>, body: &str) -> String {
    let addr = endpoint.trim_start_matches("http://").to_owned();
    let auth = signer.map(|(key, secret)| sigv4_headers(endpoint, body, key, secret));
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             {}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            auth.unwrap_or_default(),
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> &'a str {
    let start = s.find(open).unwrap_or_else(|| panic!("{open} in {s}")) + open.len();
    let end = s[start..].find(close).unwrap() + start;
    &s[start..end]
}

#[tokio::test]
async fn wire_format_matches_sts() {
    let double = StsDouble::start().await;
    double.add_user("AKIDRAW", "raw-secret");
    let auth = ("AKIDRAW", "raw-secret");

    let ok = raw_post(
        &double.endpoint,
        Some(auth),
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fapp-role\
         &RoleSessionName=raw&DurationSeconds=900&SourceIdentity=someone\
         &Tags.member.2.Key=b&Tags.member.2.Value=two%20words&Tags.member.1.Key=a&Tags.member.1.Value=x%2By",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.to_ascii_lowercase().contains("content-type: text/xml"));
    assert!(ok.to_ascii_lowercase().contains("x-amzn-requestid: "));
    let body = &ok[ok.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleResult><Credentials><AccessKeyId>ASIA"
    ));
    let expiration = between(body, "<Expiration>", "</Expiration>");
    assert_eq!(
        expiration.len(),
        "2026-01-01T00:00:00Z".len(),
        "{expiration}"
    );
    assert!(expiration.ends_with('Z'));
    assert!(body.contains(
        "<Arn>arn:aws:sts::111122223333:assumed-role/app-role/raw</Arn></AssumedRoleUser>\
         <PackedPolicySize>"
    ));
    assert!(body.contains("<SourceIdentity>someone</SourceIdentity><SessionTokenUtilization>"));
    let token = between(body, "<SessionToken>", "</SessionToken>");
    assert!(body.contains(&format!(
        "<SessionTokenSize>{}</SessionTokenSize></AssumeRoleResult>",
        token.len()
    )));
    let request_id = between(body, "<RequestId>", "</RequestId>");
    assert_eq!(request_id.len(), 36);
    assert!(body.ends_with("</RequestId></ResponseMetadata></AssumeRoleResponse>"));

    double.deny(ROLE);
    let denied = raw_post(
        &double.endpoint,
        Some(auth),
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fapp-role\
         &RoleSessionName=raw",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let body = &denied[denied.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: \
         arn:aws:iam::123456789012:user/kaic-test is not authorized to perform: \
         sts:AssumeRole on resource: arn:aws:iam::111122223333:role/app-role</Message>\
         </Error><RequestId>"
    ));
    assert!(body.ends_with("</RequestId></ErrorResponse>"));

    let unknown = raw_post(
        &double.endpoint,
        Some(auth),
        "Action=Nope&Version=2011-06-15",
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 400"), "{unknown}");
    assert!(unknown.contains("<Code>InvalidAction</Code>"));

    let anonymous = raw_post(
        &double.endpoint,
        None,
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await;
    assert!(anonymous.starts_with("HTTP/1.1 403"), "{anonymous}");
    assert!(anonymous.contains("<Code>MissingAuthenticationToken</Code>"));

    let requests = double.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].caller_access_key.as_deref(), Some("AKIDRAW"));
    assert_eq!(
        requests[0].tags,
        vec![
            ("a".to_owned(), "x+y".to_owned()),
            ("b".to_owned(), "two words".to_owned())
        ]
    );
    assert_eq!(requests[0].duration_seconds, Some(900));
    assert_eq!(requests[2].action, "Nope");
    assert_eq!(requests[2].status, 400);
    assert_eq!(requests[3].caller_access_key, None);
    assert_eq!(requests[3].status, 403);
}

#[tokio::test]
async fn server_stops_when_dropped() {
    let double = StsDouble::start().await;
    let client = client(&double);
    client.get_caller_identity().send().await.unwrap();
    let addr = double.endpoint.trim_start_matches("http://").to_owned();
    drop(double);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .get_caller_identity()
        .send()
        .await
        .expect_err("server is gone");
}

#[tokio::test]
async fn unknown_access_key_is_an_invalid_client_token_id() {
    let double = StsDouble::start().await;
    let stranger = client_with(
        &double.endpoint,
        Credentials::new("AKIDUNKNOWN000000000", "secret", None, None, "test"),
        RetryConfig::disabled(),
    );
    let err = stranger
        .get_caller_identity()
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(code(&err).as_deref(), Some("InvalidClientTokenId"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
}

#[tokio::test]
async fn wrong_secret_is_a_signature_mismatch() {
    let double = StsDouble::start().await;
    let wrong = client_with(
        &double.endpoint,
        Credentials::new("AKIDTEST", "not-the-secret", None, None, "test"),
        RetryConfig::disabled(),
    );
    let err = assume(&wrong, ROLE, None).await.expect_err("wrong secret");
    assert_eq!(code(&err).as_deref(), Some("SignatureDoesNotMatch"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert!(double.issued_keys(ROLE).is_empty());
}

#[tokio::test]
async fn session_key_needs_its_own_session_token() {
    let double = StsDouble::start().await;
    let first = assume(&client(&double), ROLE, None).await.unwrap();
    let second = assume(&client(&double), ROLE, None).await.unwrap();
    let (a, b) = (first.credentials().unwrap(), second.credentials().unwrap());
    for (token, what) in [
        (None, "no token"),
        (
            Some(b.session_token().to_owned()),
            "another session's token",
        ),
    ] {
        let c = client_with(
            &double.endpoint,
            Credentials::new(a.access_key_id(), a.secret_access_key(), token, None, "t"),
            RetryConfig::disabled(),
        );
        let err = c.get_caller_identity().send().await.expect_err(what);
        assert_eq!(
            code(&err).as_deref(),
            Some("InvalidClientTokenId"),
            "{what}"
        );
    }
}

/// The negative control of the authenticating double: after a rotation, a client that pairs
/// the current access key with the secret of the session before it is turned away.
#[tokio::test]
async fn client_signing_with_a_stale_secret_fails() {
    let double = StsDouble::start().await;
    let old = assume(&client(&double), ROLE, None).await.unwrap();
    let new = assume(&client(&double), ROLE, None).await.unwrap();
    let (old, new) = (old.credentials().unwrap(), new.credentials().unwrap());
    let stale = client_with(
        &double.endpoint,
        Credentials::new(
            new.access_key_id(),
            old.secret_access_key(),
            Some(new.session_token().to_owned()),
            None,
            "stale",
        ),
        RetryConfig::disabled(),
    );
    let err = stale
        .get_caller_identity()
        .send()
        .await
        .expect_err("a stale secret must not authenticate");
    assert_eq!(code(&err).as_deref(), Some("SignatureDoesNotMatch"));
    client_for(&double, new)
        .get_caller_identity()
        .send()
        .await
        .expect("the matching secret does");
}

#[tokio::test]
async fn durations_above_twelve_hours_are_rejected_whatever_the_role_allows() {
    let double = StsDouble::start().await;
    double.max_session(ROLE, 100_000);
    let client = client(&double);
    assume(&client, ROLE, Some(43200)).await.expect("12 h");
    let err = assume(&client, ROLE, Some(43201))
        .await
        .expect_err("over 12 h");
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
    assert!(
        message(&err)
            .unwrap()
            .contains("less than or equal to 43200")
    );
}
