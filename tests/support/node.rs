//! The parts of a real cluster beyond the API server, from scripts/build-node.sh (test.sh passes
//! KAIC_NODE_DIR): today kube-controller-manager running the garbage collector against the
//! binary's local control plane, under the harness's watchdog.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tokio::sync::OnceCell;

use super::{Env, spawn_watched};

/// The directory of the node's binaries (scripts/build-node.sh, cached by version).
pub fn node_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(p) = std::env::var_os("KAIC_NODE_DIR") {
            return PathBuf::from(p);
        }
        let out = Command::new(super::repo().join("scripts/build-node.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/build-node.sh runs");
        assert!(
            out.status.success(),
            "scripts/build-node.sh failed (or run the README's test command, which builds it)"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

static GC: OnceCell<PathBuf> = OnceCell::const_new();

/// Starts kube-controller-manager with the garbage collector only (once per test binary) and
/// waits until it has synced its caches; returns its log. It stops with the test binary (the
/// watchdog ends it by PID).
pub async fn garbage_collector(env: &'static Env) -> &'static PathBuf {
    GC.get_or_init(|| async move {
        let bin = node_dir().join("kube-controller-manager");
        let log = env.dir.join("kube-controller-manager.log");
        spawn_watched(
            &bin,
            &[
                format!("--kubeconfig={}", env.kubeconfig.display()),
                "--controllers=garbage-collector-controller".into(),
                "--leader-elect=false".into(),
                // No serving endpoint: nothing scrapes it, and no port to pick.
                "--secure-port=0".into(),
                "--concurrent-gc-syncs=5".into(),
                "-v=2".into(),
            ],
            &log,
            &[],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Garbage collector: all resource monitors have synced")
                || text.contains("not all resource monitors could be synced")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kube-controller-manager's garbage collector did not sync within 120 s:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        log
    })
    .await
}
