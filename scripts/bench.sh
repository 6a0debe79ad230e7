#!/usr/bin/env bash
# Prints how the controller's cost grows with the number of AWSIAMRoles (targets P1–P5 and a
# restart), as one Markdown table; exits 1 when a target is missed. Runs the binary the image
# ships (the static musl release build of scripts/build-image.sh) against the local control
# plane and the STS test double; the harness is a release build too. docs/performance.md
# explains every line.
# Usage: scripts/bench.sh [--sizes 100,1000,2000,10000] [--sts-latency-ms 50] [... see --help]
set -euo pipefail
exec "$(dirname "$0")/run-bench.sh" bench "$@"
