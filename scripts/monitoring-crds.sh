#!/usr/bin/env bash
# The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, taken from its Go module
# (the Go module proxy) into a cache outside the repo, keyed by version; the chart tests install
# them so the chart's monitoring objects are checked by the real API server.
#
# Usage: scripts/monitoring-crds.sh     (prints the directory holding the two CRD files)
# Env:   PROMETHEUS_OPERATOR_VERSION (default v0.85.0), KAIC_CACHE
set -euo pipefail
VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
OUT="$CACHE/monitoring-crds/$VERSION"
files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
if [ -s "$OUT/${files[0]}" ] && [ -s "$OUT/${files[1]}" ]; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || { echo "monitoring-crds: Go is required" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$(cd "$work" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$dir" ] || { echo "monitoring-crds: cannot fetch prometheus-operator $VERSION" >&2; exit 1; }
mkdir -p "$OUT"
for f in "${files[@]}"; do cp "$dir/example/prometheus-operator-crd/$f" "$OUT/$f.tmp"; mv "$OUT/$f.tmp" "$OUT/$f"; done
echo "$OUT"
