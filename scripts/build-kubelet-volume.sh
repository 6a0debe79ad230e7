#!/usr/bin/env bash
# Builds tests/kubelet-volume (a Secret volume laid out by the kubelet's own code) from the Go
# module proxy into a cache outside the repo, keyed by the Kubernetes version and the source.
# A second run with the same key is a cache hit. Same technique as build-control-plane.sh: a
# throw-away module requiring k8s.io/kubernetes with every staging module replaced by its
# published version.
#
# Usage: scripts/build-kubelet-volume.sh       (prints the path of the binary)
# Env:   KUBE_VERSION (default v1.37.2), KAIC_CACHE (default ~/.cache/kube-aws-iam-controller)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
key=$(cat "$here/tests/kubelet-volume/main.go" "$0" | sha256sum | cut -c1-12)
OUT="$CACHE/kubelet-volume/$KUBE_VERSION-$key"
BIN="$OUT/kubelet-volume"

if [ -x "$BIN" ] && "$BIN" --help >/dev/null 2>&1; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "build-kubelet-volume: Go >= 1.26 is required" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-kubelet-volume: building against k8s.io/kubernetes $KUBE_VERSION into $OUT" >&2
gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "build-kubelet-volume: cannot fetch k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
go mod init kaic-kubelet-volume >/dev/null 2>&1
{
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo "replace ("
  grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} >> go.mod
cp "$here/tests/kubelet-volume/main.go" .
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" . >&2
mv "$BIN.tmp" "$BIN"
"$BIN" --help >/dev/null 2>&1 || { echo "build-kubelet-volume: the built binary does not run" >&2; exit 1; }
echo "$BIN"
