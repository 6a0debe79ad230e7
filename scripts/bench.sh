#!/usr/bin/env bash
# Prints how the controller's cost grows with the number of AWSIAMRoles (targets P1–P5 and a
# restart), as one Markdown table; exits 1 when a target is missed. Release build, against the
# local control plane and the STS test double. docs/performance.md explains every line.
# Usage: scripts/bench.sh [--sizes 100,1000,2000,10000] [--sts-latency-ms 50] [... see --help]
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
cargo build --locked --release --bins --examples
KAIC_BINARY="$PWD/target/release/kube-aws-iam-controller" exec target/release/examples/bench "$@"
