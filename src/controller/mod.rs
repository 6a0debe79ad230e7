//! The reconcile loop: watches AWSIAMRoles and their Secrets and keeps each Secret's credentials valid.

pub mod act;
pub mod backoff;
pub mod cache;
pub mod campaign;
pub mod context;
#[cfg(test)]
pub mod fixtures;
pub mod janitor;
pub mod key;
pub mod known;
pub mod leader;
pub mod learned;
pub mod lease;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod secret;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

pub use context::{Context, Settings, Wiring};

use crate::crd::AWSIAMRole;

/// Scope and pacing of the loop.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// How often the janitor compares the caches for orphaned Secrets.
    pub janitor_interval: Duration,
}

/// The AWSIAMRoles' watch cache: filled by the reconcile loop's watch ([`run`]) and read by
/// the admission webhook too, so the process keeps one trimmed copy of every role.
pub struct RoleCache {
    store: reflector::Store<AWSIAMRole>,
    writer: reflector::store::Writer<AWSIAMRole>,
    synced_tx: watch::Sender<bool>,
}

/// A reader of the [`RoleCache`]: the store, and whether its first list is in.
#[derive(Clone)]
pub struct RoleView {
    pub store: reflector::Store<AWSIAMRole>,
    pub synced: watch::Receiver<bool>,
}

impl Default for RoleCache {
    fn default() -> Self {
        let (store, writer) = reflector::store();
        RoleCache {
            store,
            writer,
            synced_tx: watch::Sender::new(false),
        }
    }
}

impl RoleCache {
    pub fn view(&self) -> RoleView {
        RoleView {
            store: self.store.clone(),
            synced: self.synced_tx.subscribe(),
        }
    }
}

/// Runs until `shutdown` resolves and in-flight reconciles have finished (at once if the watch
/// caches never synced: then nothing is in flight); `ready` turns true once the watch caches
/// are filled.
pub async fn run(
    ctx: Arc<Context>,
    opts: RunOptions,
    roles: RoleCache,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (stop_signal, stop) = stop_on(shutdown);
    // NOTE: `Store::wait_until_ready` wakes only one of several waiters (the Controller is
    // one already), so cache sync is observed on the watch streams themselves.
    let (secrets_synced_tx, secrets_synced) = watch::channel(false);
    let (namespaces_synced_tx, namespaces_synced) =
        watch::channel(!ctx.policy.watches_namespaces());
    let (synced_tx, synced) = watch::channel(false);

    let (role_store, roles_synced) = (roles.store.clone(), roles.synced_tx.subscribe());
    let roles = role_events(&ctx, &opts, roles);
    let (secret_store, secret_writer) = reflector::store();
    ctx.secrets
        .attach(secret_store.clone(), secrets_synced.clone());
    let secrets = secret_events(
        &ctx,
        &opts,
        secret_writer,
        secrets_synced_tx,
        secrets_synced.clone(),
    );
    let namespaces = namespace_events(&ctx, &opts, namespaces_synced_tx, namespaces_synced.clone());

    let readiness = readiness(
        [roles_synced, secrets_synced, namespaces_synced],
        ready,
        synced_tx,
    );
    let janitor = janitor::run(
        ctx.clone(),
        role_store.clone(),
        secret_store,
        synced.clone(),
        opts.janitor_interval,
    );
    let leader_metric = leader_metric(&ctx);
    // Every trigger names its AWSIAMRole by `cache::role_ref` (name and namespace only).
    let mut controller = Controller::for_stream(roles, role_store.clone())
        .watches_stream(secrets, |secret| cache::owners(&secret));
    if let Some(namespaces) = namespaces {
        controller = controller.watches_stream(namespaces, roles_in_namespace(role_store.clone()));
    }
    let controller = controller
        .reconcile_on(reconcile_all(&ctx, role_store))
        .trigger_backoff(AlreadyBackedOff)
        .with_config(Config::default().concurrency(opts.concurrency))
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(other) => warn!(error = %other, "controller"),
            }
        });
    let janitor = tokio::spawn(janitor);
    let readiness = tokio::spawn(readiness);
    let leader_metric = tokio::spawn(leader_metric);
    tokio::select! {
        () = controller => {}
        () = never_synced(stop, synced) => {}
    }
    janitor.abort();
    readiness.abort();
    leader_metric.abort();
    stop_signal.abort();
}

/// Turns `shutdown` into a signal every part of the loop can wait for.
fn stop_on(
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<bool>) {
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    (task, stop)
}

/// Resolves once the stop signal is given.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves at the stop signal if the watch caches never synced (nothing is in flight then);
/// otherwise never: the controller's graceful shutdown ends the loop.
async fn never_synced(stop: watch::Receiver<bool>, synced: watch::Receiver<bool>) {
    stopped(stop).await;
    if !*synced.borrow() {
        info!("shutdown before the watch caches synced: nothing is in flight");
        return;
    }
    std::future::pending::<()>().await
}

/// Sets `ready` and sends `synced` once every watch cache (AWSIAMRoles, Secrets, Namespaces)
/// holds its first list.
async fn readiness(
    caches: [watch::Receiver<bool>; 3],
    ready: Arc<AtomicBool>,
    synced: watch::Sender<bool>,
) {
    for mut cache in caches {
        if cache.wait_for(|v| *v).await.is_err() {
            return;
        }
    }
    info!("watch caches synced");
    ready.store(true, Ordering::SeqCst);
    let _ = synced.send(true);
}

/// Keeps the leader gauge in step with the election's claim.
fn leader_metric(ctx: &Context) -> impl Future<Output = ()> + Send + 'static {
    ctx.metrics
        .set_leader(ctx.leader.changes().borrow().is_some());
    let (mut rx, metrics) = (ctx.leader.changes(), ctx.metrics.clone());
    async move {
        while rx.changed().await.is_ok() {
            let leading = rx.borrow_and_update().is_some();
            metrics.set_leader(leading);
        }
    }
}

/// The AWSIAMRoles' watch: fills the cache (trimmed, `cache::trim_role`) and passes on a role
/// only when `cache::role_changed` says so, judged against the cached copy before the event
/// replaces it: status writes (ours) do not trigger a reconcile.
fn role_events(
    ctx: &Arc<Context>,
    opts: &RunOptions,
    cache: RoleCache,
) -> impl futures::Stream<Item = Result<AWSIAMRole, watcher::Error>> + Send + 'static {
    let api: Api<AWSIAMRole> = match &opts.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let RoleCache {
        store,
        mut writer,
        synced_tx: synced,
    } = cache;
    let metrics = ctx.metrics.clone();
    let ctx = ctx.clone();
    watcher(api, watcher::Config::default())
        .inspect(move |ev| observe(ev, "awsiamroles", &synced, &metrics))
        .filter(relist_at_once)
        .default_backoff()
        .modify(cache::trim_role)
        .try_filter_map(move |event| {
            let changed = match &event {
                watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                    let key = cache::role_ref(r.metadata.namespace.as_deref(), &r.name_any());
                    cache::role_changed(store.get(&key).as_deref(), r)
                }
                _ => false,
            };
            writer.apply_watcher_event(&event);
            if let watcher::Event::Apply(r) | watcher::Event::InitApply(r) = &event {
                ctx.statuses
                    .seen(&key::RoleKey::of(r), r.metadata.resource_version.as_deref());
            }
            std::future::ready(Ok(match event {
                watcher::Event::Apply(mut r) | watcher::Event::InitApply(mut r) if changed => {
                    // The controller keeps this copy's reference until the role's next
                    // reconcile: without the resourceVersion and UID (`cache::role_ref`);
                    // the reconcile reads the role from the cache.
                    r.metadata.resource_version = None;
                    r.metadata.uid = None;
                    Some(r)
                }
                _ => None,
            }))
        })
}

/// The Secrets' watch, metadata only (the controller keeps no credentials in memory for it):
/// the cache keeps each Secret packed (`cache::CachedSecret`); the event goes on to the
/// controller, which maps it to its AWSIAMRole by the owner reference. A Secret at the version
/// this process wrote (or last read) tells it nothing new: its own writes trigger no second
/// reconcile (`known::SecretKnowledge::triggers`); deletions always do. The initial list
/// triggers nothing either: every AWSIAMRole is reconciled by its own initial list (a relist
/// after an outage does trigger, for what changed meanwhile).
fn secret_events(
    ctx: &Arc<Context>,
    opts: &RunOptions,
    mut writer: reflector::store::Writer<cache::CachedSecret>,
    synced_tx: watch::Sender<bool>,
    listed: watch::Receiver<bool>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    let api: Api<PartialObjectMeta<Secret>> = match &opts.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let metrics = ctx.metrics.clone();
    let ctx = ctx.clone();
    watcher(api, watcher::Config::default().labels(secret::SELECTOR))
        .inspect(move |ev| observe(ev, "secrets", &synced_tx, &metrics))
        .filter(relist_at_once)
        .default_backoff()
        .modify(cache::trim)
        .inspect_ok(move |event| writer.apply_watcher_event(&cache::packed(event)))
        .try_filter_map(move |event| {
            std::future::ready(Ok(match event {
                watcher::Event::Delete(secret) => Some(secret),
                watcher::Event::InitApply(_) if !*listed.borrow() => None,
                watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => {
                    ctx.secrets.triggers(&secret).then_some(secret)
                }
                watcher::Event::Init | watcher::Event::InitDone => None,
            }))
        })
}

/// The Namespaces' watch (metadata only), when the namespace role policy reads their
/// annotations: a Namespace is passed on when `policy::namespace_triggers` says so (a changed
/// annotation, or new after the start), judged against the cached copy before the event
/// replaces it. `synced` turns true once the cache holds the first list.
fn namespace_events(
    ctx: &Arc<Context>,
    opts: &RunOptions,
    synced: watch::Sender<bool>,
    listed: watch::Receiver<bool>,
) -> Option<
    impl futures::Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send + 'static,
> {
    if !ctx.policy.watches_namespaces() {
        return None;
    }
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    // Namespaced mode may read only its own Namespace (RBAC resourceNames).
    let config = match &opts.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (store, mut writer) = reflector::store();
    ctx.policy.attach(store.clone(), listed);
    let metrics = ctx.metrics.clone();
    // `observe` only logs relists here: the sync is announced once the cache holds the list,
    // since reconciles waiting for it read the cache at once.
    let (relisted, _) = watch::channel(false);
    Some(
        watcher(api, config)
            .inspect(move |ev| observe(ev, "namespaces", &relisted, &metrics))
            .filter(relist_at_once)
            .default_backoff()
            .modify(cache::trim)
            .try_filter_map(move |event| {
                let triggers = match &event {
                    watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                        policy::namespace_triggers(
                            store.get(&ObjectRef::from_obj(ns)).as_deref(),
                            ns,
                            *synced.borrow(),
                        )
                    }
                    _ => false,
                };
                writer.apply_watcher_event(&event);
                if matches!(event, watcher::Event::InitDone) {
                    synced.send_replace(true);
                }
                std::future::ready(Ok(match event {
                    watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) if triggers => {
                        Some(ns)
                    }
                    _ => None,
                }))
            }),
    )
}

/// Every cached AWSIAMRole, each time all are reconciled once: on becoming leader (no STS call
/// for credentials still valid), on learning the base role ARN (bare role names become
/// resolvable), and on learning the controller's own identity (roles waiting for it back off
/// meanwhile).
fn reconcile_all(
    ctx: &Context,
    store: reflector::Store<AWSIAMRole>,
) -> impl futures::Stream<Item = ObjectRef<AWSIAMRole>> + Send + 'static {
    let takeover =
        futures::stream::unfold((ctx.leader.changes(), false), |(mut rx, led)| async move {
            if led {
                rx.wait_for(|claim| claim.is_none()).await.ok()?;
            }
            rx.wait_for(|claim| claim.is_some()).await.ok()?;
            info!("leader: reconciling all AWSIAMRoles");
            Some(((), (rx, true)))
        });
    let discovered = futures::stream::unfold(ctx.learned.base_changes(), |mut rx| async move {
        rx.changed().await.ok()?;
        rx.borrow_and_update().as_ref()?;
        info!("base role ARN known: reconciling all AWSIAMRoles");
        Some(((), rx))
    });
    let identified = futures::stream::unfold(ctx.policy.identity_changes(), |mut rx| async move {
        if *rx.borrow_and_update() {
            return None;
        }
        rx.wait_for(|known| *known).await.ok()?;
        info!("the controller's identity is known: reconciling all AWSIAMRoles");
        Some(((), rx))
    });
    futures::stream::select(futures::stream::select(takeover, discovered), identified)
        .flat_map(move |()| futures::stream::iter(roles_in(&store, |_| true)))
}

/// The cached AWSIAMRoles in the namespace of a Namespace event.
fn roles_in_namespace(
    store: reflector::Store<AWSIAMRole>,
) -> impl Fn(PartialObjectMeta<Namespace>) -> Vec<ObjectRef<AWSIAMRole>> + Send + Sync + 'static {
    move |ns| {
        let name = ns.name_any();
        roles_in(&store, |r| r.namespace().as_deref() == Some(name.as_str()))
    }
}

/// The cached AWSIAMRoles `which` selects, as [`cache::role_ref`]s.
fn roles_in(
    store: &reflector::Store<AWSIAMRole>,
    which: impl Fn(&AWSIAMRole) -> bool,
) -> Vec<ObjectRef<AWSIAMRole>> {
    store
        .state()
        .iter()
        .filter(|r| which(r))
        .map(|r| cache::role_ref(r.metadata.namespace.as_deref(), &r.name_any()))
        .collect()
}

/// The controller's backoff over its trigger streams: none, as each watch already backs off
/// on its own errors (`default_backoff` above). kube's default here is a second exponential
/// backoff shared by every watch: a few errors on any of them stopped the events of all for up
/// to 30 s at a time (tests/slow_peers.rs: 37-44 s before a new role was served after
/// garbage on the watches).
#[derive(Clone, Copy, Debug, Default)]
struct AlreadyBackedOff;

impl Iterator for AlreadyBackedOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // `None` would end the trigger stream.
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for AlreadyBackedOff {
    fn reset(&mut self) {}
}

/// Drops a 410 Gone before the backoff: the watcher relists at once, as client-go's reflector
/// does, instead of first waiting out the backoff that the outage before it built up.
fn relist_at_once<K>(ev: &Result<watcher::Event<K>, watcher::Error>) -> std::future::Ready<bool> {
    std::future::ready(!matches!(ev, Err(watcher::Error::WatchError(s)) if s.code == 410))
}

/// Marks the cache synced at its first complete list; counts and logs a watch that expired
/// (410 Gone) and every list after the first (a relist).
fn observe<K>(
    ev: &Result<watcher::Event<K>, watcher::Error>,
    resource: &'static str,
    synced: &watch::Sender<bool>,
    metrics: &crate::metrics::Metrics,
) {
    match ev {
        Ok(watcher::Event::Init) if *synced.borrow() => {
            info!(resource, "watch relisting");
            metrics.watch_relisted(resource);
        }
        Ok(watcher::Event::InitDone) => {
            synced.send_replace(true);
        }
        Err(watcher::Error::WatchError(status)) if status.code == 410 => {
            warn!(resource, "watch expired (410 Gone)");
            metrics.watch_expired(resource);
        }
        _ => {}
    }
}
