#!/usr/bin/env bash
# Prints the admission webhook's latency and errors under load (issue 24), as Markdown tables:
# pods created through the local API server (server-side dry run, the whole admission path) at
# rising rates, answered by two replicas of the binary the image ships (the static musl release
# build of scripts/build-image.sh), then at 100/s during a CA rotation and during a rolling
# restart of a replica; the replicas' RSS growth; pods over the webhook's size limit. Exits 1
# when a target is missed. The harness is a release build too. docs/performance.md explains
# every line.
# Usage: scripts/bench-admission.sh [--rates 25,50,100,200] [--step-secs 20] [... see --help]
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
image=$(mktemp -d)
trap 'rm -rf "$image"' EXIT
scripts/build-image.sh "$image" >/dev/null
binary="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}/image-build/target/x86_64-unknown-linux-musl/release/kube-aws-iam-controller"
cargo build --locked --release --example bench_admission
KAIC_BINARY="$binary" target/release/examples/bench_admission "$@"
