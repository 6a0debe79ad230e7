#!/usr/bin/env bash
# Installs/builds the AWS SDK test clients of tests/sdk/ into a cache outside the
# repo and prints that directory:
#
#   ${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}/sdk/<key>/bin/<sdk>
#
# <key> hashes tests/sdk/ (less README.md and build output), this script and
# tests/python/requirements.txt (the cli and boto3 clients run on that venv), so an
# unchanged tree is a cache hit that returns in well under a second.
#
# usage: scripts/sdk-clients.sh [SDK...]     SDK in: cli boto3 go js java2 java1
#                                            (default: all of them)
# (Build steps run under `if`, where set -e is off: each step checks its own status.)
# Every bin/<sdk> takes `--count N --interval-ms M` and prints one line per
# sts:GetCallerIdentity call: `OK <arn> <access_key_id>` or `ERR <message>`
# (see tests/sdk/README.md). Build logs: <dir>/log/<sdk>.log.
#
# Needs: python3 (cli, boto3; via scripts/python-env.sh), go (go), node >= 20 and
# npm (js), java >= 11 and mvn (java2, java1). Network only on a cold build:
# the Go module proxy, the npm registry, Maven Central (~/.m2 is reused).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
SRC="$here/tests/sdk"
CACHE="${KAIC_CACHE:-$HOME/.cache/kube-aws-iam-controller}"
ALL_SDKS="cli boto3 go js java2 java1"

die() { echo "sdk-clients: $*" >&2; exit 1; }

sdks=("$@")
[ ${#sdks[@]} -gt 0 ] || read -r -a sdks <<<"$ALL_SDKS"
for s in "${sdks[@]}"; do
  case " $ALL_SDKS " in *" $s "*) ;; *) die "unknown SDK '$s' (known: $ALL_SDKS)" ;; esac
done
[ -d "$SRC" ] || die "missing $SRC"

key=$(
  cd "$here" &&
    find tests/sdk tests/python/requirements.txt scripts/sdk-clients.sh -type f \
      ! -path tests/sdk/README.md ! -path '*/node_modules/*' ! -path '*/target/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
)
DIR="$CACHE/sdk/$key"

is_done() { # a built client whose venv (cli, boto3) is still there
  [ -f "$DIR/.done-$1" ] && [ -x "$DIR/bin/$1" ] || return 1
  case $1 in cli|boto3) [ -f "$DIR/.venv" ] && [ -x "$(cat "$DIR/.venv")/bin/python" ] ;; esac
}
all_done() {
  local s
  for s in "${sdks[@]}"; do is_done "$s" || return 1; done
}
if all_done; then echo "$DIR"; exit 0; fi

mkdir -p "$DIR/bin" "$DIR/src" "$DIR/log"
command -v flock >/dev/null && { exec 9>"$DIR/.lock"; flock 9; }
if all_done; then echo "$DIR"; exit 0; fi   # built by a concurrent run

need() { # need CMD SDK [hint]
  command -v "$1" >/dev/null 2>&1 ||
    { echo "sdk-clients: '$1' is required to build the $2 client but is not on PATH${3:+ ($3)}" >&2; return 1; }
}

copy_src() { # fresh copy of tests/sdk/<sdk> into $DIR/src/<sdk>
  rm -rf "$DIR/src/$1"
  mkdir -p "$DIR/src/$1"
  tar -C "$SRC/$1" --exclude=node_modules --exclude=target -cf - . | tar -C "$DIR/src/$1" -xf -
}

wrapper() { # wrapper SDK LINE...: writes bin/<sdk>, a bash script ending in LINE...
  local f="$DIR/bin/$1"; shift
  { echo '#!/usr/bin/env bash'; printf '%s\n' "$@"; } >"$f.tmp"
  chmod +x "$f.tmp"
  mv "$f.tmp" "$f"
}

venv=""
python_venv() {
  if [ -z "$venv" ]; then
    need python3 "$1" "scripts/python-env.sh creates the boto3/awscli venv with it" || return 1
    venv=$("$here/scripts/python-env.sh") || { echo "sdk-clients: scripts/python-env.sh failed" >&2; return 1; }
    echo "$venv" >"$DIR/.venv"
  fi
}

build_cli() {
  python_venv cli || return 1
  [ -x "$venv/bin/aws" ] || { echo "sdk-clients: $venv/bin/aws missing (awscli not in tests/python/requirements.txt?)" >&2; return 1; }
  copy_src cli || return 1
  wrapper cli "export AWS_CLI='$venv/bin/aws'" "exec bash '$DIR/src/cli/client.sh' \"\$@\""
}

build_boto3() {
  python_venv boto3 || return 1
  "$venv/bin/python" -c 'import boto3' 2>/dev/null ||
    { echo "sdk-clients: boto3 is not importable in $venv" >&2; return 1; }
  copy_src boto3 || return 1
  wrapper boto3 "exec '$venv/bin/python' '$DIR/src/boto3/client.py' \"\$@\""
}

build_go() {
  need go go "install Go; the toolchain must satisfy tests/sdk/go/go.mod (GOTOOLCHAIN=local)" || return 1
  copy_src go || return 1
  (cd "$DIR/src/go" &&
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o "$DIR/bin/go" .) || return 1
}

build_js() {
  need node js "Node.js >= 20" || return 1
  need npm js || return 1
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || { echo "sdk-clients: the js client needs Node.js >= 20, found $(node --version)" >&2; return 1; }
  copy_src js || return 1
  (cd "$DIR/src/js" && npm ci --ignore-scripts --no-audit --no-fund --omit=dev --loglevel=error) || return 1
  wrapper js "exec node '$DIR/src/js/client.mjs' \"\$@\""
}

build_java() { # build_java java2|java1 [JVM option...]
  local sdk=$1; shift
  local opts="-XX:+UseSerialGC -XX:TieredStopAtLevel=1${*:+ $*}"
  need java "$sdk" "a JDK >= 11" || return 1
  need javac "$sdk" "a JDK >= 11 (javac)" || return 1
  need mvn "$sdk" "Apache Maven" || return 1
  copy_src "$sdk" || return 1
  (cd "$DIR/src/$sdk" && mvn -q -B package) || return 1
  local jar="$DIR/src/$sdk/target/kaic-sdk-$sdk.jar"
  [ -f "$jar" ] || { echo "sdk-clients: mvn package did not produce $jar" >&2; return 1; }
  # SerialGC + C1 only: a short-lived client, 2-core machines. $KAIC_JAVA_OPTS adds more.
  wrapper "$sdk" "exec java $opts \${KAIC_JAVA_OPTS:-} -jar '$jar' \"\$@\""
}
build_java2() { build_java java2; }
# 1.x prints an end-of-support notice with a stack trace to stderr on every start.
build_java1() { build_java java1 -Daws.java.v1.disableDeprecationAnnouncement=true; }

failed=()
for s in "${sdks[@]}"; do
  is_done "$s" && continue
  rm -f "$DIR/.done-$s" "$DIR/bin/$s"
  echo "sdk-clients: building $s client (log: $DIR/log/$s.log)" >&2
  start=$(date +%s)
  if "build_$s" >"$DIR/log/$s.log" 2>&1; then
    touch "$DIR/.done-$s"
    echo "sdk-clients: built $s in $(($(date +%s) - start))s" >&2
  else
    echo "sdk-clients: FAILED to build the $s client; last lines of $DIR/log/$s.log:" >&2
    tail -n 15 "$DIR/log/$s.log" | sed 's/^/  /' >&2
    failed+=("$s")
  fi
done
[ ${#failed[@]} -eq 0 ] || die "could not build: ${failed[*]} (the others are in $DIR/bin)"
echo "$DIR"
