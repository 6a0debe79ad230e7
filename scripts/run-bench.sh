#!/usr/bin/env bash
# Runs the benchmark example $1 (examples/$1.rs, a release build) with the rest of the arguments
# against the binary the image ships (the static musl release build of scripts/build-image.sh)
# and the local control plane, which it builds if needed. Shared by scripts/bench.sh and
# scripts/bench-admission.sh.
# Usage: scripts/run-bench.sh bench|bench_admission [FLAGS]
set -euo pipefail
cd "$(dirname "$0")/.."
example=$1
shift
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
image=$(mktemp -d)
trap 'rm -rf "$image"' EXIT
scripts/build-image.sh "$image" >/dev/null
binary="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}/image-build/target/x86_64-unknown-linux-musl/release/kube-aws-iam-controller"
cargo build --locked --release --example "$example"
KAIC_BINARY="$binary" "target/release/examples/$example" "$@"
