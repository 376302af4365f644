"""A real S3 API on 127.0.0.1 for tests: moto's server (the `moto[server]` test extra), stopped by
its PID, with dummy keys and the AWS settings every process started after it reads (libarrow
reads AWS_ENDPOINT_URL, so Ray's storage, pyarrow and sft-tune all reach it)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3(log: Path, bucket: str) -> Iterator:
    """moto's S3 server, the AWS settings in os.environ, and one bucket; yields a pyarrow
    S3FileSystem on it."""
    import pyarrow.fs

    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto's server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        filesystem = pyarrow.fs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
        )
        filesystem.create_dir(bucket)
        yield filesystem
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def objects(filesystem, prefix: str) -> dict[str, int]:
    """Every object under `prefix` (bucket/path) and its size, by path relative to `prefix`."""
    from pyarrow.fs import FileSelector, FileType

    infos = filesystem.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True))
    return {info.path[len(prefix) + 1 :]: info.size for info in infos if info.type == FileType.File}
