//! Runs a benchmark example as the suite's smoke tests do (tests/bench_smoke.rs,
//! tests/bench_admission_smoke.rs). Standalone, std only: included with `#[path]` by those tests,
//! which need nothing else of the harness.

use std::path::Path;
use std::process::Command;

/// Builds the example `name` (debug), runs it with `args` against the controller binary under
/// test (`KAIC_BINARY`), and returns what it printed; panics with both streams unless it
/// exited 0.
pub fn run_example(name: &str, args: &[&str]) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--locked", "--example", name])
        .current_dir(repo)
        .status()
        .unwrap_or_else(|e| panic!("cargo build --example {name}: {e}"));
    assert!(built.success(), "cargo build --example {name} failed");
    let out = Command::new(repo.join("target/debug/examples").join(name))
        .args(args)
        .env("KAIC_BINARY", env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .output()
        .unwrap_or_else(|e| panic!("run the example {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}
