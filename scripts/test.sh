#!/usr/bin/env bash
# The whole test suite: installs (once, cached outside the repo) and starts everything the
# tests need, then runs formatting, lints and every test against the real local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
# Every process this run starts inherits the marker: the leftover check at the end looks for
# it, so a cluster someone else started from the same cached binaries is never taken for ours.
export KAIC_RUN_ID="${KAIC_RUN_ID:-test-$started-$$-$RANDOM}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Independent tool builds side by side; each is a cache hit after the first run.
bg() { local name=$1; shift; ( "$@" > "$work/$name" 2> "$work/$name.err"; echo $? > "$work/$name.rc" ) & echo $! > "$work/$name.pid"; }
wait_for_rc() { # the job's exit status, or 1 if it ended without writing one
  while [ ! -s "$work/$1.rc" ]; do
    if ! kill -0 "$(cat "$work/$1.pid")" 2>/dev/null && [ ! -s "$work/$1.rc" ]; then echo 1 > "$work/$1.rc"; fi
    sleep 1
  done
}
tool() { # the output of a background build, or its error and exit
  wait_for_rc "$1"
  if [ "$(cat "$work/$1.rc")" != 0 ]; then cat "$work/$1.err" >&2; echo "test.sh: $1 failed" >&2; exit 1; fi
  cat "$work/$1"
}
bg helm scripts/build-helm.sh
bg crane scripts/build-crane.sh
bg monitoring scripts/monitoring-crds.sh
bg imds scripts/build-imds-mock.sh
# The kubelet's volume code (same Go module cache as the control plane).
bg kubelet-volume scripts/build-kubelet-volume.sh
# The node's binaries (kubelet, scheduler, controller manager, containerd, runc, CNI, pause):
# about 16 min cold on 2 loaded cores, sharing the Go build cache with the control plane.
bg node nice -n 10 scripts/build-node.sh
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
KAIC_SDK_DIR=$(scripts/sdk-clients.sh)
KAIC_IMDS_MOCK=$(tool imds)
KAIC_HELM=$(tool helm)
KAIC_KUBELET_VOLUME=$(tool kubelet-volume)
tool crane >/dev/null
tool monitoring >/dev/null
export KAIC_CONTROL_PLANE_DIR KAIC_VENV KAIC_SDK_DIR KAIC_IMDS_MOCK KAIC_HELM KAIC_KUBELET_VOLUME
echo "test.sh: tools ready after $(( $(date +%s) - started ))s" >&2
# The image (a release musl build, target dir cached outside the repo) builds while the
# lints and the test build run.
bg image scripts/build-image.sh target/image
# The real node's app images (busybox, AWS CLI + boto3, the static Rust client): Debian and
# PyPI packages, and the Rust client in the image build's target dir (under its lock).
bg node-images nice -n 10 scripts/build-node-images.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked --examples
# Build every test binary first; then the SDK binary (minutes of wall time, mostly waiting for
# credentials to rotate) runs in the background while the other binaries run.
cargo test --locked --lib --tests --no-run
KAIC_IMAGE_DIR=$(tool image)
export KAIC_IMAGE_DIR
# Waited for last: the longest cold build, needed only by the tests themselves.
KAIC_NODE_DIR=$(tool node)
KAIC_NODE_IMAGES=$(tool node-images)
export KAIC_NODE_DIR KAIC_NODE_IMAGES
echo "test.sh: node binaries ready after $(( $(date +%s) - started ))s" >&2
echo "test.sh: image $(cat "$KAIC_IMAGE_DIR/digest") ready after $(( $(date +%s) - started ))s" >&2
others=(--lib)
for t in tests/*.rs; do
  name=$(basename "$t" .rs)
  case $name in sdk|node) ;; *) others+=(--test "$name") ;; esac
done
sdk_started=$(date +%s)
( cargo test --locked --test sdk >"$work/sdk.log" 2>&1; echo $? >"$work/sdk.rc"; echo "$(( $(date +%s) - sdk_started ))" >"$work/sdk.took" ) &
sdk_run=$!
# The real node (tests/node.rs, about 7 min, mostly waiting for the kubelet to bring rotated
# credentials into pods) beside them too; --nocapture: its scenarios print what they measured.
( cargo test --locked --test node -- --nocapture >"$work/node.log" 2>&1; echo $? >"$work/node.rc"; echo "$(( $(date +%s) - sdk_started ))" >"$work/node.took" ) &
node_run=$!
others_rc=0
cargo test --locked --no-fail-fast "${others[@]}" 2>&1 | tee "$work/others.log" || others_rc=$?
echo "test.sh: the other test binaries took $(( $(date +%s) - sdk_started ))s" >&2
wait "$sdk_run" || true
cat "$work/sdk.log"
sdk_rc=$(cat "$work/sdk.rc" 2>/dev/null || echo 1)
echo "test.sh: the SDK binary took $(cat "$work/sdk.took" 2>/dev/null || echo '?')s" >&2
wait "$node_run" || true
cat "$work/node.log"
node_rc=$(cat "$work/node.rc" 2>/dev/null || echo 1)
echo "test.sh: the real-node binary took $(cat "$work/node.took" 2>/dev/null || echo '?')s" >&2
count() { cat "$work/others.log" "$work/sdk.log" "$work/node.log" | awk -v w="$1" '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" w) n += $(i-1) } END { print n + 0 }'; }
passed=$(count passed)
failed=$(count failed)
if [ "$others_rc" != 0 ] || [ "$sdk_rc" != 0 ] || [ "$node_rc" != 0 ]; then
  echo "test.sh: tests failed (other binaries: exit $others_rc, sdk: exit $sdk_rc, node: exit $node_rc)" >&2
  echo "tests: $passed passed, $failed failed"
  exit 1
fi
# The README's first command must keep working too.
scripts/demo.sh
# Nothing the tests started may outlive them (the watchdogs end it within a few seconds).
sleep 3
left=$(scripts/leftovers.sh "$KAIC_RUN_ID")
if [ -n "$left" ]; then
  echo "test.sh: processes, cgroups or mounts left behind by the tests:" >&2
  echo "$left" >&2
  exit 1
fi
echo "test.sh: finished in $(( $(date +%s) - started ))s" >&2
echo "tests: $passed passed, $failed failed"
