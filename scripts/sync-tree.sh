#!/usr/bin/env bash
# Brings DEST to hold exactly the files FILE... of SRC (paths relative to both), by content: a
# file that is new or whose bytes differ is copied and gets the current time as its
# modification time; an unchanged file keeps the time it has in DEST; any other file under
# DEST is removed. Cargo decides what to rebuild from modification times, so a copy that kept
# SRC's times (`cp -p`) could hand it changed sources older than its last build, from another
# clone or worktree sharing the cache, and it would keep the binary of the other tree.
#
# Usage: scripts/sync-tree.sh SRC DEST FILE...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 SRC DEST FILE..." >&2; exit 2; }
src=$1
dest=$2
shift 2
mkdir -p "$dest"
declare -A wanted=()
for f in "$@"; do
  wanted["$f"]=1
  if ! cmp -s "$src/$f" "$dest/$f"; then
    mkdir -p "$dest/$(dirname "$f")"
    rm -f "$dest/$f"
    cp "$src/$f" "$dest/$f"
  fi
done
while IFS= read -r -d '' f; do
  [ -n "${wanted[$f]:-}" ] || rm -f "$dest/$f"
done < <(cd "$dest" && find . -type f -printf '%P\0')
find "$dest" -mindepth 1 -type d -empty -delete
