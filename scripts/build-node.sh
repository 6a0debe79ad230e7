#!/usr/bin/env bash
# Builds everything a real single-node cluster needs, from the Go module proxy and Debian's gcc,
# into a cache outside the repo keyed by the versions (a second run is a cache hit):
#   kubelet, kube-scheduler, kube-controller-manager,  k8s.io/kubernetes (same technique and
#   kube-proxy                                         ldflags as build-control-plane.sh)
#   containerd, containerd-shim-runc-v2, ctr           github.com/containerd/containerd/v2
#   runc                                               github.com/opencontainers/runc (cgo, seccomp tag:
#                                                      Debian's libseccomp-dev; the chart asks for
#                                                      the RuntimeDefault seccomp profile)
#   cni/{bridge,host-local,loopback,portmap}           github.com/containernetworking/plugins
#   pause                                              build/pause/linux/pause.c of the kubernetes module, gcc -static
#   iptables/ (iptables-nft and its libraries)         Debian's packages (apt-get download), for kube-proxy
#
# Usage: scripts/build-node.sh       (prints the directory holding the binaries)
# Env:   KUBE_VERSION (v1.37.2), CONTAINERD_VERSION (v2.4.2), RUNC_VERSION (v1.5.3),
#        CNI_VERSION (v1.10.0), KAIC_CACHE (default ~/.cache/kube-aws-iam-controller)
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.5.3}"
CNI_VERSION="${CNI_VERSION:-v1.10.0}"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"

OUT="$CACHE/node/k8s-$KUBE_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_VERSION"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
CNI_PLUGINS=(bridge host-local loopback portmap)

IPTABLES_DEBS=(iptables libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0 libnftnl11 libmnl0)

cni_ok() { for p in "${CNI_PLUGINS[@]}"; do [ -x "$OUT/cni/$p" ] || return 1; done; }
iptables_ok() { LD_LIBRARY_PATH="$OUT/iptables/lib" "$OUT/iptables/bin/iptables" --version >/dev/null 2>&1; }
ok() { # every binary present, and the ones that can say so report a version
  [ -x "$OUT/pause" ] || return 1
  cni_ok || return 1
  iptables_ok || return 1
  "$OUT/kube-proxy" --version >/dev/null 2>&1 || return 1
  [ -x "$OUT/containerd-shim-runc-v2" ] || return 1
  "$OUT/kubelet" --version >/dev/null 2>&1 && "$OUT/kube-scheduler" --version >/dev/null 2>&1 \
    && "$OUT/kube-controller-manager" --version >/dev/null 2>&1 \
    && "$OUT/containerd" --version >/dev/null 2>&1 && "$OUT/ctr" --version >/dev/null 2>&1 \
    && runc_ok
}
runc_ok() { "$OUT/runc" --version 2>/dev/null | grep -q '^libseccomp:'; }
if ok; then echo "$OUT"; exit 0; fi
# One build at a time per cache (clones share it); the one that waited finds it done.
mkdir -p "$CACHE/node"
exec 9>"$CACHE/node/build.lock"
flock 9
if ok; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { echo "build-node: Go >= 1.26 is required" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build-node: gcc is required (for runc and pause)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$OUT/cni"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
step() { echo "build-node: $* ($(( $(date +%s) - started ))s)" >&2; }

# Kubernetes: a throw-away module requiring k8s.io/kubernetes, every staging module replaced by
# its published version (see build-control-plane.sh). CGO_ENABLED=0 shares the Go build cache
# with the control plane's build.
mkdir "$work/kube" && cd "$work/kube"
step "building kubelet, kube-scheduler, kube-controller-manager $KUBE_VERSION into $OUT (cold: about 10 min of CPU)"
gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "build-node: cannot fetch k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
go mod init kaic-node-build >/dev/null 2>&1
{
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo "replace ("
  grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
  echo "tool ("
  echo "  k8s.io/kubernetes/cmd/kubelet"
  echo "  k8s.io/kubernetes/cmd/kube-scheduler"
  echo "  k8s.io/kubernetes/cmd/kube-controller-manager"
  echo "  k8s.io/kubernetes/cmd/kube-proxy"
  echo ")"
} >> go.mod
go mod tidy >&2
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
for cmd in kubelet kube-scheduler kube-controller-manager kube-proxy; do
  "$OUT/$cmd" --version >/dev/null 2>&1 && continue
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
  mv "$OUT/$cmd.tmp" "$OUT/$cmd"
  step "$cmd built"
done

# pause: the C program from the kubernetes module, static.
pause_c="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION/build/pause/linux/pause.c"
gcc -Os -Wall -Werror -static -DVERSION="kaic-$KUBE_VERSION" -o "$OUT/pause.tmp" "$pause_c"
mv "$OUT/pause.tmp" "$OUT/pause"

# containerd: no replace directives, so `go build pkg@version` in a scratch module works.
if ! { "$OUT/containerd" --version && "$OUT/ctr" --version && [ -x "$OUT/containerd-shim-runc-v2" ]; } >/dev/null 2>&1; then
mkdir "$work/containerd" && cd "$work/containerd"
go mod init kaic-containerd-build >/dev/null 2>&1
go get "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" >&2
cver="github.com/containerd/containerd/v2/version"
for cmd in containerd containerd-shim-runc-v2 ctr; do
  CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $cver.Version=$CONTAINERD_VERSION -X $cver.Package=github.com/containerd/containerd/v2" \
    -o "$OUT/$cmd.tmp" "github.com/containerd/containerd/v2/cmd/$cmd" >&2
  mv "$OUT/$cmd.tmp" "$OUT/$cmd"
done
step "containerd built"
fi

# runc: needs cgo (nsenter) and, for seccomp profiles, libseccomp (linked dynamically: Debian's
# libseccomp2 is part of every install, apt depends on it).
if ! runc_ok; then
if ! [ -f /usr/include/seccomp.h ] || ! command -v pkg-config >/dev/null; then
  echo "build-node: installing libseccomp-dev and pkg-config (for runc's seccomp support)" >&2
  apt-get install -y -qq libseccomp-dev pkg-config >&2 || { apt-get update -qq >&2 && apt-get install -y -qq libseccomp-dev pkg-config >&2; }
fi
mkdir "$work/runc" && cd "$work/runc"
go mod init kaic-runc-build >/dev/null 2>&1
go get "github.com/opencontainers/runc@$RUNC_VERSION" >&2
CGO_ENABLED=1 go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" \
  -o "$OUT/runc.tmp" github.com/opencontainers/runc >&2
mv "$OUT/runc.tmp" "$OUT/runc"
step "runc built"
fi

# CNI plugins.
if ! cni_ok; then
mkdir "$work/cni" && cd "$work/cni"
go mod init kaic-cni-build >/dev/null 2>&1
go get "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_VERSION" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_VERSION" \
  "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_VERSION" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_VERSION" >&2
for p in "${CNI_PLUGINS[@]}"; do
  case $p in host-local) dir=ipam/host-local ;; portmap) dir=meta/portmap ;; *) dir=main/$p ;; esac
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/cni/$p.tmp" "github.com/containernetworking/plugins/plugins/$dir" >&2
  mv "$OUT/cni/$p.tmp" "$OUT/cni/$p"
done
step "CNI plugins built"
fi

# iptables for kube-proxy, from Debian's packages (the multi-call binary runs as iptables,
# iptables-save, iptables-restore, ip6tables...; nf_tables backend, rules per network namespace).
if ! iptables_ok; then
  mkdir -p "$work/debs" && cd "$work/debs"
  apt-get download "${IPTABLES_DEBS[@]}" >&2 2>/dev/null || { apt-get update -qq >&2 && apt-get download "${IPTABLES_DEBS[@]}" >&2; }
  for d in ./*.deb; do dpkg-deb -x "$d" "$work/debs/root"; done
  rm -rf "$OUT/iptables" && mkdir -p "$OUT/iptables/bin" "$OUT/iptables/lib"
  cp -a "$work/debs/root/usr/lib/x86_64-linux-gnu/." "$OUT/iptables/lib/"
  cp "$work/debs/root/usr/sbin/xtables-nft-multi" "$OUT/iptables/bin/"
  for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$OUT/iptables/bin/$n"
  done
  step "iptables from Debian unpacked"
fi

ok || { echo "build-node: built binaries do not run" >&2; exit 1; }
step "done"
echo "$OUT"
