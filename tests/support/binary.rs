//! The controller binary, started as a user starts it.

use super::*;

/// The controller binary, started as a user starts it, against the local control plane.
/// Dropped while running (a test that ends early or panics), it is stopped.
pub struct Binary {
    pub child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM to the watchdog: its trap stops the controller and waits for it.
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Binary {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the admin server: "STATUS BODY".
    pub async fn admin(&self, path: &str) -> String {
        http_get(self.admin_port, path).await.unwrap_or_default()
    }

    /// The controller process itself (the watchdog's child).
    pub fn pid(&self) -> Option<u32> {
        let w = self.child.id();
        std::fs::read_to_string(format!("/proc/{w}/task/{w}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the controller process and waits for it to end.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        match self.pid() {
            Some(pid) => {
                let _ = Command::new("kill")
                    .arg(format!("-{signal}"))
                    .arg(pid.to_string())
                    .status();
            }
            // No controller process (yet or any more): the watchdog's trap stops what it runs.
            None => {
                let _ = Command::new("kill")
                    .arg(self.child.id().to_string())
                    .status();
            }
        }
        self.child.wait().expect("watchdog exit")
    }

    /// The value of an unlabelled metric, if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.admin("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&self) {
        wait_for("the controller's admin server", || async {
            http_get(self.admin_port, "/healthz")
                .await
                .ok()
                .filter(|r| r.starts_with("200"))
        })
        .await;
    }

    /// SIGKILL to the controller process (never to its watchdog alone, which would orphan it).
    pub fn kill(self) {
        self.signal("KILL");
    }
}

/// Path of the built controller binary (`cargo build` makes it; integration tests get it from Cargo).
pub fn binary_path() -> PathBuf {
    std::env::var_os("KAIC_BINARY")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_kube-aws-iam-controller").map(PathBuf::from))
        .unwrap_or_else(|| repo().join("target/debug/kube-aws-iam-controller"))
}

/// Starts the controller binary for namespace `ns` against `sts_endpoint`.
pub async fn start_binary(env: &Env, ns: &str, sts_endpoint: &str, extra: &[&str]) -> Binary {
    start_binary_with(env, ns, sts_endpoint, extra, Launch::default()).await
}

/// How [`start_binary_with`] starts the binary, beyond its flags.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Leave out `--base-role-arn`, so the controller discovers it.
    pub discover_base_role_arn: bool,
    /// The controller's own AWS configuration comes from these variables instead of the static
    /// test key (e.g. `AWS_CONFIG_FILE` naming a `credentials.process`).
    pub aws_env: Option<Vec<(&'static str, String)>>,
    /// Runs it with this directory bind-mounted at /meta/aws-iam, as a pod that mounts a Secret.
    pub meta_volume: Option<PathBuf>,
    /// Another kubeconfig than the admin's (e.g. [`sa_kubeconfig`]'s).
    pub kubeconfig: Option<PathBuf>,
}

/// [`start_binary`] with control over discovery, the controller's own credentials and its
/// /meta/aws-iam volume.
pub async fn start_binary_with(
    env: &Env,
    ns: &str,
    sts_endpoint: &str,
    extra: &[&str],
    launch: Launch,
) -> Binary {
    let bin = binary_path();
    assert!(bin.exists(), "{} missing: run `cargo build`", bin.display());
    let admin_port = free_port();
    let log = env.dir.join(format!("controller-{ns}-{admin_port}.log"));
    let mut args = vec![
        format!(
            "--kubeconfig={}",
            launch
                .kubeconfig
                .as_ref()
                .unwrap_or(&env.kubeconfig)
                .display()
        ),
        format!("--namespace={ns}"),
        format!("--sts-endpoint={sts_endpoint}"),
        "--sts-region=us-east-1".into(),
        format!("--admin-addr=127.0.0.1:{admin_port}"),
    ];
    if !launch.discover_base_role_arn {
        args.push(format!("--base-role-arn={BASE_ROLE_ARN}"));
    }
    if !extra.iter().any(|a| a.starts_with("--lease-namespace")) {
        // Each test's replicas elect a leader among themselves only.
        args.push(format!("--lease-namespace={ns}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let aws_env = launch.aws_env.unwrap_or_else(|| {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDCONTROLLER000000".into()),
            ("AWS_SECRET_ACCESS_KEY", "controller-secret".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    });
    let child = match &launch.meta_volume {
        None => spawn_watched(&bin, &args, &log, &aws_env),
        Some(dir) => {
            // As a container: a private mount namespace with `dir` at /meta/aws-iam; `unshare`
            // and `sh` exec the controller, so the watchdog's child is the controller itself.
            std::fs::create_dir_all("/meta/aws-iam")
                .expect("create /meta/aws-iam mount point (run as root)");
            let mut wrapped = vec![
                "--mount".to_string(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                "mount --bind \"$0\" /meta/aws-iam && exec \"$@\"".into(),
                dir.display().to_string(),
                bin.display().to_string(),
            ];
            wrapped.extend(args);
            spawn_watched(Path::new("unshare"), &wrapped, &log, &aws_env)
        }
    };
    let b = Binary {
        child,
        admin_port,
        log,
    };
    b.wait_healthy().await;
    b
}
