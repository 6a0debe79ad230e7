#!/usr/bin/env bash
# Creates (once) the Python virtual environment with moto's STS server, boto3 and
# the AWS CLI v1, pinned by tests/python/requirements.txt, in a cache outside the
# repo keyed by the requirements' hash. Prints the venv directory.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
req="$here/tests/python/requirements.txt"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
key=$(sha256sum "$req" | cut -c1-16)
VENV="$CACHE/venv/$key"
if [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/aws" ] && [ -f "$VENV/.complete" ]; then
  echo "$VENV"; exit 0
fi
command -v python3 >/dev/null || { echo "python-env: python3 is required" >&2; exit 1; }
echo "python-env: creating $VENV" >&2
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" >&2
"$VENV/bin/pip" check >&2
touch "$VENV/.complete"
echo "$VENV"
