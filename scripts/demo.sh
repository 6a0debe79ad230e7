#!/usr/bin/env bash
# The main job on a local, self-contained setup (see examples/local_demo.rs): by default on a
# real single-node cluster; with --api-only or --keep, or where a node cannot run or be built,
# against the API server alone.
# Builds/caches kube-apiserver, etcd and the Python tools on first use; for the node also its
# binaries (scripts/build-node.sh, about 22 min on first use), the controller's image and the
# app images.
set -euo pipefail
cd "$(dirname "$0")/.."
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV
case " $* " in
  *" --api-only "*|*" --keep "*) unset KAIC_NODE_DIR ;;
  *)
    if KAIC_NODE_DIR=$(scripts/build-node.sh) && KAIC_HELM=$(scripts/build-helm.sh) \
      && KAIC_IMAGE_DIR=$(scripts/build-image.sh target/image) \
      && KAIC_NODE_IMAGES=$(scripts/build-node-images.sh); then
      export KAIC_NODE_DIR KAIC_HELM KAIC_IMAGE_DIR KAIC_NODE_IMAGES
    else
      echo "demo: the node's parts could not be built here (see above)" >&2
      unset KAIC_NODE_DIR
    fi
    ;;
esac
# Bins and examples in one build: the same dependency features as the tests (no rebuild).
cargo build --locked --bins --examples
exec cargo run --locked --example local_demo -- "$@"
