//! Mutating admission webhook: pods that name an AWSIAMRole (by label, or through their
//! ServiceAccount) get its Secret mounted at `/meta/aws-iam` and the SDK environment. Every
//! replica serves admissions from watch caches; only the leader creates and rotates the TLS
//! certificate and keeps the webhook configuration's `caBundle` current.

pub mod binding;
pub mod certs;
pub mod endpoint;
pub mod mutate;
pub mod review;
pub mod rotation;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

use crate::crd::AWSIAMRole;
use crate::metrics::Metrics;
use certs::{Lifetimes, Material};
use review::{Facts, RoleState};

/// Labels on the TLS Secret; a Secret without them is never overwritten.
pub const TLS_SECRET_COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "webhook-tls");
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kube-aws-iam-controller");

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// The controller's own CA, in a Secret; the leader rotates it.
    SelfManaged(Lifetimes),
    /// Files another tool (cert-manager) keeps current; re-read when they change.
    Files { cert: PathBuf, key: PathBuf },
}

/// How the webhook runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    /// Namespace of the TLS Secret (the controller's own).
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the leader keeps current.
    pub configuration: String,
    /// Names and IP addresses in the serving certificate.
    pub sans: Vec<String>,
    pub tls: TlsSource,
    /// Region variables to inject, if any.
    pub region: Option<String>,
    /// Secret mount or credentials sidecar (docs/webhook.md).
    pub delivery: endpoint::Delivery,
    /// Watch AWSIAMRoles and ServiceAccounts in this namespace only.
    pub watch_namespace: Option<String>,
    /// How often the leader checks the certificate, and file mode re-reads the files.
    pub check_interval: Duration,
}

/// "Am I the leader now?"
pub type IsLeader = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the namespace role policy refuses an AWSIAMRole (`None`: permitted, or not known yet).
/// Answered from the controller's caches, never by an API call.
pub type PolicyCheck = Arc<dyn Fn(&AWSIAMRole) -> Option<String> + Send + Sync>;

/// The namespace role policy as the controller applies it (`ctx.policy`), for warnings.
pub fn policy_check(ctx: Arc<crate::controller::Context>) -> PolicyCheck {
    use crate::controller::policy::Judgement;
    use crate::policy::Verdict;
    Arc::new(move |role: &AWSIAMRole| {
        let base = ctx.learned.base_role_arn();
        let arn = crate::aws::arn::resolve(&role.spec.role_reference, base.as_ref()).ok()?;
        match ctx.policy.judge(role, &arn, base.as_ref()) {
            Judgement::Verdict(Verdict::Denied(d)) => Some(d.message),
            Judgement::Verdict(Verdict::WouldDeny(d)) => {
                Some(format!("{} (audit mode: issued anyway)", d.message))
            }
            Judgement::Verdict(Verdict::Permitted)
            | Judgement::IdentityUnknown
            | Judgement::NamespaceUnknown(_) => None,
        }
    })
}

/// The running webhook; dropping it stops every task it started at once ([`Handle::drain`]
/// first for a clean stop).
pub struct Handle {
    pub addr: SocketAddr,
    pub certs: Arc<server::CertStore>,
    tasks: Vec<JoinHandle<()>>,
    phase: tokio::sync::watch::Sender<server::Phase>,
    /// True once the server has stopped (after a drain).
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Handle {
    /// Stops serving without failing an admission: for `delay` every answer closes its
    /// connection and new connections are still accepted (the Service's endpoints take a moment
    /// to drop a terminating pod); then no new connections, idle ones closed, and this returns
    /// once the requests in flight are answered (at most 10 s more).
    pub async fn drain(&self, delay: Duration) {
        self.phase.send_replace(server::Phase::Closing);
        tokio::time::sleep(delay).await;
        self.phase.send_replace(server::Phase::Closed);
        let mut stopped = self.stopped.clone();
        let _ = tokio::time::timeout(Duration::from_secs(11), stopped.wait_for(|s| *s)).await;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    client: Client,
    roles: Store<AWSIAMRole>,
    accounts: Store<PartialObjectMeta<ServiceAccount>>,
    roles_ready: AtomicBool,
    region: Option<String>,
    delivery: endpoint::Delivery,
    metrics: Arc<Metrics>,
    policy: Option<PolicyCheck>,
}

/// Binds the listener and starts the caches, the server and the certificate tasks.
pub async fn start(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    is_leader: IsLeader,
    policy: Option<PolicyCheck>,
    roles: Option<crate::controller::RoleView>,
) -> Result<Handle, crate::Error> {
    validate(&settings)?;
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|e| crate::Error::Config(format!("--webhook-addr {}: {e}", settings.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::Error::Config(format!("--webhook-addr: {e}")))?;
    let certs = Arc::new(server::CertStore::default());
    let tls = server::tls_config(certs.clone())
        .map_err(|e| crate::Error::Config(format!("webhook TLS: {e}")))?;
    let (shared, mut tasks) = caches(&client, &settings, &metrics, policy, roles);
    tasks.extend(certificates(
        &client, &settings, &metrics, &certs, is_leader,
    ));
    let (phase, phase_rx) = tokio::sync::watch::channel(server::Phase::Serving);
    let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
    tasks.push(tokio::spawn(async move {
        server::serve(listener, tls, router(shared), phase_rx).await;
        stopped_tx.send_replace(true);
    }));
    info!(%addr, "admission webhook listening");
    Ok(Handle {
        addr,
        certs,
        tasks,
        phase,
        stopped,
    })
}

/// Settings the flags' parsers cannot check alone.
fn validate(settings: &Settings) -> Result<(), crate::Error> {
    if let TlsSource::SelfManaged(l) = &settings.tls {
        l.validate().map_err(crate::Error::Config)?;
    }
    if settings.delivery.default == endpoint::Mode::Endpoint && settings.delivery.image.is_none() {
        return Err(crate::Error::Config(
            "--webhook-credentials=endpoint needs --webhook-sidecar-image".into(),
        ));
    }
    Ok(())
}

/// What the handler reads, and the tasks that keep it current: the controller's own (trimmed)
/// AWSIAMRole cache when the webhook runs beside it, a watch of its own otherwise; the
/// ServiceAccounts' metadata.
fn caches(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    policy: Option<PolicyCheck>,
    roles: Option<crate::controller::RoleView>,
) -> (Arc<Shared>, Vec<JoinHandle<()>>) {
    let mut tasks = Vec::new();
    let (role_view, own_roles) = match roles {
        Some(view) => (view, None),
        None => {
            let (store, writer) = reflector::store();
            let (synced_tx, synced) = tokio::sync::watch::channel(false);
            (
                crate::controller::RoleView { store, synced },
                Some((writer, synced_tx)),
            )
        }
    };
    let (accounts, accounts_writer) = reflector::store();
    let shared = Arc::new(Shared {
        client: client.clone(),
        roles: role_view.store.clone(),
        accounts,
        roles_ready: AtomicBool::new(false),
        region: settings.region.clone(),
        delivery: settings.delivery.clone(),
        metrics: metrics.clone(),
        policy,
    });
    let (role_api, account_api): (Api<AWSIAMRole>, Api<PartialObjectMeta<ServiceAccount>>) =
        match &settings.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    if let Some((writer, synced_tx)) = own_roles {
        let role_stream = reflector::reflector(writer, watcher(role_api, Default::default()))
            .default_backoff()
            .inspect(move |ev| {
                if matches!(ev, Ok(watcher::Event::InitDone)) {
                    synced_tx.send_replace(true);
                }
            })
            .touched_objects();
        tasks.push(tokio::spawn(role_stream.for_each(|_| async {})));
    }
    // Metadata only: the annotation is all the webhook reads.
    let account_stream =
        reflector::reflector(accounts_writer, watcher(account_api, Default::default()))
            .default_backoff()
            .touched_objects();
    tasks.push(tokio::spawn(account_stream.for_each(|_| async {})));
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        // Until then "does not exist" could be wrong: no role warnings before the first list.
        // (A ServiceAccount the cache lacks is read from the API server instead.)
        let mut synced = role_view.synced;
        if synced.wait_for(|synced| *synced).await.is_ok() {
            s.roles_ready.store(true, Ordering::SeqCst);
        }
    }));
    (shared, tasks)
}

/// The tasks that keep `certs` current: following (and, on the leader, rotating) the
/// self-managed certificate Secret, or following the mounted files.
fn certificates(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    certs: &Arc<server::CertStore>,
    is_leader: IsLeader,
) -> Vec<JoinHandle<()>> {
    match &settings.tls {
        TlsSource::SelfManaged(l) => vec![
            tokio::spawn(rotation::follow_secret(
                client.clone(),
                settings.clone(),
                certs.clone(),
                metrics.clone(),
            )),
            tokio::spawn(rotation::rotate(
                client.clone(),
                settings.clone(),
                *l,
                is_leader,
            )),
        ],
        TlsSource::Files { cert, key } => vec![tokio::spawn(rotation::follow_files(
            cert.clone(),
            key.clone(),
            settings.check_interval,
            certs.clone(),
        ))],
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/mutate", post(admit))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

/// Reads the body in chunks (`review::Collector`): a pod over the limit is refused with its
/// message however large it is, without holding more than the limit in memory.
#[instrument(name = "admission", skip_all, fields(bytes))]
async fn admit(State(s): State<Arc<Shared>>, body: Body) -> Response {
    let start = Instant::now();
    let mut body = body;
    let mut collector = review::Collector::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if let Some(chunk) = frame.data_ref()
            && !collector.push(chunk)
        {
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    }
    tracing::Span::current().record("bytes", collector.len());
    let (res, label) = s.decide(collector.finish()).await;
    s.metrics
        .webhook_admission(label, start.elapsed().as_secs_f64());
    let body = serde_json::to_vec(&res.into_review()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl Shared {
    async fn decide(
        &self,
        decoded: Result<AdmissionRequest<Pod>, Box<AdmissionResponse>>,
    ) -> (AdmissionResponse, &'static str) {
        let req = match decoded {
            Ok(r) => r,
            Err(res) => return (*res, review::result::ERROR),
        };
        let ns = req.namespace.clone().unwrap_or_default();
        let explicit = req.object.as_ref().and_then(mutate::pod_role);
        let from_account = match (explicit, req.object.as_ref()) {
            (None, Some(pod)) => {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .unwrap_or("default");
                self.service_account_role(&ns, sa).await
            }
            _ => None,
        };
        let choice = mutate::choose(explicit, from_account.as_deref());
        let (role, not_permitted) = match choice.role() {
            Some(r) => self.role_state(&ns, r),
            None => (RoleState::Unknown, None),
        };
        let bindings = self.bindings(&ns, req.object.as_ref(), choice.role());
        let facts = Facts {
            choice,
            role,
            not_permitted,
            bindings,
        };
        review::respond(&req, &facts, self.region.as_deref(), &self.delivery)
    }

    /// From the cache; a ServiceAccount the cache has not seen yet (created a moment ago) is
    /// read once from the API server, with a short timeout.
    async fn service_account_role(&self, ns: &str, name: &str) -> Option<String> {
        let key = ObjectRef::new(name).within(ns);
        if let Some(sa) = self.accounts.get(&key) {
            return sa
                .annotations()
                .get(mutate::SERVICE_ACCOUNT_ANNOTATION)
                .cloned();
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        match tokio::time::timeout(Duration::from_secs(2), api.get_metadata_opt(name)).await {
            Ok(Ok(Some(sa))) => sa
                .annotations()
                .get(mutate::SERVICE_ACCOUNT_ANNOTATION)
                .cloned(),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                warn!(namespace = ns, serviceaccount = name, error = %e, "could not read the ServiceAccount");
                None
            }
            Err(_) => {
                warn!(
                    namespace = ns,
                    serviceaccount = name,
                    "reading the ServiceAccount timed out"
                );
                None
            }
        }
    }

    /// `spec.serviceAccountNames` of the bound AWSIAMRoles whose Secrets the pod reaches or
    /// that it would be given, from the cache (a role it has not seen yet is judged by the
    /// admission policy alone).
    fn bindings(
        &self,
        ns: &str,
        pod: Option<&Pod>,
        injected: Option<&str>,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let spec = pod.and_then(|p| p.spec.as_ref());
        let mut names = binding::secret_names(spec);
        names.extend(injected);
        names
            .into_iter()
            .filter_map(|name| {
                let role = self.roles.get(&ObjectRef::new(name).within(ns))?;
                let listed = role.spec.service_account_names.clone()?;
                Some((name.to_string(), listed))
            })
            .collect()
    }

    /// The AWSIAMRole's state, and the namespace policy's refusal of it, from the caches.
    fn role_state(&self, ns: &str, name: &str) -> (RoleState, Option<String>) {
        if !self.roles_ready.load(Ordering::SeqCst) {
            return (RoleState::Unknown, None);
        }
        let Some(role) = self.roles.get(&ObjectRef::new(name).within(ns)) else {
            return (RoleState::Missing, None);
        };
        let state = match role.ready_condition() {
            Some(c) if c.status == "True" => RoleState::Ready,
            Some(c) => RoleState::NotReady {
                reason: c.reason.clone(),
            },
            None => RoleState::NotReady {
                reason: "no status yet".into(),
            },
        };
        (state, self.policy.as_ref().and_then(|check| check(&role)))
    }
}

pub(crate) fn owned(secret: &Secret) -> bool {
    secret
        .labels()
        .get(TLS_SECRET_COMPONENT.0)
        .is_some_and(|v| v == TLS_SECRET_COMPONENT.1)
}

/// The material stored in the webhook's Secret, if it is ours and readable.
pub fn material(secret: &Secret) -> Option<Material> {
    if !owned(secret) {
        return None;
    }
    let raw = secret.data.as_ref()?.get(certs::STATE_KEY)?;
    serde_json::from_slice(&raw.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn review(pod: Value) -> String {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team",
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
        .to_string()
    }

    fn shared() -> Arc<Shared> {
        let (roles, mut role_writer) = reflector::store::<AWSIAMRole>();
        let (accounts, mut account_writer) =
            reflector::store::<PartialObjectMeta<ServiceAccount>>();
        let mut ready = AWSIAMRole::new(
            "ready",
            crate::crd::AWSIAMRoleSpec {
                role_reference: "ready".into(),
                role_session_duration: 3600,
                policy: None,
                policy_arns: Vec::new(),
                service_account_names: None,
                invalid: None,
            },
        );
        ready.metadata.namespace = Some("team".into());
        ready.status = Some(crate::crd::AWSIAMRoleStatus {
            conditions: vec![crate::crd::Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "CredentialsIssued".into(),
                message: String::new(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let mut bound = ready.clone();
        bound.metadata.name = Some("bound".into());
        bound.spec.service_account_names = Some(vec!["builder".into()]);
        let mut failing = ready.clone();
        failing.metadata.name = Some("failing".into());
        if let Some(s) = failing.status.as_mut() {
            s.conditions[0].status = "False".into();
            s.conditions[0].reason = "AccessDenied".into();
        }
        role_writer.apply_watcher_event(&Event::InitDone);
        role_writer.apply_watcher_event(&Event::Apply(ready));
        role_writer.apply_watcher_event(&Event::Apply(failing));
        role_writer.apply_watcher_event(&Event::Apply(bound));
        let sa = PartialObjectMeta::<ServiceAccount> {
            types: None,
            metadata: ObjectMeta {
                name: Some("builder".into()),
                namespace: Some("team".into()),
                annotations: Some(
                    [(
                        mutate::SERVICE_ACCOUNT_ANNOTATION.to_string(),
                        "ready".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            _phantom: Default::default(),
        };
        account_writer.apply_watcher_event(&Event::InitDone);
        account_writer.apply_watcher_event(&Event::Apply(sa));
        // The client is never used: every lookup here is answered by the caches.
        let config = kube::Config::new("https://127.0.0.1:1".parse().expect("url"));
        Arc::new(Shared {
            client: Client::try_from(config).expect("client"),
            roles,
            accounts,
            roles_ready: AtomicBool::new(true),
            region: None,
            delivery: endpoint::Delivery {
                default: endpoint::Mode::Process,
                image: Some("controller:test".into()),
            },
            metrics: Arc::new(Metrics::new()),
            policy: Some(Arc::new(|role: &AWSIAMRole| {
                (role.name_any() == "failing").then(|| "namespace team permits only app-*".into())
            })),
        })
    }

    async fn post(s: Arc<Shared>, body: String) -> Value {
        let res = router(s)
            .oneshot(
                Request::post("/mutate")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(res.status(), 200);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    /// kube's AdmissionResponse sends the patch bytes as a JSON array of numbers (which the
    /// API server decodes into its []byte as well as base64).
    fn patch_of(review: &Value) -> Value {
        let raw: Vec<u8> = review["response"]["patch"]
            .as_array()
            .expect("patch")
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).expect("byte"))
            .collect();
        serde_json::from_slice(&raw).expect("patch json")
    }

    #[tokio::test]
    async fn a_pod_whose_service_account_the_role_does_not_list_is_refused_not_wired() {
        let s = shared();
        let labelled = |sa: &str| {
            json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: "bound"}},
                   "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]}})
        };
        let out = post(s.clone(), review(labelled("other"))).await;
        assert_eq!(out["response"]["allowed"], false, "{out}");
        assert_eq!(
            out["response"]["status"]["message"],
            "ServiceAccount other may not use AWSIAMRole team/bound: its spec.serviceAccountNames lists only builder"
        );
        assert!(out["response"]["patch"].is_null(), "{out}");
        let out = post(s.clone(), review(labelled("builder"))).await;
        assert_eq!(out["response"]["allowed"], true, "{out}");
        assert!(
            patch_of(&out)
                .to_string()
                .contains("\"secretName\":\"bound\"")
        );
        // Wired by hand, not labelled: the same refusal, for the default ServiceAccount.
        let by_hand = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "i",
                "envFrom": [{"secretRef": {"name": "bound"}}]}]}});
        let out = post(s, review(by_hand)).await;
        assert_eq!(out["response"]["allowed"], false, "{out}");
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("ServiceAccount default") && m.contains("team/bound")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_labelled_pod_is_patched_and_the_uid_echoed() {
        let s = shared();
        let pod = json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: "ready"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let out = post(s.clone(), review(pod)).await;
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert!(out["response"]["warnings"].is_null(), "{out}");
        let patch = patch_of(&out).to_string();
        assert!(patch.contains("\"secretName\":\"ready\""), "{patch}");
        assert!(
            s.metrics
                .render()
                .contains("kaic_webhook_admissions_total{result=\"mutated\"} 1")
        );
    }

    #[tokio::test]
    async fn a_service_accounts_role_is_injected_and_a_pod_label_wins_over_it() {
        let pod = json!({"metadata": {"name": "p"},
                         "spec": {"serviceAccountName": "builder", "containers": [{"name": "c", "image": "i"}]}});
        let out = post(shared(), review(pod)).await;
        assert!(
            patch_of(&out)
                .to_string()
                .contains("\"secretName\":\"ready\"")
        );
        let pod = json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: "failing"}},
                         "spec": {"serviceAccountName": "builder", "containers": [{"name": "c", "image": "i"}]}});
        let out = post(shared(), review(pod)).await;
        assert!(
            patch_of(&out)
                .to_string()
                .contains("\"secretName\":\"failing\"")
        );
        let pod = json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: ""}},
                         "spec": {"serviceAccountName": "builder", "containers": [{"name": "c", "image": "i"}]}});
        let out = post(shared(), review(pod)).await;
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"]["patch"].is_null(), "opted out: {out}");
    }

    #[tokio::test]
    async fn missing_and_failing_roles_are_admitted_with_a_warning() {
        for (role, want) in [
            ("absent", "AWSIAMRole team/absent does not exist"),
            (
                "failing",
                "AWSIAMRole team/failing is not Ready (AccessDenied)",
            ),
        ] {
            let pod = json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: role}},
                             "spec": {"containers": [{"name": "c", "image": "i"}]}});
            let out = post(shared(), review(pod)).await;
            assert_eq!(out["response"]["allowed"], true);
            let warnings = out["response"]["warnings"].to_string();
            assert!(warnings.contains(want), "{warnings}");
        }
    }

    #[tokio::test]
    async fn the_credentials_annotation_picks_the_sidecar_and_a_bad_value_or_no_image_is_refused() {
        let pod = |mode: &str| {
            json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: "ready"},
                                "annotations": {endpoint::MODE_ANNOTATION: mode}},
                   "spec": {"containers": [{"name": "c", "image": "i"}]}})
        };
        let s = shared();
        let out = post(s.clone(), review(pod("endpoint"))).await;
        assert_eq!(out["response"]["allowed"], true);
        let patch = patch_of(&out).to_string();
        assert!(patch.contains("\"image\":\"controller:test\""), "{patch}");
        assert!(
            patch.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            "{patch}"
        );
        assert!(!patch.contains("credentials.process"), "{patch}");
        let out = post(s.clone(), review(pod("process"))).await;
        assert!(patch_of(&out).to_string().contains("credentials.process"));
        let out = post(s.clone(), review(pod("sidecar"))).await;
        assert_eq!(out["response"]["allowed"], false);
        let Some(mut without_image) = Arc::into_inner(shared()) else {
            panic!("unshared");
        };
        without_image.delivery.image = None;
        let out = post(Arc::new(without_image), review(pod("endpoint"))).await;
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--webhook-sidecar-image")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_pod_over_the_limit_gets_the_refusal_through_the_server_not_a_bare_413() {
        // The API server admits creates of up to 3 MiB (its request limit); the review of such a
        // pod must reach the handler's refusal, which names the limit, whatever its size.
        for vars in [15_000, 34_000] {
            let env: Vec<Value> = (0..vars)
                .map(|i| json!({"name": format!("APP_SETTING_{i:05}"), "value": "v".repeat(60)}))
                .collect();
            let pod = json!({"metadata": {"name": "p", "labels": {mutate::ROLE_LABEL: "ready"}},
                             "spec": {"containers": [{"name": "c", "image": "i", "env": env}]}});
            let body = review(pod);
            assert!(body.len() > review::MAX_REVIEW_BYTES, "{}", body.len());
            let out = post(shared(), body).await;
            assert_eq!(out["response"]["allowed"], false, "{vars} variables");
            assert_eq!(
                out["response"]["uid"],
                "705ab4f5-6393-11e8-b7cc-42010a800002"
            );
            let message = out["response"]["status"]["message"].to_string();
            assert!(
                message.contains("the pod is too large for the kube-aws-iam-controller webhook")
                    && message.contains("at most 1024 KiB"),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_role_name_is_refused_and_garbage_is_answered_not_crashed_on() {
        let pod = json!({"metadata": {"name": "p"},
                         "spec": {"serviceAccountName": "x", "containers": [{"name": "c", "image": "i"}]}});
        let s = shared();
        let mut labelled = pod.clone();
        labelled["metadata"]["labels"] = json!({mutate::ROLE_LABEL: "Not_Valid"});
        let out = post(s.clone(), review(labelled)).await;
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a valid Secret name"))
        );
        let out = post(s.clone(), "{not json".into()).await;
        assert_eq!(out["response"]["allowed"], false);
        assert!(s.metrics.render().contains("result=\"error\""));
    }
}
