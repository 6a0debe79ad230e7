#!/usr/bin/env python3
"""Test client for boto3: creates ONE session + STS client with the default
credential chain (as an app in a pod would) and calls sts:GetCallerIdentity
--count times, --interval-ms apart.
Prints "OK <arn> <access_key_id>" or "ERR <message>" per call; exit 0 iff all OK.
<access_key_id> is read from the SigV4 Authorization header of the request that
was sent, so it is the key botocore signed that call with; asking the session's
credentials instead (get_frozen_credentials) could itself trigger a refresh."""
import argparse
import os
import sys
import time

import boto3


def one_line(exc):
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def key_from_auth(auth):
    """Access key id in "AWS4-HMAC-SHA256 Credential=AKID/date/region/svc/aws4_request, ..."."""
    if isinstance(auth, bytes):
        auth = auth.decode("utf-8", "replace")
    _, sep, rest = (auth or "").partition("Credential=")
    return rest.split("/", 1)[0] if sep else "-"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval-ms", type=int, default=0)
    a = p.parse_args()

    # Test machines have no instance metadata service and must not send traffic to
    # 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    session = boto3.session.Session()
    client = session.client("sts")
    used = {"key": "-"}

    def capture(request, **_):  # before-send: after signing, once per attempt
        used["key"] = key_from_auth(request.headers.get("Authorization"))

    client.meta.events.register("before-send.sts.GetCallerIdentity", capture)
    failed = False
    for i in range(a.count):
        if i > 0 and a.interval_ms > 0:
            time.sleep(a.interval_ms / 1000.0)
        try:
            used["key"] = "-"
            arn = client.get_caller_identity()["Arn"]
            print(f"OK {arn} {used['key']}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report any failure as one line
            print(f"ERR {one_line(exc)}", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
