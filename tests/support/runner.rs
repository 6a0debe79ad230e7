//! The controller run in-process, assembled by the library's own `runtime::Process`, as the
//! binary assembles it.

use super::*;
use kube_aws_iam_controller::aws::BaseRoleArn;

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

/// The controller running in-process, scoped to one namespace: built by
/// [`Controller::builder`], stopped by [`Controller::stop`].
pub struct Controller {
    pub ctx: Arc<Context>,
    pub ready: Arc<AtomicBool>,
    stop: Option<Shutdown>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What to run: by default [`test_settings`], the default `--namespace-policy=enforce` (test
/// namespaces permit every role, see [`Env::namespace`]) with no identity of its own to protect,
/// and [`BASE_ROLE_ARN`] as the base role ARN.
pub struct ControllerBuilder {
    client: Client,
    ns: String,
    issuer: Arc<dyn CredentialIssuer>,
    settings: Settings,
    policy: PolicyContext,
    base: Option<BaseRoleArn>,
}

impl ControllerBuilder {
    pub fn settings(self, settings: Settings) -> Self {
        ControllerBuilder { settings, ..self }
    }

    /// This namespace role policy instead of the default.
    pub fn policy(self, policy: PolicyContext) -> Self {
        ControllerBuilder { policy, ..self }
    }

    /// No base role ARN (`--base-role-arn` absent and nothing discovered): bare role names
    /// cannot be resolved.
    pub fn without_base_role_arn(self) -> Self {
        ControllerBuilder { base: None, ..self }
    }

    /// Starts the controller with the same assembly as the binary's (`runtime::run`), without
    /// admin server and election.
    pub async fn start(self) -> Controller {
        let process = Process::start(ProcessSettings::default(), Arc::new(Metrics::new()))
            .await
            .expect("process");
        let shutdown = Shutdown::default();
        let running = process
            .launch(
                Parts {
                    client: self.client,
                    issuer: self.issuer,
                    settings: self.settings,
                    run: RunOptions {
                        namespace: Some(self.ns),
                        concurrency: 4,
                        janitor_interval: Duration::from_millis(500),
                    },
                    policy: self.policy,
                    learned: Arc::new(controller::learned::Learned::new(self.base, false)),
                    instance: "test".into(),
                    webhook: None,
                },
                shutdown.clone(),
            )
            .await
            .expect("launch");
        Controller {
            ctx: running.ctx.clone(),
            ready: running.ready.clone(),
            stop: Some(shutdown),
            task: Some(running.into_task()),
        }
    }
}

impl Controller {
    /// The controller in namespace `ns`, calling `issuer` for credentials.
    pub fn builder(
        client: &Client,
        ns: &str,
        issuer: Arc<dyn CredentialIssuer>,
    ) -> ControllerBuilder {
        ControllerBuilder {
            client: client.clone(),
            ns: ns.to_string(),
            issuer,
            settings: test_settings(),
            policy: PolicyContext::new(PolicyMode::Enforce, None, Some(Guard::default())),
            base: Some(BASE_ROLE_ARN.parse().expect("base")),
        }
    }

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

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
