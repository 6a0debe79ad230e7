//! The fast reconcile tier: a `tower-test` API server that checks each request a reconcile or
//! janitor sweep makes, in order, and answers it; object builders; a counting fake STS. Real
//! API server behaviour is covered by the integration tests; these pin the request sequence in
//! milliseconds, including situations a real cluster cannot be put in on demand (a cache that
//! is stale, leadership lost between two calls).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle};

use super::context::{Context, Settings, Wiring};
use super::secret;
use crate::aws::{CredentialIssuer, IssueError, IssueRequest, IssuedCredentials};
use crate::crd::{AWSIAMRole, AWSIAMRoleSpec};
use crate::metrics::Metrics;

pub const NS: &str = "testns";
pub const BASE: &str = "arn:aws:iam::123456789012:role/";

/// An AWSIAMRole as the API server stores it (namespace, UID, generation, resourceVersion).
pub fn role(name: &str, reference: &str, generation: i64) -> AWSIAMRole {
    let mut r = AWSIAMRole::new(
        name,
        AWSIAMRoleSpec {
            role_reference: reference.into(),
            role_session_duration: 3600,
            policy: None,
            policy_arns: Vec::new(),
            service_account_names: None,
            invalid: None,
        },
    );
    r.metadata.namespace = Some(NS.into());
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.generation = Some(generation);
    r.metadata.resource_version = Some("100".into());
    r
}

pub fn credentials(valid_for: Duration) -> IssuedCredentials {
    IssuedCredentials {
        access_key_id: "ASIAFIXTURE000000001".into(),
        secret_access_key: "fixturesecretfixturesecretfixturesecret0".into(),
        session_token: "FwoGZXIvYXdzFIXTURE".into(),
        expiration: Utc::now()
            + chrono::Duration::from_std(valid_for).unwrap_or(chrono::Duration::zero()),
    }
}

/// The Secret a previous issue left for `role`, as stored (namespace, UID, resourceVersion).
pub fn stored_secret(role: &AWSIAMRole, valid_for: Duration) -> Secret {
    let arn = format!("{BASE}{}", role.spec.role_reference);
    let mut s = secret::render(role, &credentials(valid_for), &arn);
    s.metadata.uid = Some(format!("secret-uid-{}", role.name_any()));
    s.metadata.resource_version = Some("200".into());
    s
}

/// A fake STS that counts its calls and answers with credentials valid for `valid_for`, or
/// with the scripted failures first (in order).
pub struct FakeSts {
    pub calls: Mutex<Vec<IssueRequest>>,
    pub valid_for: Duration,
    failures: Mutex<std::collections::VecDeque<IssueError>>,
}

impl FakeSts {
    pub fn new(valid_for: Duration) -> Arc<Self> {
        FakeSts::failing(valid_for, Vec::new())
    }

    /// Answers the first calls with `failures`, then with credentials.
    pub fn failing(valid_for: Duration, failures: Vec<IssueError>) -> Arc<Self> {
        Arc::new(FakeSts {
            calls: Mutex::new(Vec::new()),
            valid_for,
            failures: Mutex::new(failures.into()),
        })
    }

    pub fn count(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl CredentialIssuer for FakeSts {
    fn assume_role(
        &self,
        req: IssueRequest,
    ) -> BoxFuture<'_, Result<IssuedCredentials, IssueError>> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(req);
        }
        let scripted = self.failures.lock().ok().and_then(|mut f| f.pop_front());
        let answer = match scripted {
            Some(e) => Err(e),
            None => Ok(credentials(self.valid_for)),
        };
        Box::pin(async move { answer })
    }
}

/// The fake API server's side: takes the next request and checks it.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// One request as received.
pub struct Received {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Received {
    pub fn ok(self, body: &impl serde::Serialize) {
        self.status(StatusCode::OK, body);
    }

    /// Answers with the request's own body (what a create or update stores).
    pub fn echo(self) {
        let body = self.body.clone();
        self.ok(&body);
    }

    /// 409: the resourceVersion precondition failed.
    pub fn conflict(self) {
        self.status(
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        );
    }

    pub fn not_found(self) {
        self.status(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }

    fn status(self, code: StatusCode, body: &impl serde::Serialize) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let response = Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        self.respond.send_response(response);
    }
}

impl ApiServerVerifier {
    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Received {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        let (request, respond) = next
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&method, path),
            "unexpected request"
        );
        Received {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body,
            respond,
        }
    }

    /// Ends a scenario: no further request may come within a second (controller-rs's
    /// `timeout_after_1s`). Without it, a request the scenario did not expect (a stray Event, a
    /// DELETE) would meet the dropped mock, fail, and be swallowed by the code under test.
    pub async fn silent(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_secs(1), self.0.next_request()).await
        {
            panic!(
                "unexpected request after the scenario: {} {}",
                request.method(),
                request.uri().path()
            );
        }
    }
}

/// A context on the fake API server, with `issuer` as STS; the sender controls leadership.
pub fn context(
    issuer: Arc<dyn CredentialIssuer>,
) -> (
    Arc<Context>,
    ApiServerVerifier,
    watch::Sender<Option<super::leader::Claim>>,
) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let (tx, rx) = watch::channel(Some(super::leader::Claim::Always));
    let ctx = Context::new(
        client,
        issuer,
        Settings::default(),
        Wiring {
            metrics: Arc::new(Metrics::new()),
            leader: super::leader::Leadership::following(rx),
            policy: super::policy::PolicyContext::permissive(),
            learned: Arc::new(super::learned::Learned::new(BASE.parse().ok(), false)),
            instance: "fixture".into(),
        },
    );
    (Arc::new(ctx), ApiServerVerifier(handle), tx)
}

pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

pub fn role_path(name: &str) -> String {
    format!("/apis/zalando.org/v1/namespaces/{NS}/awsiamroles/{name}")
}

pub const SECRETS: &str = "/api/v1/namespaces/testns/secrets";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/testns/events";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{janitor, reconcile};
    use kube::api::PartialObjectMeta;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("finished without waiting for a request that never comes")
    }

    #[tokio::test]
    async fn a_new_role_gets_its_secret_and_a_status_patched_against_the_cached_object() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app"))
                .await
                .not_found();
            let create = api.expect(Method::POST, SECRETS).await;
            let meta = &create.body["metadata"];
            assert_eq!(meta["annotations"][secret::OWNER_UID_ANNOTATION], "uid-app");
            assert!(meta["annotations"][secret::REQUEST_HASH_ANNOTATION].is_string());
            assert_eq!(meta["ownerReferences"][0]["blockOwnerDeletion"], true);
            assert_eq!(meta["ownerReferences"][0]["controller"], true);
            create.echo();
            // No read of the AWSIAMRole: the patch carries the cached resourceVersion.
            let status = api
                .expect(Method::PATCH, &format!("{}/status", role_path("app")))
                .await;
            assert_eq!(status.body["metadata"]["resourceVersion"], "100");
            assert_eq!(status.body["status"]["observedGeneration"], 1);
            assert_eq!(status.body["status"]["conditions"][0]["status"], "True");
            status.echo();
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "CreateCredentials");
            event.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1);
        assert_ne!(action, kube::runtime::controller::Action::await_change());
    }

    #[tokio::test]
    async fn valid_credentials_cost_one_read_and_no_write() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let mut r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        // The status already says what the reconcile would write.
        let outcome = crate::controller::status::Outcome::Ready {
            role_arn: format!("{BASE}app"),
            expiration: secret::read(&s).expect("readable").expiration,
            generation: 1,
            message: crate::controller::status::ready_message(
                &format!("{BASE}app"),
                secret::read(&s).expect("readable").expiration,
                crate::aws::options::SessionLength::new(3600, false),
            ),
            would_deny: None,
        };
        r.status = Some(crate::controller::status::next(None, &outcome, Utc::now()));
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            api.silent().await;
        });
        within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 0);
    }

    #[tokio::test]
    async fn a_newer_generation_in_the_store_is_never_downgraded() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let cached = role("app", "app", 1);
        let s = stored_secret(&cached, Duration::from_secs(3000));
        let newer = role("app", "other", 2);
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            // The cache is behind: the patch computed from it conflicts, the live object moved
            // on to generation 2, and no second patch follows.
            let status = api
                .expect(Method::PATCH, &format!("{}/status", role_path("app")))
                .await;
            assert_eq!(status.body["metadata"]["resourceVersion"], "100");
            status.conflict();
            api.expect(Method::GET, &role_path("app")).await.ok(&newer);
            api.silent().await;
        });
        within(reconcile::reconcile_role(&cached, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 0);
    }

    #[tokio::test]
    async fn leadership_lost_before_the_sts_call_skips_it_and_counts_it() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let server = tokio::spawn(async move {
            let get = api.expect(Method::GET, &secret_path("app")).await;
            let _ = leader.send(None);
            get.not_found();
            api.silent().await;
        });
        within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 0, "no STS call once leadership is gone");
        assert!(
            ctx.metrics
                .render()
                .contains(r#"kaic_writes_skipped_total{reason="not-leader",write="sts"} 1"#),
            "{}",
            ctx.metrics.render()
        );
    }

    fn stores(
        secret: &Secret,
    ) -> (
        reflector::Store<AWSIAMRole>,
        reflector::Store<crate::controller::cache::CachedSecret>,
    ) {
        let (roles, _role_writer) = reflector::store::<AWSIAMRole>();
        let (secrets, mut writer) = reflector::store::<crate::controller::cache::CachedSecret>();
        let meta = PartialObjectMeta {
            types: None,
            metadata: secret.metadata.clone(),
            _phantom: Default::default(),
        };
        writer.apply_watcher_event(&crate::controller::cache::packed(&watcher::Event::Apply(
            meta,
        )));
        (roles, secrets)
    }

    /// The requeue delay of `action` (kube's `Action` has no accessor; its Debug shows it).
    fn requeue(action: &kube::runtime::controller::Action) -> Option<Duration> {
        let text = format!("{action:?}");
        let inner = text.split("Some(").nth(1)?.split(')').next()?;
        let (number, unit) = inner.split_at(inner.find(|c: char| c.is_alphabetic() || c == 'µ')?);
        let value: f64 = number.parse().ok()?;
        let seconds = match unit {
            "s" => value,
            "ms" => value / 1e3,
            "µs" => value / 1e6,
            "ns" => value / 1e9,
            _ => return None,
        };
        Some(Duration::from_secs_f64(seconds))
    }

    fn sts_error(kind: crate::aws::FailureKind, code: &str, message: &str) -> IssueError {
        IssueError {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The status PATCH of `name`, answered with the request's own status on the role.
    async fn status_patch(api: &mut ApiServerVerifier, r: &AWSIAMRole) -> Value {
        let patch = api
            .expect(
                Method::PATCH,
                &format!("{}/status", role_path(&r.name_any())),
            )
            .await;
        let body = patch.body.clone();
        let mut stored = r.clone();
        stored.status = serde_json::from_value(body["status"].clone()).ok();
        patch.ok(&stored);
        body
    }

    #[tokio::test]
    async fn credentials_in_the_refresh_window_are_renewed_by_a_merge_patch_on_the_read_version() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        // Ten minutes left: inside the 15-minute refresh window.
        let s = stored_secret(&r, Duration::from_secs(600));
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            let patch = api.expect(Method::PATCH, &secret_path("app")).await;
            assert_eq!(
                patch.body["metadata"]["resourceVersion"], "200",
                "on the read version"
            );
            assert!(patch.body["data"]["credentials.json"].is_string());
            let mut renewed = s.clone();
            renewed.metadata.resource_version = Some("201".into());
            patch.ok(&renewed);
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(status["status"]["conditions"][0]["status"], "True");
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "UpdateCredentials");
            event.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1);
        assert!(
            requeue(&action) > Some(Duration::from_secs(600)),
            "{action:?}"
        );
    }

    #[tokio::test]
    async fn a_transient_sts_failure_keeps_the_credentials_and_backs_off() {
        let sts = FakeSts::failing(
            Duration::from_secs(3600),
            vec![sts_error(
                crate::aws::FailureKind::Transient,
                "Throttling",
                "Rate exceeded",
            )],
        );
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(600));
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            // No Secret write: the previous credentials stay.
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(status["status"]["conditions"][0]["reason"], "Throttled");
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "GetCredentialsFailed");
            assert!(
                event.body["note"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("keeps the previous credentials"),
                "{}",
                event.body
            );
            event.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1);
        assert_eq!(
            ctx.backoff
                .failures(&crate::controller::key::RoleKey::new(NS, "app")),
            1,
            "counted for the backoff"
        );
        assert!(
            requeue(&action) <= Some(ctx.settings.backoff_base * 2),
            "{action:?}"
        );
    }

    #[tokio::test]
    async fn a_permanent_sts_failure_is_retried_only_after_the_slow_requeue() {
        let sts = FakeSts::failing(
            Duration::from_secs(3600),
            vec![sts_error(
                crate::aws::FailureKind::Permanent,
                "AccessDenied",
                "not authorized",
            )],
        );
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app"))
                .await
                .not_found();
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(status["status"]["conditions"][0]["reason"], "AccessDenied");
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "GetCredentialsFailed");
            event.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1);
        assert!(
            requeue(&action) >= Some(ctx.settings.max_backoff.mul_f64(0.8)),
            "{action:?}"
        );
    }

    #[tokio::test]
    async fn a_role_the_policy_withdraws_loses_its_credentials_without_an_sts_call() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        // Under enforce, a namespace without a policy annotation gets no role.
        let policy = crate::controller::policy::PolicyContext::new(
            crate::policy::PolicyMode::Enforce,
            None,
            Some(crate::policy::Guard::default()),
        );
        let (store, mut writer) = reflector::store();
        let mut ns = PartialObjectMeta::<k8s_openapi::api::core::v1::Namespace>::default();
        ns.metadata.name = Some(NS.into());
        writer.apply_watcher_event(&watcher::Event::Apply(ns));
        let (_synced_tx, synced) = watch::channel(true);
        policy.attach(store, synced);
        let ctx = Arc::new(Context::new(
            ctx.client.clone(),
            sts.clone(),
            Settings::default(),
            Wiring {
                metrics: Arc::new(Metrics::new()),
                leader: ctx.leader.clone(),
                policy,
                learned: ctx.learned.clone(),
                instance: "fixture".into(),
            },
        ));
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            let patch = api.expect(Method::PATCH, &secret_path("app")).await;
            assert_eq!(patch.body["metadata"]["resourceVersion"], "200");
            assert!(
                patch.body["data"]["credentials.json"].is_null(),
                "withdrawn: {}",
                patch.body
            );
            patch.ok(&s);
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(
                status["status"]["conditions"][0]["reason"],
                "RoleNotPermitted"
            );
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "RoleNotPermitted");
            event.echo();
            api.silent().await;
        });
        within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 0, "no STS call for a refused role");
    }

    #[tokio::test]
    async fn sts_refusing_a_chained_session_length_is_asked_once_more_capped() {
        let sts = FakeSts::failing(
            Duration::from_secs(3600),
            vec![sts_error(
                crate::aws::FailureKind::Permanent,
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
            )],
        );
        let (ctx, mut api, _leader) = context(sts.clone());
        let mut r = role("app", "app", 1);
        r.spec.role_session_duration = 7200;
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app"))
                .await
                .not_found();
            api.expect(Method::POST, SECRETS).await.echo();
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(status["status"]["conditions"][0]["status"], "True");
            api.expect(Method::POST, EVENTS).await.echo();
            api.silent().await;
        });
        within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        let asked: Vec<i64> = sts
            .calls
            .lock()
            .expect("calls")
            .iter()
            .map(|c| c.duration_seconds)
            .collect();
        assert_eq!(asked, vec![7200, 3600], "once more, capped");
        assert!(
            ctx.learned.is_chained(),
            "remembered for every later session"
        );
    }

    #[tokio::test]
    async fn a_secret_changed_by_someone_else_right_after_the_write_is_looked_at_again_soon() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let watcher_ctx = ctx.clone();
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app"))
                .await
                .not_found();
            let create = api.expect(Method::POST, SECRETS).await;
            // The watch delivers someone else's change before the create's response.
            let mut theirs = PartialObjectMeta::<Secret>::default();
            theirs.metadata.name = Some("app".into());
            theirs.metadata.namespace = Some(NS.into());
            theirs.metadata.resource_version = Some("202".into());
            assert!(
                !watcher_ctx.secrets.triggers(&theirs),
                "held back during the write"
            );
            let mut written = create.body.clone();
            written["metadata"]["resourceVersion"] = json!("201");
            create.ok(&written);
            status_patch(&mut api, &stored).await;
            api.expect(Method::POST, EVENTS).await.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&role("app", "app", 1), &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(
            action,
            kube::runtime::controller::Action::requeue(ctx.settings.backoff_base),
            "looked at again after --backoff-base, not at the refresh point"
        );
    }

    #[tokio::test]
    async fn a_secret_write_that_conflicts_is_observed_and_decided_again_without_a_second_sts_call()
    {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        // Ten minutes left: inside the refresh window.
        let s = stored_secret(&r, Duration::from_secs(600));
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            let first = api.expect(Method::PATCH, &secret_path("app")).await;
            assert_eq!(first.body["metadata"]["resourceVersion"], "200");
            let credentials = first.body["data"]["credentials.json"].clone();
            assert!(credentials.is_string());
            first.conflict();
            // Someone labelled the Secret meanwhile: read it again, decide again.
            let mut theirs = s.clone();
            theirs.metadata.resource_version = Some("201".into());
            theirs.labels_mut().insert("team".into(), "checkout".into());
            api.expect(Method::GET, &secret_path("app"))
                .await
                .ok(&theirs);
            let second = api.expect(Method::PATCH, &secret_path("app")).await;
            assert_eq!(
                second.body["metadata"]["resourceVersion"], "201",
                "on the version read again"
            );
            assert_eq!(
                second.body["data"]["credentials.json"], credentials,
                "the credentials already issued"
            );
            let mut renewed = theirs.clone();
            renewed.metadata.resource_version = Some("202".into());
            second.ok(&renewed);
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(status["status"]["conditions"][0]["status"], "True");
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "UpdateCredentials");
            event.echo();
            api.silent().await;
        });
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1, "STS is asked once");
        assert!(
            requeue(&action) > Some(Duration::from_secs(600)),
            "{action:?}"
        );
    }

    #[tokio::test]
    async fn a_create_that_conflicts_with_a_foreign_secret_is_decided_again_and_leaves_it_alone() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let stored = r.clone();
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app"))
                .await
                .not_found();
            api.expect(Method::POST, SECRETS).await.conflict();
            // Created meanwhile by someone else, under the same name.
            let mut foreign = Secret::default();
            foreign.metadata.name = Some("app".into());
            foreign.metadata.namespace = Some(NS.into());
            foreign.metadata.resource_version = Some("300".into());
            api.expect(Method::GET, &secret_path("app"))
                .await
                .ok(&foreign);
            let status = status_patch(&mut api, &stored).await;
            assert_eq!(
                status["status"]["conditions"][0]["reason"],
                "SecretConflict"
            );
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "SecretConflict");
            event.echo();
            api.silent().await;
        });
        within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        server.await.expect("server");
        assert_eq!(sts.count(), 1);
    }

    #[tokio::test]
    async fn a_secret_that_conflicts_again_after_the_second_look_backs_off_with_one_warning() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, mut api, _leader) = context(sts.clone());
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(600));
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            api.expect(Method::PATCH, &secret_path("app"))
                .await
                .conflict();
            api.expect(Method::GET, &secret_path("app")).await.ok(&s);
            api.expect(Method::PATCH, &secret_path("app"))
                .await
                .conflict();
            let event = api.expect(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "UpdateSecretFailed");
            event.echo();
            api.silent().await;
        });
        let result = within(reconcile::reconcile_role(&r, &ctx)).await;
        server.await.expect("server");
        assert!(
            matches!(&result, Err(crate::Error::Kube(kube::Error::Api(s))) if s.code == 409),
            "{result:?}"
        );
        assert_eq!(sts.count(), 1);
    }

    #[tokio::test]
    async fn a_secret_known_at_its_cached_version_is_decided_without_any_request() {
        let sts = FakeSts::new(Duration::from_secs(3600));
        let (ctx, api, _leader) = context(sts.clone());
        let mut r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        // The watch cache shows the Secret at the version this process last read in full.
        let (_roles, secrets) = stores(&s);
        let (_synced_tx, synced) = watch::channel(true);
        ctx.secrets.attach(secrets, synced);
        ctx.secrets.record(NS, "app", Some(&s));
        let expiration = secret::read(&s).expect("readable").expiration;
        let outcome = crate::controller::status::Outcome::Ready {
            role_arn: format!("{BASE}app"),
            expiration,
            generation: 1,
            message: crate::controller::status::ready_message(
                &format!("{BASE}app"),
                expiration,
                crate::aws::options::SessionLength::new(3600, false),
            ),
            would_deny: None,
        };
        r.status = Some(crate::controller::status::next(None, &outcome, Utc::now()));
        let action = within(reconcile::reconcile_role(&r, &ctx))
            .await
            .expect("ok");
        within(api.silent()).await;
        assert_eq!(sts.count(), 0);
        assert!(
            requeue(&action) > Some(Duration::from_secs(600)),
            "{action:?}"
        );
        assert!(
            ctx.metrics
                .render()
                .contains(r#"kaic_secret_observations_total{source="cache"} 1"#),
            "{}",
            ctx.metrics.render()
        );
    }

    #[tokio::test]
    async fn the_janitor_deletes_nothing_on_the_word_of_a_stale_cache() {
        let (ctx, mut api, _leader) = context(FakeSts::new(Duration::from_secs(3600)));
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        // The role cache is empty (behind); the API server still has the role.
        let (roles, secrets) = stores(&s);
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &role_path("app")).await.ok(&r);
            api.silent().await;
        });
        within(janitor::sweep(&ctx, &roles, &secrets)).await;
        server.await.expect("server");
    }

    #[tokio::test]
    async fn the_janitor_deletes_with_preconditions_once_the_role_is_confirmed_gone() {
        let (ctx, mut api, _leader) = context(FakeSts::new(Duration::from_secs(3600)));
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        let (roles, secrets) = stores(&s);
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &role_path("app")).await.not_found();
            let delete = api.expect(Method::DELETE, &secret_path("app")).await;
            assert_eq!(delete.body["preconditions"]["uid"], "secret-uid-app");
            assert_eq!(delete.body["preconditions"]["resourceVersion"], "200");
            delete.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
            api.silent().await;
        });
        within(janitor::sweep(&ctx, &roles, &secrets)).await;
        server.await.expect("server");
    }
}
