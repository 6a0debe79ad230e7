#!/usr/bin/env bash
# Prints how the controller's cost grows with the number of AWSIAMRoles (targets P1–P5 and a
# restart), as one Markdown table; exits 1 when a target is missed. Runs the binary the image
# ships (the static musl release build of scripts/build-image.sh) against the local control
# plane and the STS test double; the harness is a release build too. docs/performance.md
# explains every line.
# Usage: scripts/bench.sh [--sizes 100,1000,2000,10000] [--sts-latency-ms 50] [... see --help]
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
image=$(mktemp -d)
trap 'rm -rf "$image"' EXIT
scripts/build-image.sh "$image" >/dev/null
binary="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}/image-build/target/x86_64-unknown-linux-musl/release/kube-aws-iam-controller"
cargo build --locked --release --example bench
KAIC_BINARY="$binary" target/release/examples/bench "$@"
