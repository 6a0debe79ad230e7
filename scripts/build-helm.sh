#!/usr/bin/env bash
# Builds Helm from the Go module proxy into a cache outside the repo, keyed by version.
# A second run with the same version is a cache hit.
#
# Usage: scripts/build-helm.sh        (prints the path of the helm binary)
# Env:   HELM_VERSION (default v4.3.2), KAIC_CACHE (default ~/.cache/kube-aws-iam-controller)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
OUT="$CACHE/helm/$HELM_VERSION"
major="${HELM_VERSION%%.*}"

ok() { "$OUT/helm" version --short 2>/dev/null | grep -qF "$HELM_VERSION"; }
if ok; then echo "$OUT/helm"; exit 0; fi

command -v go >/dev/null || { echo "build-helm: Go >= 1.26 is required" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$OUT"
echo "build-helm: building helm $HELM_VERSION into $OUT (cold: a few minutes on 2 cores)" >&2
ldflags="-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION"
GOBIN="$OUT" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" >&2
ok || { echo "build-helm: built helm does not report $HELM_VERSION" >&2; exit 1; }
echo "$OUT/helm"
