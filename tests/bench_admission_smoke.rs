//! The admission benchmark (examples/bench_admission.rs, run by scripts/bench-admission.sh) at
//! a small rate: pods go through the real API server to two replicas of the built binary, during
//! a CA rotation and a replica's rolling restart too. It must print its tables and meet the
//! targets that do not depend on the machine's speed: no failed admission in any step, the CA
//! rotated in its step only, and pods over the webhook's limit refused with its message.

#[path = "support/example.rs"]
mod example;

#[test]
fn the_admission_benchmark_fails_no_admission_at_ten_per_second_and_refuses_oversized_pods_clearly()
{
    // Latency and memory targets are for the release build on an idle machine
    // (scripts/bench-admission.sh): here, a debug build on a shared machine, they are widened;
    // the others are kept.
    let stdout = example::run_example(
        "bench_admission",
        &[
            "--rates=10",
            "--baseline-rates=10",
            "--step-secs=4",
            "--warmup-secs=2",
            "--fault-rate=10",
            "--target-rate=10",
            "--ca-overlap-secs=2",
            "--rotation-margin-secs=3",
            "--p99-target-ms=10000",
            "--rss-growth-target-mib=512",
        ],
    );
    for line in [
        "| measure | target | 10/s | 10/s, API server alone | 10/s, CA rotation | 10/s, leader restarts |",
        // The baseline's pods are not the webhook's: no target, and the same count sent.
        "| failed admissions | 0 | 0 ✓ | 0 | 0 ✓ | 0 ✓ |",
        "| p99 (ms, API server included) | ≤ 10000 at 10/s |",
        "| CA rotated in the step | in the rotation step only | no ✓ | no ✓ | yes ✓ | no ✓ |",
        "| replica RSS (VmRSS, MiB) | after the warm-up | at the end |",
        "- 5 %: 50 containers + 5 init, 100 vars each, 55 volumes",
        "the old CA out of the caBundle at",
        "(the leader) restarted: SIGTERM",
        "bench-admission: every target met",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    // Both pods over the limit (one past the server's former 2 MiB body limit) get the
    // webhook's refusal through the API server, with the limit in it.
    let refusals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| 1.2 MiB pod |") || l.starts_with("| 2.5 MiB pod |"))
        .collect();
    assert_eq!(refusals.len(), 2, "{stdout}");
    for l in refusals {
        assert!(
            l.contains(
                "denied the request: the pod is too large for the kube-aws-iam-controller webhook"
            ) && l.contains("at most 1024 KiB are admitted")
                && l.ends_with("✓ |"),
            "{l}"
        );
    }
}
