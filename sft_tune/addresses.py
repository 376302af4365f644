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


def refuse_ray_client(option: str, address: str) -> None:
    """A sweep's driver must run where its files and callbacks are: Ray Client (ray://) would run
    the Tuner as a remote actor on the head, where the progress view, W&B, the sweep's files and
    --resume would not work as they should."""
    if address.startswith("ray://"):
        raise fail(
            option,
            address,
            "a sweep does not run through Ray Client (ray://): its Tuner would run as a remote "
            "actor on the head, away from the sweep's files, progress view and W&B runs",
            "submit the search as a Ray Job (sft-tune submit --address http://HEAD:8265 -- "
            "search --space FILE), or run it on a cluster node with --address HEAD:6379 (or auto)",
        )


def probe_address(option: str, address: str, http: bool = False) -> None:
    """Fail fast, naming the address, when nothing answers there: a TCP connection within the
    probe timeout, then with `http` a reply to GET /api/version (what a Ray dashboard serves),
    else an HTTP/2 answer (what the gRPC servers of a Ray head, GCS or Ray Client, give)."""
    timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, PROBE_TIMEOUT_S))
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    default = 8265 if http else (10001 if parts.scheme == "ray" else 6379)
    host, port = parts.hostname, parts.port or default
    if not host:
        raise fail(option, address, "must be HOST:PORT or a URL", "e.g. http://HEAD:8265")
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise fail(
            option,
            address,
            f"nothing accepted a connection to {host}:{port} within {timeout:g} s ({err})",
            f"check the address and that the cluster is up (wait longer: {PROBE_TIMEOUT_ENV})",
        ) from None
    if not http:
        with connection:
            _probe_grpc(connection, option, address, f"{host}:{port}", timeout)
        return
    connection.close()
    url = f"{parts.scheme}://{parts.netloc}/api/version"
    try:
        # the address is the user's own (ruff S310 asks for a check of the URL's scheme)
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
            json.loads(reply.read(65536))
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # a dashboard that wants the token: the client says so
        raise fail(
            option,
            address,
            f"must be a Ray dashboard: GET {url} answered HTTP {err.code}",
            "pass the head's dashboard address (http://HEAD:8265)",
        ) from None
    except (OSError, ValueError) as err:
        what = (
            "did not answer"
            if isinstance(err, (TimeoutError, socket.timeout)) or "timed out" in str(err)
            else f"did not answer as a Ray dashboard ({err})"
        )
        raise fail(
            option,
            address,
            f"accepted the connection but {what} to GET {url} within {timeout:g} s",
            "pass the head's dashboard address (http://HEAD:8265)",
        ) from None


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (a Ray head's GCS, the Ray
# Client server) answers them with its own SETTINGS frame (RFC 9113, section 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS = 0x4


def _probe_grpc(
    connection: socket.socket, option: str, address: str, where: str, timeout: float
) -> None:
    """The peer must answer HTTP/2 within the timeout, as Ray's gRPC servers do: a server that
    accepts and never answers, or one that speaks something else, is not a Ray head."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS cluster answers only after a handshake: Ray's own connect says the rest
    try:
        connection.sendall(H2_PREFACE)
        frame = connection.recv(9)
    except OSError as err:
        what = (
            "did not answer"
            if isinstance(err, (TimeoutError, socket.timeout))
            else f"dropped the connection ({err})"
        )
        raise fail(
            option,
            address,
            f"{where} accepted the connection but {what} within {timeout:g} s, as a Ray head's "
            "GCS answers at once",
            "pass the head's GCS address (HOST:6379, printed by `ray start --head`) (wait "
            f"longer: {PROBE_TIMEOUT_ENV})",
        ) from None
    if len(frame) < 9 or frame[3] != SETTINGS:
        raise fail(
            option,
            address,
            f"{where} answered, but not as a Ray head (its GCS speaks gRPC; it sent "
            f"{frame[:16]!r})",
            "pass the head's GCS address (HOST:6379, printed by `ray start --head`), not the "
            "dashboard's",
        ) from None
