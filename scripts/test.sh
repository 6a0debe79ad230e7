#!/usr/bin/env bash
# The whole test suite: installs (once, cached outside the repo) and starts everything the
# tests need, then runs formatting, lints and every test against the real local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
tools=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$log" "$tools"' EXIT
# Independent tool builds side by side; each is a cache hit after the first run.
bg() { local name=$1; shift; ( "$@" > "$tools/$name" 2> "$tools/$name.err"; echo $? > "$tools/$name.rc" ) & }
tool() { # the output of a background build, or its error and exit
  wait_for_rc "$1"
  if [ "$(cat "$tools/$1.rc")" != 0 ]; then cat "$tools/$1.err" >&2; echo "test.sh: $1 failed" >&2; exit 1; fi
  cat "$tools/$1"
}
wait_for_rc() { while [ ! -s "$tools/$1.rc" ]; do sleep 1; done; }
bg helm scripts/build-helm.sh
bg crane scripts/build-crane.sh
bg monitoring scripts/monitoring-crds.sh
bg imds scripts/build-imds-mock.sh
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
KAIC_SDK_DIR=$(scripts/sdk-clients.sh)
KAIC_IMDS_MOCK=$(tool imds)
KAIC_HELM=$(tool helm)
tool crane >/dev/null
tool monitoring >/dev/null
export KAIC_CONTROL_PLANE_DIR KAIC_VENV KAIC_SDK_DIR KAIC_IMDS_MOCK KAIC_HELM
echo "test.sh: tools ready after $(( $(date +%s) - started ))s" >&2
# The image (a release musl build, target dir cached outside the repo) builds while the
# lints and the test build run.
bg image scripts/build-image.sh target/image
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked --examples
KAIC_IMAGE_DIR=$(tool image)
export KAIC_IMAGE_DIR
echo "test.sh: image $(cat "$KAIC_IMAGE_DIR/digest") ready after $(( $(date +%s) - started ))s" >&2
cargo test --locked --lib --tests 2>&1 | tee "$log"
count() { awk -v w="$1" '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" w) n += $(i-1) } END { print n + 0 }' "$log"; }
passed=$(count passed)
failed=$(count failed)
# The README's first command must keep working too.
scripts/demo.sh
# Nothing the tests started may outlive them (the watchdogs end it within a few seconds).
sleep 3
left=$(pgrep -af "$KAIC_CONTROL_PLANE_DIR/|moto_server|ec2-metadata-mock|$PWD/target/[a-z]+/kube-aws-iam-controller" | grep -v pgrep || true)
if [ -n "$left" ]; then
  echo "test.sh: processes left running after the tests:" >&2
  echo "$left" >&2
  exit 1
fi
echo "test.sh: finished in $(( $(date +%s) - started ))s" >&2
echo "tests: $passed passed, $failed failed"
