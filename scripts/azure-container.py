#!/usr/bin/env python3
"""Creates (or deletes) a blob container with one Shared Key signed REST call, or prints an
account SAS token, using only the Python standard library. object_store does not create
containers; tests and benchmarks use this against Azurite.

    scripts/azure-container.py create|delete ENDPOINT ACCOUNT KEY CONTAINER
    scripts/azure-container.py sas ENDPOINT ACCOUNT KEY PERMISSIONS [SERVICES]

ENDPOINT is the account URL (http://127.0.0.1:10000/devstoreaccount1 for Azurite);
PERMISSIONS are account SAS letters (rwdlac, or rl for read-only; add u and p for queues);
SERVICES are the SAS's services: b (blob, the default), q (queue), or bq for both.
"""
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request
from email.utils import formatdate

VERSION = "2021-08-06"


def call(verb, endpoint, account, key, container):
    url = f"{endpoint.rstrip('/')}/{container}?restype=container"
    path = urllib.parse.urlparse(url).path
    date = formatdate(usegmt=True)
    headers = {"x-ms-date": date, "x-ms-version": VERSION}
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    # Path-style (emulator) URLs carry the account in the path: it is signed as given,
    # so the account appears twice.
    resource = f"/{account}{path}\nrestype:container"
    string_to_sign = f"{verb}\n\n\n\n\n\n\n\n\n\n\n\n{canonical_headers}{resource}"
    signature = base64.b64encode(
        hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    headers["Authorization"] = f"SharedKey {account}:{signature}"
    headers["Content-Length"] = "0"
    # No body: urllib would add a Content-Type for one, which is signed.
    request = urllib.request.Request(url, method=verb, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as e:
        if (verb, e.code) in (("PUT", 409), ("DELETE", 404)):
            return e.code
        sys.exit(f"{verb} {url}: {e.code} {e.read().decode(errors='replace')}")


def account_sas(account, key, permissions, services="b"):
    """An account SAS for `services`, valid for a day."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    start = (now - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expiry = (now + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = [account, permissions, services, "sco", start, expiry, "", "https,http", VERSION, ""]
    string_to_sign = "\n".join(fields) + "\n"
    signature = base64.b64encode(
        hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    query = {
        "sv": VERSION, "ss": services, "srt": "sco", "sp": permissions, "st": start,
        "se": expiry, "spr": "https,http", "sig": signature,
    }
    return urllib.parse.urlencode(query)


if __name__ == "__main__":
    if len(sys.argv) in (6, 7) and sys.argv[1] == "sas":
        print(account_sas(*sys.argv[3:]))
        sys.exit(0)
    if len(sys.argv) != 6 or sys.argv[1] not in ("create", "delete"):
        sys.exit(__doc__)
    action, endpoint, account, key, container = sys.argv[1:]
    call("PUT" if action == "create" else "DELETE", endpoint, account, key, container)
