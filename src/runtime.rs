//! The running controller, assembled in one place for `main.rs` and the test harness alike:
//! the admin server, the reconcile loop's context and watches, the admission webhook and the
//! leader election, all stopped by one [`Shutdown`].
//!
//! Two steps, because the admin server must answer before anything slow happens (base role
//! ARN discovery, STS): [`Process::start`] binds the admin server and sets up the election's
//! leadership handle; [`Process::launch`] then starts everything else once the STS issuer
//! exists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::aws::CredentialIssuer;
use crate::controller::leader::{self, Elector, KubeLease, Leadership, LeaseSettings, Resign};
use crate::controller::learned::Learned;
use crate::controller::policy::PolicyContext;
use crate::controller::{self, Context, RunOptions, Settings, Wiring};
use crate::metrics::Metrics;
use crate::{Error, Result};

/// The process's one shutdown signal: requested once (SIGTERM, a test's stop), seen by every
/// part that must wind down.
#[derive(Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(watch::Sender::new(false))
    }
}

impl Shutdown {
    /// Asks every part to stop.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once [`Self::request`] was called.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// How long a stopping replica's webhook keeps accepting connections, each answer closing its
/// connection, before it stops accepting (`webhook::Handle::drain`): the Service's endpoints
/// take a moment to drop a terminating pod, and the API server keeps sending on the connections
/// it holds (docs/webhook.md, Failure modes).
pub const WEBHOOK_SHUTDOWN_DELAY: Duration = Duration::from_secs(3);

/// What the process serves besides the reconcile loop.
#[derive(Clone, Debug, Default)]
pub struct ProcessSettings {
    /// Join this leader election; `None`: always the leader (a single replica, the tests).
    pub election: Option<LeaseSettings>,
    /// Serve `/healthz`, `/readyz` and `/metrics` here.
    pub admin_addr: Option<SocketAddr>,
    /// How long in-flight reconciles may take after the shutdown request before the Lease is
    /// left to expire instead of released.
    pub shutdown_timeout: Duration,
    /// The admission webhook will run: `/readyz` then also waits for its certificate.
    pub webhook: bool,
}

/// A process whose admin server answers and whose leadership handle exists; nothing talks to
/// the API server or STS yet.
pub struct Process {
    settings: ProcessSettings,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    elector: Option<Elector>,
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    /// Where `/readyz` finds the webhook's certificate, once the webhook has started.
    webhook_certs: Option<admin::WebhookCerts>,
    /// The admin server's bound address.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<JoinHandle<()>>,
}

/// The reconcile loop's wiring: the clients, the tunables and what was learned at start.
pub struct Parts {
    pub client: Client,
    pub issuer: Arc<dyn CredentialIssuer>,
    pub settings: Settings,
    pub run: RunOptions,
    pub policy: PolicyContext,
    pub learned: Arc<Learned>,
    /// Names this replica in Events (and in the Lease, through [`ProcessSettings::election`]).
    pub instance: String,
    /// The admission webhook, when it is on.
    pub webhook: Option<crate::webhook::Settings>,
}

/// The running controller.
pub struct Running {
    pub ctx: Arc<Context>,
    /// True once the watch caches are filled.
    pub ready: Arc<AtomicBool>,
    /// The admission webhook, when it is on.
    pub webhook: Option<Arc<crate::webhook::Handle>>,
    /// The admin server's bound address.
    pub admin_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Process {
    /// Binds the admin server (it answers from here on) and creates the leadership handle.
    pub async fn start(settings: ProcessSettings, metrics: Arc<Metrics>) -> Result<Process> {
        if let Some(lease) = &settings.election {
            lease.validate().map_err(Error::Config)?;
        }
        let (leadership, elector) = match &settings.election {
            Some(lease) => {
                let (leadership, elector) = leader::elected(lease, metrics.clone());
                (leadership, Some(elector))
            }
            None => (Leadership::always(), None),
        };
        let ready = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let webhook_certs = settings.webhook.then(admin::WebhookCerts::default);
        let (admin_addr, admin) = match settings.admin_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::Config(format!("--admin-addr {addr}: {e}")))?;
                let bound = listener.local_addr().ok();
                let state = AdminState {
                    metrics: metrics.clone(),
                    ready: ready.clone(),
                    alive: alive.clone(),
                    leadership: leadership.clone(),
                    webhook: webhook_certs.clone(),
                };
                let server = tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, admin::router(state)).await {
                        error!(error = %e, "admin server stopped");
                    }
                });
                (bound, Some(server))
            }
            None => (None, None),
        };
        Ok(Process {
            settings,
            metrics,
            leadership,
            elector,
            ready,
            alive,
            webhook_certs,
            admin_addr,
            admin,
        })
    }

    /// Starts the webhook, the election and the reconcile loop; they run until `shutdown`.
    pub async fn launch(mut self, parts: Parts, shutdown: Shutdown) -> Result<Running> {
        let ctx = Arc::new(Context::new(
            parts.client,
            parts.issuer,
            parts.settings,
            Wiring {
                metrics: self.metrics.clone(),
                leader: self.leadership.clone(),
                policy: parts.policy,
                learned: parts.learned,
                instance: parts.instance,
            },
        ));
        // One AWSIAMRole cache for the loop and the webhook.
        let roles = controller::RoleCache::default();
        let webhook = match parts.webhook {
            Some(settings) => Some(start_webhook(&ctx, settings, &roles).await?),
            None => None,
        };
        if let (Some(slot), Some(hook)) = (&self.webhook_certs, &webhook) {
            let _ = slot.set(hook.certs.clone());
        }
        let (election, resign_tx) = self.join_election(&ctx);
        let loop_done = controller::run(
            ctx.clone(),
            parts.run,
            roles,
            self.ready.clone(),
            shutdown.requested(),
        );
        let (alive, timeout, admin) = (
            self.alive.clone(),
            self.settings.shutdown_timeout,
            self.admin.take(),
        );
        let held = webhook.clone();
        let task = tokio::spawn(async move {
            let requested = shutdown.requested();
            let deadline = async move {
                shutdown.requested().await;
                tokio::time::sleep(timeout).await;
            };
            let reconciles = async {
                // Only once nothing is in flight may another replica start writing.
                let resign = tokio::select! {
                    () = loop_done => Resign::Release,
                    () = deadline => {
                        warn!("in-flight reconciles did not finish within --shutdown-timeout; the lease is left to expire");
                        Resign::LetExpire
                    }
                };
                alive.store(false, Ordering::SeqCst);
                if let Some(election) = election {
                    let _ = resign_tx.send(resign);
                    let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
                }
            };
            // Admissions are served on while the replica winds down, then drained.
            let admissions = async {
                if let Some(hook) = &held {
                    requested.await;
                    hook.drain(WEBHOOK_SHUTDOWN_DELAY).await;
                }
            };
            tokio::join!(reconciles, admissions);
            drop(held);
            if let Some(admin) = admin {
                admin.abort();
            }
        });
        Ok(Running {
            ctx,
            ready: self.ready.clone(),
            webhook,
            admin_addr: self.admin_addr,
            task,
        })
    }

    /// Joins the leader election when it is on: its task, and the sender that ends it.
    fn join_election(
        &mut self,
        ctx: &Context,
    ) -> (
        Option<tokio::task::JoinHandle<()>>,
        tokio::sync::oneshot::Sender<Resign>,
    ) {
        let (resign_tx, resign_rx) = tokio::sync::oneshot::channel::<Resign>();
        let election = match (self.settings.election.clone(), self.elector.take()) {
            (Some(lease), Some(elector)) => {
                info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "joining leader election");
                let store = KubeLease::new(ctx.client.clone(), &lease);
                Some(tokio::spawn(leader::run(
                    store,
                    lease,
                    elector,
                    async move { resign_rx.await.unwrap_or(Resign::LetExpire) },
                )))
            }
            _ => None,
        };
        (election, resign_tx)
    }
}

/// Starts the admission webhook on the loop's context and AWSIAMRole cache. Every replica
/// serves admissions; only the leader rotates the certificate.
async fn start_webhook(
    ctx: &Arc<Context>,
    settings: crate::webhook::Settings,
    roles: &controller::RoleCache,
) -> Result<Arc<crate::webhook::Handle>> {
    let leader = ctx.leader.clone();
    let hook = crate::webhook::start(
        ctx.client.clone(),
        settings,
        ctx.metrics.clone(),
        Arc::new(move || leader.is_leader()),
        Some(crate::webhook::policy_check(ctx.clone())),
        Some(roles.view()),
    )
    .await?;
    Ok(Arc::new(hook))
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
    }
}

impl Running {
    /// True once everything has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The task that ends once everything has stopped (after the shutdown request and the
    /// resignation); a panic of the reconcile loop surfaces in it.
    pub fn into_task(self) -> JoinHandle<()> {
        self.task
    }
}

/// The controller's side of STS, assembled from the flags.
pub struct ControllerSts {
    /// Issues the AWSIAMRoles' credentials (through `--assume-role`, rate limited).
    pub issuer: Arc<dyn CredentialIssuer>,
    /// The controller's own identity, for `GetCallerIdentity` (see [`learn_identity`]).
    pub own: crate::aws::sts::StsIssuer,
    /// The base role ARN (the flag's, or what discovery finds) and role chaining.
    pub learned: Arc<Learned>,
    /// The guard the namespace role policy puts in force once the identity is learned.
    pub guard: crate::policy::Guard,
}

impl ControllerSts {
    /// Builds the SDK configuration and the issuer; starts base role ARN discovery when
    /// `--base-role-arn` is not given (it may finish after the loop started). A bare
    /// `--assume-role` name waits for discovery.
    pub async fn connect(args: &crate::cli::Args) -> Result<ControllerSts> {
        use crate::aws::{arn, discover, imds::ImdsSettings, sts};
        let sdk_config = sts::load_config(&sts::StsSettings {
            region: args.aws.sts_region.clone(),
            endpoint: args.aws.sts_endpoint.clone(),
            timeout: args.aws.sts_timeout,
            credentials_file: args.sts.credentials_file.clone(),
        })
        .await;
        let timeout = args.aws.sts_timeout;
        let flag_base = args.aws.base_role_arn.clone();
        let learned = Arc::new(Learned::new(
            flag_base.clone(),
            args.sts.assume_role.is_some(),
        ));
        let discovery = flag_base.is_none().then(|| {
            let imds = ImdsSettings::resolve(
                args.sts.imds_endpoint.as_deref(),
                |k| std::env::var(k).ok(),
                Duration::from_secs(1),
            );
            tokio::spawn(discover::settle_base_role_arn(
                imds,
                sts::StsIssuer::new(&sdk_config, timeout),
                learned.clone(),
            ))
        });
        let mut guard = crate::policy::Guard::new(args.policy.allowed_account_ids.clone());
        let assume_role = match &args.sts.assume_role {
            Some(r) => {
                let base = match (learned.base_role_arn(), discovery) {
                    (Some(base), _) => Some(base),
                    (None, Some(d)) if !r.trim().starts_with("arn:") => d.await.ok().flatten(),
                    (None, _) => None,
                };
                let role = arn::resolve(r, base.as_ref())
                    .map_err(|e| Error::Config(format!("--assume-role: {e}")))?;
                info!(assume_role = %role, "AWSIAMRoles are assumed from a session of this role (at most 1 hour each)");
                guard.protect_role(&role, "--assume-role");
                Some(role)
            }
            None => None,
        };
        let issuer = sts::controller_issuer(
            &sdk_config,
            timeout,
            assume_role.as_ref(),
            args.sts.rate_limit(),
        )
        .await?;
        Ok(ControllerSts {
            issuer,
            own: sts::StsIssuer::new(&sdk_config, timeout),
            learned,
            guard,
        })
    }
}

/// This replica's name in the Lease and in Events: the pod's name, else the host's with a
/// random suffix.
pub fn instance_name() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kube-aws-iam-controller".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    })
}

/// Runs the controller as the flags say until SIGTERM (or Ctrl-C), then winds down: in-flight
/// reconciles finish (within `--shutdown-timeout`) and the Lease is released.
pub async fn run(args: crate::cli::Args) -> Result<()> {
    // The signal handler first: a SIGTERM during start-up (discovery may wait for STS) ends
    // the process cleanly instead of killing it.
    let shutdown = Shutdown::default();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            signal().await;
            info!("shutdown requested: finishing in-flight reconciles");
            shutdown.request();
        });
    }
    let instance = instance_name();
    let process =
        Process::start(args.process_settings(&instance), Arc::new(Metrics::new())).await?;
    let start = async {
        let client = crate::kubeclient::client(
            args.kube.kubeconfig.as_deref(),
            args.kube.apiserver.as_deref(),
        )
        .await?;
        let sts = ControllerSts::connect(&args).await?;
        info!(
            namespace_policy = args.policy.namespace_policy.as_str(),
            namespace = args.kube.namespace.as_deref().unwrap_or("<all>"),
            refresh_limit = ?args.controller.refresh_limit,
            admin = %args.runtime.admin_addr,
            "starting"
        );
        let running = process
            .launch(
                Parts {
                    client,
                    issuer: sts.issuer,
                    settings: args.settings(),
                    run: args.run_options(),
                    policy: PolicyContext::new(
                        args.policy.namespace_policy,
                        Some(args.policy.own_awsiamrole.clone()),
                        None,
                    ),
                    learned: sts.learned,
                    instance,
                    webhook: args
                        .webhook
                        .webhook
                        .then(|| args.webhook.settings(args.kube.namespace.clone())),
                },
                shutdown.clone(),
            )
            .await?;
        let (ctx, own, guard) = (running.ctx.clone(), sts.own, sts.guard);
        tokio::spawn(async move {
            crate::controller::policy::learn_identity(&ctx.policy, &own, guard).await
        });
        Ok::<_, Error>(running)
    };
    let running = tokio::select! {
        running = start => running?,
        () = shutdown.requested() => {
            info!("stopped before the controller started");
            return Ok(());
        }
    };
    let _ = running.into_task().await;
    info!("stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        return;
    }
    let _ = ctrl_c.await;
}
