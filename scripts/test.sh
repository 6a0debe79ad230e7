#!/usr/bin/env bash
# The whole test suite: installs (once, cached outside the repo) and starts everything the
# tests need, then runs formatting, lints and every test against the real local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
KAIC_CONTROL_PLANE_DIR=$(scripts/build-control-plane.sh)
KAIC_VENV=$(scripts/python-env.sh)
KAIC_SDK_DIR=$(scripts/sdk-clients.sh)
KAIC_IMDS_MOCK=$(scripts/build-imds-mock.sh)
export KAIC_CONTROL_PLANE_DIR KAIC_VENV KAIC_SDK_DIR KAIC_IMDS_MOCK
echo "test.sh: tools ready after $(( $(date +%s) - started ))s" >&2
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked --examples
log=$(mktemp)
trap 'rm -f "$log"' EXIT
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
