#!/usr/bin/env bash
# Test client for the AWS CLI v1: each call is a fresh
# `aws sts get-caller-identity --output text --query Arn` process (the CLI has
# no long-lived client), --count times, --interval-ms apart.
# Prints "OK <arn> -" or "ERR <message>" per call; exit 0 iff all OK.
# The CLI to run is $AWS_CLI (default: aws on PATH).
set -u
count=1 interval=0
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --count=*) count=${1#*=}; shift ;;
    --interval-ms) interval=$2; shift 2 ;;
    --interval-ms=*) interval=${1#*=}; shift ;;
    *) echo "usage: $0 [--count N] [--interval-ms M]" >&2; exit 2 ;;
  esac
done
aws=${AWS_CLI:-aws}
# Test machines have no instance metadata service and must not send traffic to
# 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
export AWS_EC2_METADATA_DISABLED=${AWS_EC2_METADATA_DISABLED-true}
errf=$(mktemp) || exit 1
trap 'rm -f "$errf"' EXIT
failed=0
for ((i = 0; i < count; i++)); do
  if [ "$i" -gt 0 ] && [ "$interval" -gt 0 ]; then
    sleep "$(awk -v ms="$interval" 'BEGIN { printf "%.3f", ms / 1000 }')"
  fi
  if arn=$("$aws" sts get-caller-identity --output text --query Arn 2>"$errf") && [ -n "$arn" ]; then
    echo "OK $arn -"
  else
    msg=$(grep -v '^[[:space:]]*$' "$errf" | tail -n 1 | tr -s '[:space:]' ' ' | sed 's/ $//')
    echo "ERR ${msg:-aws exited without output}"
    failed=1
  fi
done
exit "$failed"
