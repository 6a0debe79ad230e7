#!/usr/bin/env bash
# Builds the app images the real-node tests run, from registry packages only (Debian packages
# through apt-get download, PyPI, crates.io), as OCI archives that
# `ctr -n k8s.io images import FILE` imports under their own names (index.json annotations):
#   busybox.tar      Debian's busybox-static: /bin/busybox and a link per applet in /bin, /tmp,
#                    user 65532. The shell and `cat` that `credential_process` runs.
#   awscli.tar       Debian's python3.11 with the libraries it needs, busybox-static, and the AWS
#                    CLI v1 and boto3 from PyPI at the pins of tests/python/requirements.txt:
#                    `aws` and `python3` on PATH.
#   rust-client.tar  examples/sdk_rust_client.rs as a static musl binary, CA roots and user
#                    65532; entrypoint the binary; no shell, no `cat`.
#   images.env       BUSYBOX_IMAGE=, AWSCLI_IMAGE=, RUST_CLIENT_IMAGE=: the names pods use
#                    (imagePullPolicy: Never).
# Each new build runs every image in a chroot (busybox, `aws` and boto3 through
# `credential_process`, the Rust client) against a local moto STS before it is kept.
#
# Usage: scripts/build-node-images.sh        (prints the directory holding the files above)
#   Import:  ctr -n k8s.io images import DIR/busybox.tar   (and awscli.tar, rust-client.tar);
#            pods name them as images.env says.
#   The controller's image (scripts/build-image.sh OUT writes an OCI layout, OUT/oci) has no
#   name in its index.json; name it at import:
#     tar -C OUT/oci -cf - . | ctr -n k8s.io images import --index-name kaic.local/kube-aws-iam-controller:VERSION -
# Env:   KAIC_CACHE (default ~/.cache/kube-aws-iam-controller). The directory's key holds the
#   PyPI pins, a hash of the repo's inputs (this script, the Rust sources, the requirements)
#   and of the state of apt's package lists (Debian versions are the candidates apt sees);
#   each image is also cached on its own, so a change of the Rust sources rebuilds only the
#   Rust client. The Rust client builds in scripts/build-image.sh's target dir, under its lock
#   and with its environment, so the two share every dependency.
set -euo pipefail
# The environment build-image.sh builds in (see there): Cargo's fingerprints must match its.
if [ -z "${KAIC_IMAGE_CLEAN_ENV:-}" ]; then
  exec env -i KAIC_IMAGE_CLEAN_ENV=1 PATH="$PATH" HOME="$HOME" \
    ${KAIC_CACHE:+KAIC_CACHE="$KAIC_CACHE"} ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} \
    ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} "$0" "$@"
fi
cd "$(dirname "$0")/.."
repo=$PWD
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
req=tests/python/requirements.txt
pin() { sed -n "s/^$1==//p" "$req"; }
AWSCLI_VERSION=$(pin awscli)
BOTO3_VERSION=$(pin boto3)
[ -n "$AWSCLI_VERSION" ] && [ -n "$BOTO3_VERSION" ] || { echo "build-node-images: awscli or boto3 not pinned in $req" >&2; exit 1; }
TARGET=x86_64-unknown-linux-musl
# Fixed file times in every layer: the same inputs give the same archives.
EPOCH=946684800

mapfile -t rust_inputs < <(printf '%s\n' Cargo.toml Cargo.lock rust-toolchain.toml; find src -type f | LC_ALL=C sort)
hash16() { sha256sum | cut -c1-16; }
self_hash=$(cat scripts/build-node-images.sh scripts/build-crane.sh scripts/sync-tree.sh | hash16)
rust_hash=$(sha256sum examples/sdk_rust_client.rs "${rust_inputs[@]}" | hash16)
apt_state=$(stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | hash16 || true)
key="awscli-$AWSCLI_VERSION-boto3-$BOTO3_VERSION-$(printf '%s\n' "$self_hash" "$rust_hash" "$apt_state" "$(sha256sum "$req")" | hash16)"
OUT="$CACHE/node-images/$key"
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }

mkdir -p "$CACHE/node-images/parts" "$CACHE/node-images/debs"
exec 9>>"$CACHE/node-images/build.lock"
flock 9
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }

started=$(date +%s)
step() { echo "build-node-images: $* ($(( $(date +%s) - started ))s)" >&2; }
work=$(mktemp -d)
registry_pid=
moto_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
venv=$(scripts/python-env.sh)
py="$venv/bin/python"
crane=$(scripts/build-crane.sh)
unshare_bin=$(command -v unshare)
chroot_bin=$(command -v chroot)
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- Debian packages ---------------------------------------------------------------------------
# Packages only maintainer scripts need (the image runs none); they would pull in perl.
declare -A deb_skip=([dpkg]=1 [install-info]=1 [tar]=1 [perl-base]=1 [debconf]=1)
# The packages "$@" need at run time: Depends and Pre-Depends, recursively, the first
# alternative of each or-group (the first provider of a virtual package), without deb_skip.
deb_closure() {
  local -A seen=()
  local level=("$@") next p
  for p in "$@"; do seen[$p]=1; done
  while [ ${#level[@]} -gt 0 ]; do
    next=()
    while read -r p; do
      { [ -n "${seen[$p]:-}" ] || [ -n "${deb_skip[$p]:-}" ]; } && continue
      seen[$p]=1
      next+=("$p")
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "${level[@]}" | awk '
      /^[^ ]/ { alt = 0; provider = 0; next }
      /^ [ |](Pre)?Depends:/ {
        provider = 0
        if (!alt) { if ($2 ~ /^</) provider = 1; else print $2 }
        alt = ($0 ~ /^ \|/); next }
      /^    / { if (provider) print $1; provider = 0 }')
    level=("${next[@]}")
  done
  printf '%s\n' "${!seen[@]}" | LC_ALL=C sort
}
# Downloads (once, into the cache) the candidate version of each package; prints the files.
deb_fetch() {
  local uris
  uris=$(apt-get download --print-uris "$@" 2>/dev/null) || {
    apt-get update -qq >&2
    uris=$(apt-get download --print-uris "$@")
  }
  local dir="$CACHE/node-images/debs" file
  while read -r _ file _; do
    [ -s "$dir/$file" ] || (cd "$dir" && apt-get download -qq "${file%%_*}=$(deb_version_of "$file")" 2>/dev/null)
    [ -s "$dir/$file" ] || { echo "build-node-images: cannot download $file" >&2; return 1; }
    echo "$dir/$file"
  done <<<"$uris"
}
# pkg_1%3a1.2-3_amd64.deb -> 1:1.2-3
deb_version_of() { local v=${1#*_}; v=${v%_*}; echo "${v//%3a/:}"; }
# A tag from a Debian version: 1:1.35.0-4+deb12u1+b1 -> 1.35.0-4-deb12u1-b1
tag_of() { local v=${1#*:}; echo "${v//[^A-Za-z0-9_.-]/-}"; }

# --- root filesystems --------------------------------------------------------------------------
# /etc/passwd with root and nonroot (65532), /tmp (1777), /home/nonroot.
add_users() { # ROOT SHELL
  install -d -m 0755 "$1/etc"
  printf 'root:x:0:0:root:/root:%s\nnonroot:x:65532:65532:nonroot:/home/nonroot:%s\n' "$2" "$2" > "$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$1/etc/group"
  chmod 0644 "$1/etc/passwd" "$1/etc/group"
}
add_busybox() { # ROOT BUSYBOX_DEB: /bin/busybox, a link per applet, /tmp, /home/nonroot
  mkdir -p "$1"
  dpkg-deb -x "$2" "$1"
  local a
  for a in $("$1/bin/busybox" --list); do [ -e "$1/bin/$a" ] || ln -s busybox "$1/bin/$a"; done
  install -d -m 1777 "$1/tmp"
  install -d -m 0755 -o 65532 -g 65532 "$1/home/nonroot"
  add_users "$1" /bin/sh
}
# Docs, manuals and packaging data; each package's copyright file stays.
trim_debian() {
  find "$1/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
  rm -rf "$1/usr/share/man" "$1/usr/share/info" "$1/usr/share/lintian" "$1/usr/share/initramfs-tools" \
    "$1/usr/share/locale"
  find "$1" -depth -type d -empty ! -path "$1/tmp" ! -path "$1/home/*" -delete
}
layer() { # ROOT TAR: the root as one layer, sorted, fixed times, numeric owners
  find "$1" -exec touch -h -d "@$EPOCH" {} +
  tar --sort=name --mtime="@$EPOCH" --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" .
}

# --- OCI archives ------------------------------------------------------------------------------
registry=
start_registry() {
  [ -n "$registry" ] && return
  local port
  port=$(free_port)
  "$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  registry="127.0.0.1:$port"
  for _ in $(seq 1 100); do "$crane" catalog "$registry" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "build-node-images: crane registry did not start" >&2; return 1
}
# oci_archive LAYER_TAR NAME OUT_TAR MUTATE_ARGS...: the image, as an OCI layout in a tar whose
# index.json names it (io.containerd.image.name, org.opencontainers.image.ref.name).
oci_archive() {
  local layer=$1 name=$2 out=$3
  shift 3
  start_registry
  local ref="$registry/${name%%:*}" tag=${name##*:} layout="$work/layout-$RANDOM"
  ref=${ref/kaic.local\//}
  "$crane" append --oci-empty-base --platform linux/amd64 -f "$layer" -t "$ref:layer" >&2
  "$crane" mutate "$ref:layer" --set-platform linux/amd64 --workdir / \
    -l "org.opencontainers.image.title=${name%%:*}" -l "org.opencontainers.image.version=$tag" \
    "$@" -t "$ref:$tag" >&2
  "$crane" pull --format oci "$ref:$tag" "$layout" >&2
  "$py" - "$layout/index.json" "$name" "$tag" <<'EOF'
import json, sys
path, name, tag = sys.argv[1:]
with open(path) as f:
    index = json.load(f)
for m in index["manifests"]:
    m.setdefault("annotations", {}).update(
        {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag})
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
EOF
  (cd "$layout" && find . -exec touch -h -d "@$EPOCH" {} + && \
    tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -cf "$out.tmp" oci-layout index.json blobs)
  mv "$out.tmp" "$out"
}
# Unpacks an archive's image (its manifest's layers, in order) into DIR, for the checks.
unpack() { # ARCHIVE DIR
  mkdir -p "$2/.oci" "$2/root"
  tar -C "$2/.oci" -xf "$1"
  "$py" - "$2/.oci" <<'EOF' | while read -r blob; do tar -C "$2/root" -xzf "$2/.oci/$blob"; done
import json, sys
root = sys.argv[1]
def blob(digest):
    return "blobs/" + digest.replace(":", "/")
index = json.load(open(f"{root}/index.json"))
manifest = json.load(open(f"{root}/" + blob(index["manifests"][0]["digest"])))
for layer in manifest["layers"]:
    print(blob(layer["digest"]))
EOF
}
# Runs a command in ROOT as user 65532, in its own mount and PID namespaces.
in_image() { # ROOT ENV... -- CMD...
  local root=$1 envs=()
  shift
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env -i "${envs[@]}" "$unshare_bin" --mount --pid --fork "$chroot_bin" --userspec=65532:65532 "$root" "$@"
}
start_moto() {
  [ -n "$moto_pid" ] && return
  moto_port=$(free_port)
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 1 100); do
    "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/')" 2>/dev/null && return
    sleep 0.2
  done
  echo "build-node-images: moto did not start" >&2; cat "$work/moto.log" >&2; return 1
}
# The environment of a pod calling moto's STS with static keys.
aws_env() {
  echo AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY \
    AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
    "AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port"
}
expect() { # WHAT PATTERN OUTPUT
  if ! grep -qE -- "$2" <<<"$3"; then
    echo "build-node-images: check failed: $1: expected /$2/, got:" >&2
    echo "$3" >&2
    return 1
  fi
  echo "build-node-images: ok: $1: $(head -c 200 <<<"$3" | tr '\n' ' ')" >&2
}
size_of() { du -h --apparent-size "$1" | cut -f1; }

t0=$(date +%s)
bb_deb=$(deb_fetch busybox-static)
bb_version=$(dpkg-deb -f "$bb_deb" Version)

# --- busybox -----------------------------------------------------------------------------------
part_busybox="$CACHE/node-images/parts/busybox-$(tag_of "$bb_version")-$self_hash"
if [ ! -f "$part_busybox/.complete" ]; then
  root="$work/busybox/root"
  add_busybox "$root" "$bb_deb"
  trim_debian "$root"
  layer "$root" "$work/busybox.layer.tar"
  rm -rf "$part_busybox" && mkdir -p "$part_busybox"
  name="kaic.local/busybox:$(tag_of "$bb_version")-${self_hash:0:8}"
  oci_archive "$work/busybox.layer.tar" "$name" "$part_busybox/image.tar" \
    --user 65532:65532 -e PATH=/bin --cmd /bin/sh
  unpack "$part_busybox/image.tar" "$work/check-busybox"
  r="$work/check-busybox/root"
  expect "busybox: sh -c 'cat /etc/passwd'" '^nonroot:x:65532:65532:' \
    "$(in_image "$r" PATH=/bin -- /bin/sh -c 'cat /etc/passwd')"
  expect "busybox: applets, /tmp" '^ok 65532 Thu' \
    "$(in_image "$r" PATH=/bin -- sh -c 'for a in sh cat sleep echo ls date env grep test [; do command -v $a || exit 1; done; [ -k /tmp ] && touch /tmp/x && echo ok $(id -u) $(env -i date -u -d @0 +%a)')"
  echo "$name" > "$part_busybox/name"
  echo "busybox-static $bb_version" > "$part_busybox/packages"
  touch "$part_busybox/.complete"
  step "busybox image $name: $(size_of "$part_busybox/image.tar") in $(( $(date +%s) - t0 ))s"
fi

# --- awscli + boto3 ----------------------------------------------------------------------------
t0=$(date +%s)
mapfile -t py_pkgs < <(deb_closure python3.11-minimal libpython3.11-stdlib)
mapfile -t py_debs < <(deb_fetch "${py_pkgs[@]}")
py_packages=$(for d in "${py_debs[@]}"; do dpkg-deb -f "$d" Package Version | sed 's/^[^:]*: //' | paste -sd' '; done | LC_ALL=C sort)
py_version=$(dpkg-deb -f "$(printf '%s\n' "${py_debs[@]}" | grep /python3.11-minimal_)" Version)
awscli_hash=$(printf '%s\n' "$self_hash" "$py_packages" "$bb_version" "$(sha256sum "$req")" | hash16)
part_awscli="$CACHE/node-images/parts/awscli-$AWSCLI_VERSION-$awscli_hash"
if [ ! -f "$part_awscli/.complete" ]; then
  root="$work/awscli/root"
  add_busybox "$root" "$bb_deb"
  for d in "${py_debs[@]}"; do dpkg-deb -x "$d" "$root"; done
  ln -s python3.11 "$root/usr/bin/python3"
  site="$root/usr/local/lib/python3.11/dist-packages"
  # The wheels for Debian's CPython 3.11 on x86_64, whatever the host's Python; every version
  # from the requirements file (its pins are the constraints of the resolution).
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-compile --target "$site" \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux2014_x86_64 -c "$req" "awscli==$AWSCLI_VERSION" "boto3==$BOTO3_VERSION" >&2
  install -d -m 0755 "$root/usr/local/bin"
  { echo '#!/usr/bin/python3'; tail -n +2 "$site/bin/aws"; } > "$root/usr/local/bin/aws"
  chmod 0755 "$root/usr/local/bin/aws"
  rm -rf "$site/bin"
  # Smaller without loss for the CLI's calls: its help examples go, and its own botocore's
  # service models are stored gzipped (its loader reads .json.gz, as boto3's botocore ships).
  rm -rf "$site/awscli/examples"
  find "$site/awscli/botocore/data" -name '*.json' -exec gzip -n -9 {} +
  find "$root" -name __pycache__ -type d -prune -exec rm -rf {} +
  trim_debian "$root"
  # Bytecode, compiled by the image's own Python: without it every `aws` run compiles what it
  # imports again (no writable place for it as user 65532), 1.6 s instead of 0.45 s of CPU per
  # call, for 24 MB more on disk. Hash-based and unchecked: the layer's fixed file times
  # cannot invalidate it, and the same sources give the same files.
  unshare --mount --pid --fork chroot "$root" /usr/bin/python3 -m compileall -q \
    --invalidation-mode unchecked-hash /usr/lib/python3.11 /usr/local/lib/python3.11/dist-packages >&2
  chown -R 0:0 "$root" && chown 65532:65532 "$root/home/nonroot"
  layer "$root" "$work/awscli.layer.tar"
  rm -rf "$part_awscli" && mkdir -p "$part_awscli"
  name="kaic.local/awscli:$AWSCLI_VERSION-${awscli_hash:0:8}"
  oci_archive "$work/awscli.layer.tar" "$name" "$part_awscli/image.tar" \
    --user 65532:65532 -e PATH=/usr/local/bin:/usr/bin:/bin -e HOME=/home/nonroot \
    --cmd /usr/local/bin/aws,--version
  unpack "$part_awscli/image.tar" "$work/check-awscli"
  r="$work/check-awscli/root"
  env=(PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/nonroot)
  expect "awscli: aws --version" "^aws-cli/$AWSCLI_VERSION Python/3\.11" "$(in_image "$r" "${env[@]}" -- aws --version 2>&1)"
  expect "awscli: import boto3" "^$BOTO3_VERSION\$" "$(in_image "$r" "${env[@]}" -- python3 -c 'import boto3; print(boto3.__version__)')"
  # The way pods get credentials: credential_process runs `cat` on the Secret's file.
  start_moto
  mkdir -p "$r/tmp/aws-iam"
  # shellcheck disable=SC2046
  printf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s"}\n' $(aws_env | tr ' ' '\n' | sed -n 's/^AWS_\(ACCESS_KEY_ID\|SECRET_ACCESS_KEY\)=//p') > "$r/tmp/aws-iam/credentials.json"
  printf '[default]\ncredential_process = cat /tmp/aws-iam/credentials.json\n' > "$r/tmp/aws-iam/credentials.process"
  chmod -R a+rX "$r/tmp/aws-iam"
  penv=(PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/nonroot AWS_CONFIG_FILE=/tmp/aws-iam/credentials.process
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true "AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port")
  expect "awscli: aws sts get-caller-identity through credential_process" '"Arn": "arn:aws:sts::[0-9]+:user/moto"' \
    "$(in_image "$r" "${penv[@]}" -- aws sts get-caller-identity 2>&1)"
  expect "awscli: boto3 get_caller_identity through credential_process" '^arn:aws:sts::[0-9]+:user/moto$' \
    "$(in_image "$r" "${penv[@]}" -- python3 -c 'import boto3; print(boto3.client("sts").get_caller_identity()["Arn"])' 2>&1)"
  echo "$name" > "$part_awscli/name"
  { echo "$py_packages"; echo "busybox-static $bb_version"; (cd "$site" && ls -d ./*.dist-info | sed 's|^\./\(.*\)-\([^-]*\)\.dist-info$|\1 \2|'); } > "$part_awscli/packages"
  touch "$part_awscli/.complete"
  step "awscli image $name (python3.11 $py_version): $(size_of "$part_awscli/image.tar") in $(( $(date +%s) - t0 ))s"
fi

# --- the static Rust SDK client ----------------------------------------------------------------
t0=$(date +%s)
rustc_version=$(rustc -V)
client_hash=$(printf '%s\n' "$self_hash" "$rust_hash" "$rustc_version" "$(sha256sum "$req")" | hash16)
part_rust="$CACHE/node-images/parts/rust-client-$client_hash"
if [ ! -f "$part_rust/.complete" ]; then
  rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >&2
  if ! command -v musl-gcc >/dev/null; then
    apt-get install -y -qq musl-tools >&2 || { apt-get update -qq >&2 && apt-get install -y -qq musl-tools >&2; }
  fi
  # build-image.sh's tree, target dir, flags and lock. The example is built as a binary of the
  # package (src/bin/ in that tree): an example would enable the dev-dependencies' features
  # (tokio's test-util) and rebuild every crate that depends on tokio a second time.
  src="$CACHE/image-build/src"
  stage="$work/stage"
  mkdir -p "$stage/src/bin"
  for f in "${rust_inputs[@]}"; do mkdir -p "$stage/$(dirname "$f")"; ln -s "$repo/$f" "$stage/$f"; done
  ln -s "$repo/examples/sdk_rust_client.rs" "$stage/src/bin/sdk_rust_client.rs"
  # A caller that holds the lock (`flock "$CACHE/image-build.lock" ...`) passed it down.
  lock="$CACHE/image-build.lock"
  held=
  for fd in /proc/$$/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$lock" ] && held=1; done
  if [ -z "$held" ]; then exec 8>>"$lock"; flock 8; fi
  scripts/sync-tree.sh "$stage" "$src" "${rust_inputs[@]}" src/bin/sdk_rust_client.rs
  export CARGO_TARGET_DIR="$CACHE/image-build/target"
  export CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
  export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$src=/build --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
  export CC_x86_64_unknown_linux_musl=musl-gcc
  step "release build of sdk_rust_client for $TARGET in $CARGO_TARGET_DIR"
  (cd "$src" && cargo build --locked --release --target "$TARGET" --bin sdk_rust_client >&2)
  root="$work/rust-client/root"
  install -d -m 0755 "$root/etc/ssl/certs"
  install -m 0755 "$CARGO_TARGET_DIR/$TARGET/release/sdk_rust_client" "$root/sdk_rust_client"
  [ -n "$held" ] || exec 8>&-
  unset CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_STRIP CARGO_PROFILE_RELEASE_CODEGEN_UNITS RUSTFLAGS CC_x86_64_unknown_linux_musl
  install -m 0644 "$("$py" -c 'import certifi; print(certifi.where())')" "$root/etc/ssl/certs/ca-certificates.crt"
  add_users "$root" /sbin/nologin
  layer "$root" "$work/rust-client.layer.tar"
  rm -rf "$part_rust" && mkdir -p "$part_rust"
  name="kaic.local/rust-client:${client_hash:0:12}"
  oci_archive "$work/rust-client.layer.tar" "$name" "$part_rust/image.tar" \
    --user 65532:65532 --entrypoint /sdk_rust_client -e SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  unpack "$part_rust/image.tar" "$work/check-rust"
  r="$work/check-rust/root"
  expect "rust-client: no shell, no cat" '^none$' "$( (cd "$r" && find . -name sh -o -name cat -o -name busybox -o -name bash; echo none) | head -1)"
  expect "rust-client: --help" 'Usage: sdk_rust_client' "$(in_image "$r" -- /sdk_rust_client --help)"
  start_moto
  # shellcheck disable=SC2046
  expect "rust-client: GetCallerIdentity" '^OK arn:aws:sts::[0-9]+:user/moto AKIAIOSFODNN7EXAMPLE$' \
    "$(in_image "$r" $(aws_env) SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt -- /sdk_rust_client --count 1 2>&1)"
  echo "$name" > "$part_rust/name"
  touch "$part_rust/.complete"
  step "rust-client image $name: $(size_of "$part_rust/image.tar") in $(( $(date +%s) - t0 ))s"
fi

# --- the directory -----------------------------------------------------------------------------
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
for p in busybox:"$part_busybox" awscli:"$part_awscli" rust-client:"$part_rust"; do
  ln -f "${p#*:}/image.tar" "$OUT.tmp/${p%%:*}.tar" 2>/dev/null || cp "${p#*:}/image.tar" "$OUT.tmp/${p%%:*}.tar"
done
{
  echo "BUSYBOX_IMAGE=$(cat "$part_busybox/name")"
  echo "AWSCLI_IMAGE=$(cat "$part_awscli/name")"
  echo "RUST_CLIENT_IMAGE=$(cat "$part_rust/name")"
} > "$OUT.tmp/images.env"
cat "$part_awscli/packages" > "$OUT.tmp/packages.txt"
touch "$OUT.tmp/.complete"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
step "$(cd "$OUT" && du -h --apparent-size ./*.tar | tr '\t\n' '  ')in $OUT"
echo "$OUT"
