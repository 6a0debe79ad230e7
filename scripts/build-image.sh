#!/usr/bin/env bash
# Builds the controller's OCI image without a Docker engine: a static musl binary, CA roots
# and a passwd entry for user 65532 in one layer, assembled with go-containerregistry's crane
# (scripts/build-crane.sh) through a throwaway local registry. No shell, no libc. The same
# commit gives the same digest (fixed build path, fixed timestamps, sorted tar).
# The Dockerfile describes the same image for CI systems with a Docker engine.
#
# Usage: scripts/build-image.sh [OUT_DIR]
#   `docker load` / `crane push`) and digest; prints OUT_DIR.
# Env: KAIC_CACHE (default ~/.cache/kube-aws-iam-controller): the musl build's target dir
#   lives there, so a fresh clone does not rebuild the dependencies.
set -euo pipefail
# The same environment for every caller (a shell, test.sh, a test binary under `cargo test`):
# otherwise Cargo's fingerprints of the release build differ and it rebuilds from zero.
if [ -z "${KAIC_IMAGE_CLEAN_ENV:-}" ]; then
  exec env -i KAIC_IMAGE_CLEAN_ENV=1 PATH="$PATH" HOME="$HOME" \
    ${KAIC_CACHE:+KAIC_CACHE="$KAIC_CACHE"} ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} \
    ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} "$0" "$@"
fi
cd "$(dirname "$0")/.."
repo=$PWD
TARGET=x86_64-unknown-linux-musl
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
# The build dir under the cache is shared by every clone: one build at a time. A caller that
# already holds the lock (`flock "$CACHE/image-build.lock" scripts/build-image.sh`) passed its
# descriptor down; taking it again on a new descriptor would wait for ourselves.
lock="$CACHE/image-build.lock"
mkdir -p "$CACHE"
held=
for fd in /proc/$$/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$lock" ] && held=1; done
if [ -z "$held" ]; then exec 8>>"$lock"; flock 8; fi
out="${1:-target/image}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
crane=$(scripts/build-crane.sh)
venv=$(scripts/python-env.sh)

rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >&2
if ! command -v musl-gcc >/dev/null; then
  echo "build-image: installing musl-tools (musl-gcc, for ring's C code)" >&2
  apt-get install -y -qq musl-tools >&2 || { apt-get update -qq >&2 && apt-get install -y -qq musl-tools >&2; }
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# Build from a fixed path, so paths compiled into the binary (panic locations) and Cargo's
# fingerprints are the same for every clone. Copied by content (scripts/sync-tree.sh): a
# changed file is newer than the last build whatever its time in this clone, so Cargo never
# keeps a binary built from another tree; an unchanged one keeps its time and rebuilds nothing.
src="$CACHE/image-build/src"
mapfile -t sources < <(find src -type f | LC_ALL=C sort)
scripts/sync-tree.sh "$repo" "$src" Cargo.toml Cargo.lock rust-toolchain.toml "${sources[@]}"
export CARGO_TARGET_DIR="$CACHE/image-build/target"
export CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$src=/build --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
# No SOURCE_DATE_EPOCH here: build scripts that read it make Cargo rebuild every dependency
# at each new commit, and the binary embeds no time (the layer's timestamps are set below).
export CC_x86_64_unknown_linux_musl=musl-gcc
echo "build-image: release build for $TARGET in $CARGO_TARGET_DIR" >&2
(cd "$src" && cargo build --locked --release --target "$TARGET" --bin kube-aws-iam-controller >&2)
bin="$CARGO_TARGET_DIR/$TARGET/release/kube-aws-iam-controller"

# The root filesystem: nothing but the binary, CA roots and the user.
work=$(mktemp -d)
registry_pid=
cleanup() { [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
root="$work/root"
install -d -m 0755 "$root/etc/ssl/certs"
install -m 0755 "$bin" "$root/kube-aws-iam-controller"
install -m 0644 "$("$venv/bin/python" -c 'import certifi; print(certifi.where())')" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
find "$root" -exec touch -h -d "@$epoch" {} +
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" .

# Assemble: append the layer to an empty OCI base, set the config, pull as an OCI layout.
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do "$crane" catalog "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
ref="127.0.0.1:$port/kube-aws-iam-controller"
"$crane" append --oci-empty-base --platform linux/amd64 -f "$work/layer.tar" -t "$ref:layer" >&2
labels=(
  -l "org.opencontainers.image.title=kube-aws-iam-controller"
  -l "org.opencontainers.image.source=https://github.com/OWNER/kube-aws-iam-controller"
  -l "org.opencontainers.image.version=$version"
  -l "org.opencontainers.image.revision=$revision"
  -l "org.opencontainers.image.created=$created"
  -l "org.opencontainers.image.licenses=MIT"
)
"$crane" mutate "$ref:layer" --set-platform linux/amd64 --entrypoint /kube-aws-iam-controller \
  --user 65532:65532 --workdir / -e SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  "${labels[@]}" -t "$ref:$version" >&2
rm -rf "$out/oci"
"$crane" pull --format oci "$ref:$version" "$out/oci" >&2
"$crane" digest "$ref:$version" > "$out/digest"
echo "build-image: kube-aws-iam-controller:$version $(cat "$out/digest")" >&2
echo "$out"
