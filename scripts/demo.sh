#!/usr/bin/env bash
# The main job on a local, self-contained setup (see examples/local_demo.rs).
# Builds/caches kube-apiserver, etcd and the Python tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
# Bins and examples in one build: the same dependency features as the tests (no rebuild).
cargo build --locked --bins --examples
exec cargo run --locked --example local_demo -- "$@"
