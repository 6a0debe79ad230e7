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

/// A fake STS that counts its calls and answers with credentials valid for `valid_for`.
pub struct FakeSts {
    pub calls: Mutex<Vec<IssueRequest>>,
    pub valid_for: Duration,
}

impl FakeSts {
    pub fn new(valid_for: Duration) -> Arc<Self> {
        Arc::new(FakeSts {
            calls: Mutex::new(Vec::new()),
            valid_for,
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
        let creds = credentials(self.valid_for);
        Box::pin(async move { Ok(creds) })
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

    #[tokio::test]
    async fn the_janitor_deletes_nothing_on_the_word_of_a_stale_cache() {
        let (ctx, mut api, _leader) = context(FakeSts::new(Duration::from_secs(3600)));
        let r = role("app", "app", 1);
        let s = stored_secret(&r, Duration::from_secs(3000));
        // The role cache is empty (behind); the API server still has the role.
        let (roles, secrets) = stores(&s);
        let server = tokio::spawn(async move {
            api.expect(Method::GET, &role_path("app")).await.ok(&r);
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
        });
        within(janitor::sweep(&ctx, &roles, &secrets)).await;
        server.await.expect("server");
    }
}
