#!/usr/bin/env python3
"""Writes sas_vectors.json: SAS tokens computed independently of the Rust code, with Python's
hmac, hashlib, base64 and urllib, in every encoding the SDKs use (reference §1).

Run from this directory: python3 make_sas_vectors.py > sas_vectors.json
The output is deterministic (fixed keys and expiry times), so re-running it changes nothing.
"""

import base64
import hashlib
import hmac
import json
import re
from urllib.parse import quote, quote_plus

DEVICE_KEY = base64.b64encode(b"casement device key: 32 bytes!!!").decode()
SECONDARY_KEY = base64.b64encode(b"casement secondary key, 32 bytes").decode()
POLICY_KEY = base64.b64encode(b"casement iothubowner key 32 byte").decode()
OTHER_KEY = base64.b64encode(b"some other device's key 32 bytes").decode()
NOW = 1_800_000_000


def hmac_b64(key_b64, sr, se):
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def lower_escapes(s):
    """The C SDK's urlencode writes lowercase hex digits (%2f)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s)


def token(fields):
    return "SharedAccessSignature " + "&".join(f"{k}={v}" for k, v in fields)


def se_with_sig_char(key, sr, start, chars):
    """The first expiry >= start whose base64 signature contains all of `chars`."""
    se = start
    while not all(c in hmac_b64(key, sr, se) for c in chars):
        se += 1
    return se


vectors = []


def add(name, tok, keys, expect, resource=None, now=NOW, skew=300, aliases=None, path=None,
        note=""):
    v = {"name": name, "note": note, "token": tok, "keys": keys, "now": now, "skew": skew,
         "expect": expect}
    if resource is not None:
        v["resource"] = resource
    if aliases is not None:
        v["aliases"] = aliases
        v["path"] = path
    vectors.append(v)


# Node device: encodeURIComponent (uppercase) for sr and sig; order sr, sig, se.
uri = "myhub.azure-devices.net/devices/dev1"
sr = quote(uri, safe="")
se = se_with_sig_char(DEVICE_KEY, sr, NOW + 3600, "/+")
sig = hmac_b64(DEVICE_KEY, sr, se)
add("node_device_uppercase", token([("sr", sr), ("sig", quote(sig, safe="")), ("se", se)]),
    [DEVICE_KEY], "ok", uri, aliases=["myhub.azure-devices.net"], path="devices/dev1",
    note="Node: encodeURIComponent, uppercase %2F; the signature contains '/' and '+'")

# C SDK: lowercase escapes in sr and sig.
sr_c = lower_escapes(quote(uri, safe=""))
se = NOW + 7200
sig = hmac_b64(DEVICE_KEY, sr_c, se)
add("c_sdk_lowercase", token([("sr", sr_c), ("sig", lower_escapes(quote(sig, safe=""))), ("se", se)]),
    [DEVICE_KEY], "ok", uri, aliases=["myhub.azure-devices.net"], path="devices/dev1",
    note="C SDK: lowercase %2f, HMAC over the lowercase text")

# The same sr re-cased: the HMAC is over sr as written, so the uppercase signature fails.
sig_upper = hmac_b64(DEVICE_KEY, quote(uri, safe=""), se)
add("recased_sr_fails", token([("sr", sr_c), ("sig", quote(sig_upper, safe="")), ("se", se)]),
    [DEVICE_KEY], "BadSignature",
    note="signed over %2F but presented with %2f: not the same message")

# Node service: raw, unescaped host (with a port); order sr, sig, skn, se.
host = "localhost:8443"
se = NOW + 3600
sig = hmac_b64(POLICY_KEY, host, se)
add("node_service_raw_host", token([("sr", host), ("sig", quote(sig, safe="")), ("skn", "iothubowner"), ("se", se)]),
    [POLICY_KEY], "ok", host, aliases=["localhost"], path="",
    note="Node service SDK signs the raw host")

# Python service: quote_plus(host) and quote(sig) (leaves '/' unescaped); order sr, sig, se, skn.
sr_py = quote_plus(host)
se = se_with_sig_char(POLICY_KEY, sr_py, NOW + 3600, "/")
sig = hmac_b64(POLICY_KEY, sr_py, se)
add("python_service_quote_plus", token([("sr", sr_py), ("sig", quote(sig)), ("se", se), ("skn", "iothubowner")]),
    [POLICY_KEY], "ok", host, aliases=["localhost"], path="devices/dev1",
    note="Python hub SDK: quote_plus(host) = localhost%3A8443, '/' left raw in sig")

# Python device with a module: quote(uri, safe='') and skn absent; fields reordered on purpose.
muri = "127.0.0.1/devices/dev1/modules/agent"
sr = quote(muri, safe="")
se = NOW + 60
sig = hmac_b64(DEVICE_KEY, sr, se)
add("module_fields_reordered", token([("se", se), ("sig", quote(sig, safe="")), ("sr", sr)]),
    [DEVICE_KEY], "ok", muri, aliases=["127.0.0.1"], path="devices/dev1/modules/agent",
    note="fields in the order se, sig, sr")

# Secondary key.
sr = quote(uri, safe="")
se = NOW + 3600
sig = hmac_b64(SECONDARY_KEY, sr, se)
add("secondary_key", token([("sr", sr), ("sig", quote(sig, safe="")), ("se", se)]),
    [DEVICE_KEY, SECONDARY_KEY], "ok", uri, aliases=["myhub.azure-devices.net"], path="devices/dev1",
    note="signed with the secondary key; verified against [primary, secondary]")

# Device policy token (skn=device) for a gateway scope.
guri = "myhub.azure-devices.net/devices"
sr = quote(guri, safe="")
sig = hmac_b64(POLICY_KEY, sr, se)
add("policy_token_gateway_scope", token([("sr", sr), ("sig", quote(sig, safe="")), ("skn", "device"), ("se", se)]),
    [POLICY_KEY], "ok", guri, aliases=["myhub.azure-devices.net"], path="devices/dev7",
    note="skn=device with sr={host}/devices covers every device")

# Forged: signed with a key the hub does not have.
sig = hmac_b64(OTHER_KEY, quote(uri, safe=""), se)
add("forged", token([("sr", quote(uri, safe="")), ("sig", quote(sig, safe="")), ("se", se)]),
    [DEVICE_KEY, SECONDARY_KEY], "BadSignature", note="signed with another key")

# Expired: genuine, but se + skew < now.
se_old = NOW - 301
sig = hmac_b64(DEVICE_KEY, quote(uri, safe=""), se_old)
add("expired", token([("sr", quote(uri, safe="")), ("sig", quote(sig, safe="")), ("se", se_old)]),
    [DEVICE_KEY], "Expired", note="expired 301 s ago, 300 s skew allowed")

# Within skew: expired 300 s ago is still accepted.
se_skew = NOW - 300
sig = hmac_b64(DEVICE_KEY, quote(uri, safe=""), se_skew)
add("within_skew", token([("sr", quote(uri, safe="")), ("sig", quote(sig, safe="")), ("se", se_skew)]),
    [DEVICE_KEY], "ok", uri, note="expired exactly 300 s ago")

# Another device's genuine token presented for dev1: the signature verifies with dev2's key,
# authorization for devices/dev1 fails.
ouri = "myhub.azure-devices.net/devices/dev10"
sig = hmac_b64(OTHER_KEY, quote(ouri, safe=""), se)
add("other_device", token([("sr", quote(ouri, safe="")), ("sig", quote(sig, safe="")), ("se", se)]),
    [OTHER_KEY], "WrongResource", ouri, aliases=["myhub.azure-devices.net"], path="devices/dev1",
    note="dev10's token does not cover dev1 (segment-wise, not string prefix)")

# Token for another hub.
euri = "evil.example/devices/dev1"
sig = hmac_b64(DEVICE_KEY, quote(euri, safe=""), se)
add("other_hub", token([("sr", quote(euri, safe="")), ("sig", quote(sig, safe="")), ("se", se)]),
    [DEVICE_KEY], "WrongResource", euri, aliases=["myhub.azure-devices.net", "localhost"], path="devices/dev1",
    note="host not among the hub's names")

# Malformed ones.
add("missing_prefix", f"sr={quote(uri, safe='')}&sig=abc&se={se}", [DEVICE_KEY], "Malformed")
add("duplicate_sr", token([("sr", "a"), ("sig", "abc"), ("se", se), ("sr", "b")]), [DEVICE_KEY], "Malformed")

# What this crate's sign() must produce: the Node form, computed here independently.
signing = []
for resource, key, key_name, expiry in [
    ("myhub.azure-devices.net/devices/dev1", DEVICE_KEY, None, NOW + 3600),
    ("localhost:8883/devices/dev(1)*!'", DEVICE_KEY, None, NOW),
    ("myhub.azure-devices.net", POLICY_KEY, "iothubowner", NOW + 3600),
    ("127.0.0.1/devices/dev1/modules/agent", DEVICE_KEY, None, 0),
]:
    sr = quote(resource, safe="")  # uppercase, escapes everything but A-Za-z0-9_.-~
    sig = quote(hmac_b64(key, sr, expiry), safe="")
    fields = [("sr", sr), ("sig", sig)] + ([("skn", key_name)] if key_name else []) + [("se", expiry)]
    signing.append({"resource": resource, "key": key, "key_name": key_name, "expiry": expiry,
                    "token": token(fields)})

print(json.dumps({"verify": vectors, "sign": signing}, indent=2))
