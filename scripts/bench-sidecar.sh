#!/usr/bin/env bash
# Prints what the endpoint mode's sidecar (`serve-credentials`, docs/webhook.md) costs a pod, as
# one Markdown table: its memory after start and after serving requests (target: at most
# 5 MiB RSS), its threads, the startup probe's peak, the time per request, and the image it
# pulls (the controller's own image: one layer, shared by every sidecar and the controller on
# a node). Runs the binary the image ships (the static musl release build of
# scripts/build-image.sh) on a credentials directory laid out like a Secret volume.
# Usage: scripts/bench-sidecar.sh [REQUESTS]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-2000}"
venv=$(scripts/python-env.sh)
image=$(mktemp -d)
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$image" "$work"; }
trap cleanup EXIT
scripts/build-image.sh "$image" >/dev/null
binary="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}/image-build/target/x86_64-unknown-linux-musl/release/kube-aws-iam-controller"

# A Secret volume as the kubelet lays it out: ..data -> a version directory, keys through it.
vol="$work/volume"
mkdir -p "$vol/..2026_12_04_00_00_00.1" "$work/token"
expiration=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
printf '{"Version":1,"AccessKeyId":"ASIABENCHMARK0000001","SecretAccessKey":"%s","SessionToken":"%s","Expiration":"%s"}' \
  "$(head -c 30 /dev/urandom | base64)" "$(head -c 600 /dev/urandom | base64 -w0)" "$expiration" \
  > "$vol/..2026_12_04_00_00_00.1/credentials.json"
ln -s ..2026_12_04_00_00_00.1 "$vol/..data"
ln -s ..data/credentials.json "$vol/credentials.json"
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$binary" serve-credentials --dir="$vol" --listen="127.0.0.1:$port" --token-file="$work/token/token" \
  2>"$work/sidecar.log" &
pid=$!
for _ in $(seq 1 100); do
  "$binary" serve-credentials --probe --listen="127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.05
done
"$binary" serve-credentials --probe --listen="127.0.0.1:$port" >/dev/null
status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
kib() { awk -v k="$1" 'BEGIN {printf "%.2f MiB (%d KiB)", k / 1024, k}'; }
rss_start=$(status VmRSS)
anon_start=$(status RssAnon)

# Requests over one connection each (as an SDK makes them), then the peak.
token=$(cat "$work/token/token")
for _ in $(seq 1 "$requests"); do
  printf 'url = "http://127.0.0.1:%s/v1/credentials"\noutput = "/dev/null"\n' "$port"
done > "$work/curl.cfg"
start_ns=$(date +%s%N)
curl -sf --fail-early -K "$work/curl.cfg" -H "Authorization: $token" -H 'Connection: close'
took_ns=$(( $(date +%s%N) - start_ns ))
rss_after=$(status VmRSS)
hwm=$(status VmHWM)
anon_after=$(status RssAnon)
file_after=$(status RssFile)
threads=$(status Threads)

# The startup probe is a short-lived process of the same binary (exec probe): its peak.
probe_kib=$( { /usr/bin/time -f '%M' "$binary" serve-credentials --probe --listen="127.0.0.1:$port" >/dev/null; } 2>&1 | tail -1)

binary_bytes=$(stat -c %s "$binary")
read -r layers compressed < <("$venv/bin/python" - "$image/oci" <<'EOF'
import json, os, sys
oci = sys.argv[1]
blob = lambda d: os.path.join(oci, "blobs", *d.split(":"))
index = json.load(open(os.path.join(oci, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
if "manifests" in manifest:  # an index of one platform
    manifest = json.load(open(blob(manifest["manifests"][0]["digest"])))
print(len(manifest["layers"]), sum(l["size"] for l in manifest["layers"]))
EOF
)

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB (%d bytes)", b / 1048576, b}'; }
cat <<EOF
| serve-credentials ($(cat "$image/digest")) | measured |
|---|---|
| RSS after start (VmRSS) | $(kib "$rss_start"), of which private (RssAnon) $(kib "$anon_start") |
| RSS after $requests requests (VmRSS) | $(kib "$rss_after"): private $(kib "$anon_after"), file-backed (shared page cache of the binary) $(kib "$file_after") |
| answer without the token | $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/credentials") |
| peak RSS (VmHWM) | $(kib "$hwm") |
| threads | $threads |
| time per request (curl, a new connection each) | $(awk -v t="$took_ns" -v n="$requests" 'BEGIN {printf "%.2f ms", t / n / 1e6}') |
| startup probe process, peak RSS | $(kib "$probe_kib") |
| image: layers, compressed size | $layers, $(mib "$compressed") |
| binary | $(mib "$binary_bytes") |
EOF
