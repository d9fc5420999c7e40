"""Shared helpers for the SDK conformance scripts.

The Rust test (hub/tests/integration/sdk_conformance.rs) starts casement hub with MQTT over TLS on
127.0.0.1:8883 (the Python device SDK is hard-wired to 8883) and HTTPS on another port, then runs
these scripts with:

  HUB_SERVICE_CS   iothubowner connection string, HostName=localhost:<https port>
  HUB_CA           path of the hub's CA certificate (also in REQUESTS_CA_BUNDLE)

Each script prints one JSON line per check ({"check": ..., "ok": ..., "detail": ...}) and exits
non-zero when any check failed.
"""

import json
import os
import sys
import traceback

_failures = []


def check(name, ok, detail=None):
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}, default=str), flush=True)
    if not ok:
        _failures.append(name)


def expect_http_error(name, status, fn):
    """Runs fn, which must fail with an HTTP error of `status` (msrest HttpOperationError)."""
    try:
        fn()
    except Exception as e:  # msrest.exceptions.HttpOperationError
        response = getattr(e, "response", None)
        got = getattr(response, "status_code", None)
        body = getattr(response, "text", "")
        check(name, got == status, {"status": got, "body": body[:300]})
        return response
    check(name, False, "no error raised")
    return None


def service_cs():
    return os.environ["HUB_SERVICE_CS"]


def ca_pem():
    with open(os.environ["HUB_CA"]) as f:
        return f.read()


def run(main):
    try:
        main()
    except Exception:
        check("script completed", False, traceback.format_exc())
    if _failures:
        print(json.dumps({"failed": _failures}), flush=True)
        sys.exit(1)
    print(json.dumps({"failed": []}), flush=True)
