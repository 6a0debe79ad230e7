#!/usr/bin/env bash
# Builds amazon-ec2-metadata-mock (the AWS project's EC2 instance metadata mock) from the Go
# module proxy into a cache outside the repo, keyed by version. A second run with the same
# version is a cache hit. The IMDS tests (tests/imds.rs) run it on 127.0.0.1.
#
# Usage: scripts/build-imds-mock.sh        (prints the path of the binary)
# Env:   IMDS_MOCK_VERSION (default v1.13.0), KAIC_CACHE (default ~/.cache/kube-aws-iam-controller)
set -euo pipefail

IMDS_MOCK_VERSION="${IMDS_MOCK_VERSION:-v1.13.0}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
OUT="$CACHE/imds-mock/$IMDS_MOCK_VERSION"
BIN="$OUT/ec2-metadata-mock"

if "$BIN" --version >/dev/null 2>&1; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "build-imds-mock: Go is required (go.mod of the mock asks for >= 1.23)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "build-imds-mock: building amazon-ec2-metadata-mock $IMDS_MOCK_VERSION into $OUT" >&2
# `go install pkg@version` builds with the mock's own go.mod and go.sum (its pinned dependencies).
GOBIN="$work" go install -trimpath -ldflags "-s -w" \
  "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$IMDS_MOCK_VERSION" >&2
mv "$work/ec2-metadata-mock" "$BIN"
"$BIN" --version >/dev/null 2>&1 || { echo "build-imds-mock: the built binary does not run" >&2; exit 1; }
echo "$BIN"
