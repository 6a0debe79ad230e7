//! What the benchmarks (examples/bench.rs, examples/bench_admission.rs) share: quantiles and a
//! process's RSS. Their smoke tests share `example.rs`.

use super::*;

/// The `q` quantile of sorted values (nearest rank); NaN for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The controller process's resident memory (VmRSS, bytes); NaN once it is gone.
pub fn rss_bytes(bin: &Binary) -> f64 {
    let status = bin
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib * 1024.0)
}
