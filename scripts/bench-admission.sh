#!/usr/bin/env bash
# Prints the admission webhook's latency and errors under load (issue 24), as Markdown tables:
# pods created through the local API server (server-side dry run, the whole admission path) at
# rising rates, answered by two replicas of the binary the image ships (the static musl release
# build of scripts/build-image.sh), then at 100/s during a CA rotation and during a rolling
# restart of a replica; the replicas' RSS growth; pods over the webhook's size limit. Exits 1
# when a target is missed. The harness is a release build too. docs/performance.md explains
# every line.
# Usage: scripts/bench-admission.sh [--rates 25,50,100,200] [--step-secs 20] [... see --help]
set -euo pipefail
exec "$(dirname "$0")/run-bench.sh" bench_admission "$@"
