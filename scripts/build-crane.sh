#!/usr/bin/env bash
# Builds go-containerregistry's crane from the Go module proxy into a cache outside the repo,
# keyed by version. A second run with the same version is a cache hit.
#
# Usage: scripts/build-crane.sh        (prints the path of the crane binary)
# Env:   CRANE_VERSION (default v0.22.1), KAIC_CACHE (default ~/.cache/kube-aws-iam-controller)
set -euo pipefail

CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
OUT="$CACHE/crane/$CRANE_VERSION"

ok() { "$OUT/crane" version 2>/dev/null | grep -qF "${CRANE_VERSION#v}"; }
if ok; then echo "$OUT/crane"; exit 0; fi

command -v go >/dev/null || { echo "build-crane: Go >= 1.26 is required" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$OUT"
echo "build-crane: building crane $CRANE_VERSION into $OUT" >&2
ldflags="-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION"
GOBIN="$OUT" go install -trimpath -ldflags "$ldflags" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2
ok || { echo "build-crane: built crane does not report $CRANE_VERSION" >&2; exit 1; }
echo "$OUT/crane"
