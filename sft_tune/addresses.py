"""Addresses of Ray clusters, probed before anything waits on them: a dashboard that never
answers, or an unreachable head, is an input error within seconds, not a silent hang."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from sft_tune.errors import fail

# Seconds an address probe waits for a connection and a reply: a dashboard answers in well under
# a second, and a bad address is a bad-input message, which should come within 2 s.
PROBE_TIMEOUT_ENV = "SFT_TUNE_PROBE_TIMEOUT_S"
PROBE_TIMEOUT_S = "1.5"


def probe_address(option: str, address: str, http: bool = False) -> None:
    """Fail fast, naming the address, when nothing answers there: a TCP connection within the
    probe timeout, and with `http` a reply to GET /api/version (what a Ray dashboard serves)."""
    timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, PROBE_TIMEOUT_S))
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    default = 8265 if http else (10001 if parts.scheme == "ray" else 6379)
    host, port = parts.hostname, parts.port or default
    if not host:
        raise fail(option, address, "must be HOST:PORT or a URL", "e.g. http://HEAD:8265")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise fail(option, address, f"nothing accepted a connection to {host}:{port} within {timeout:g} s ({err})", f"check the address and that the cluster is up (wait longer: {PROBE_TIMEOUT_ENV})") from None  # fmt: skip
    if not http:
        return
    url = f"{parts.scheme}://{parts.netloc}/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (the user's address)
            json.loads(reply.read(65536))
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # a dashboard that wants the token: the client says so
        raise fail(option, address, f"must be a Ray dashboard: GET {url} answered HTTP {err.code}", "pass the head's dashboard address (http://HEAD:8265)") from None  # fmt: skip
    except (OSError, ValueError) as err:
        what = "did not answer" if isinstance(err, (TimeoutError, socket.timeout)) or "timed out" in str(err) else f"did not answer as a Ray dashboard ({err})"  # fmt: skip
        raise fail(option, address, f"accepted the connection but {what} to GET {url} within {timeout:g} s", "pass the head's dashboard address (http://HEAD:8265)") from None  # fmt: skip
