//! Helm (scripts/build-helm.sh) run on the chart, with its own cache and config directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const CHART: &str = "charts/kube-aws-iam-controller";

/// The helm binary (scripts/build-helm.sh, cached by version; test.sh passes KAIC_HELM).
pub fn helm_path() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(p) = std::env::var_os("KAIC_HELM") {
            return PathBuf::from(p);
        }
        let out = Command::new(super::repo().join("scripts/build-helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/build-helm.sh runs");
        assert!(out.status.success(), "scripts/build-helm.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Helm with its cache, config and data in a private directory (nothing from the user's).
pub fn helm(args: &[&str]) -> Output {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("helm home"));
    Command::new(helm_path())
        .args(args)
        .current_dir(super::repo())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("helm runs")
}

pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart as release `release` in `ns` with extra arguments.
pub fn template(release: &str, ns: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", release, CHART, "--namespace", ns];
    args.extend_from_slice(extra);
    helm_ok(&args)
}
