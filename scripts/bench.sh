#!/usr/bin/env bash
# Prints benchmark numbers (release build): cold start of N AWSIAMRoles and a restart.
# Usage: scripts/bench.sh [ROLES]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
cargo build --locked --release --bins --examples
KAIC_BINARY="$PWD/target/release/kube-aws-iam-controller" exec cargo run --locked --release --example bench -- "$@"
