#!/usr/bin/env bash
# Lists the processes a test run left behind: those whose environment carries the run's
# marker (KAIC_RUN_ID=ID: scripts/test.sh exports it, so every process the run starts inherits
# it), other than this check and the processes it runs under. Processes of another run, even
# ones started from the same cached binaries, carry another marker and are not listed.
#
# The real node's test (tests/support/node.rs) runs in namespaces of its own that end with its
# processes; what could outlive it is listed too: its cgroups (named kaic-node-RUN_ID) and any
# mount of its state directories seen from here.
#
# Usage: scripts/leftovers.sh RUN_ID   (prints "PID COMMAND LINE" per process left, then
#        "cgroup PATH" and "mount LINE"; exits 0)
set -euo pipefail
id=${1:?usage: scripts/leftovers.sh RUN_ID}
declare -A ours
p=$$
while [ "${p:-1}" -gt 1 ]; do
  ours[$p]=1
  p=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
done
for environ in /proc/[0-9]*/environ; do
  pid=${environ#/proc/}
  pid=${pid%/environ}
  [ -n "${ours[$pid]:-}" ] && continue
  if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "KAIC_RUN_ID=$id"; then
    cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null || true)
    [ -n "$cmd" ] && echo "$pid $cmd"
  fi
done
for dir in /sys/fs/cgroup/*/"kaic-node-$id"; do
  [ -d "$dir" ] && echo "cgroup $dir"
done
grep -F "kaic-node-" /proc/self/mounts | sed 's/^/mount /' || true
exit 0
