//! The controller run in-process, assembled by the library's own `runtime::Process`, as the
//! binary assembles it.

use super::*;

/// Settings for tests: the production defaults with short backoffs.
pub fn test_settings() -> Settings {
    Settings {
        refresh_limit: Duration::from_secs(15 * 60),
        backoff_base: Duration::from_millis(500),
        max_backoff: Duration::from_secs(5),
        sts_options: Default::default(),
        orphan_grace: Duration::from_secs(60),
    }
}

/// The controller running in-process, scoped to one namespace.
pub struct Running {
    pub ctx: Arc<Context>,
    pub ready: Arc<AtomicBool>,
    stop: Option<Shutdown>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// True when the controller's task has ended (it must run until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the controller and waits for it to finish; panics (failing the test) if the
    /// controller panicked or did not stop within 30 s.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.stop.take() {
            shutdown.request();
        }
        if let Some(task) = self.task.take() {
            join_controller(task, Duration::from_secs(30)).await;
        }
    }
}

/// Waits for a stopped controller's task: re-raises its panic, and panics if it does not end
/// within `limit`.
pub async fn join_controller(task: tokio::task::JoinHandle<()>, limit: Duration) {
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the controller task failed: {e}"),
        Err(_) => panic!("the controller did not stop within {limit:?} of its shutdown signal"),
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The controller in-process under the default `--namespace-policy=enforce` (test namespaces
/// permit every role, see [`Env::namespace`]), with no identity of its own to protect.
pub async fn run_controller(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
) -> Running {
    let policy = PolicyContext::new(PolicyMode::Enforce, None, Some(Guard::default()));
    run_controller_with_policy(client, ns, issuer, settings, policy).await
}

/// [`run_controller`] that knows no base role ARN (`--base-role-arn` absent and nothing
/// discovered): bare role names cannot be resolved.
pub async fn run_controller_without_base(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
) -> Running {
    let policy = PolicyContext::new(PolicyMode::Enforce, None, Some(Guard::default()));
    let learned = controller::learned::Learned::new(None, false);
    start_controller(client, ns, issuer, settings, policy, learned).await
}

/// [`run_controller`] with this namespace role policy.
pub async fn run_controller_with_policy(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
    policy: PolicyContext,
) -> Running {
    let learned =
        controller::learned::Learned::new(Some(BASE_ROLE_ARN.parse().expect("base")), false);
    start_controller(client, ns, issuer, settings, policy, learned).await
}

pub async fn start_controller(
    client: &Client,
    ns: &str,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
    policy: PolicyContext,
    learned: controller::learned::Learned,
) -> Running {
    // The same assembly as the binary's (`runtime::run`), without admin server and election.
    let process = Process::start(ProcessSettings::default(), Arc::new(Metrics::new()))
        .await
        .expect("process");
    let shutdown = Shutdown::default();
    let running = process
        .launch(
            Parts {
                client: client.clone(),
                issuer,
                settings,
                run: RunOptions {
                    namespace: Some(ns.to_string()),
                    concurrency: 4,
                    janitor_interval: Duration::from_millis(500),
                },
                policy,
                learned: Arc::new(learned),
                instance: "test".into(),
                webhook: None,
            },
            shutdown.clone(),
        )
        .await
        .expect("launch");
    Running {
        ctx: running.ctx.clone(),
        ready: running.ready.clone(),
        stop: Some(shutdown),
        task: Some(running.into_task()),
    }
}
