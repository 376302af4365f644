"""Helpers for tests of Ray Jobs: a project folder to submit, and a real Ray head owned by the test.

The head is `ray start --head --block` in its own process group and its own temp dir, stopped
through that group. Never `ray stop`: it ends every Ray process on the machine, other people's
included; and the default temp dir would make their `ray.init()` attach to this head (it reads
/tmp/ray/ray_current_cluster)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
from conftest import make_toy_files

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started"


SECRET_DECOYS = (".env", "credentials.json", ".ray-token/auth_token", "deploy.pem")


def make_project(folder: Path, tracked: dict[str, str] | None = None) -> dict[str, Path]:
    """A git project with secret decoys (`.env` tracked, the others not), an untracked
    `scratch.txt`, toy data under the git-ignored `data/`, and `tracked` files added to git.
    Returns the toy data files as paths relative to the project."""
    folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    files = {
        ".gitignore": "data/\nsweeps/\n",
        "notes.md": "# a project\n",
        "vocab/tokenizer.json": "{}\n",  # a tokenizer file: not a secret
        **(tracked or {}),
    }
    for name in (*files, *SECRET_DECOYS, "scratch.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(files.get(name, "decoy-secret\n"))
    subprocess.run(["git", "-C", str(folder), "add", *files, ".env"], check=True)
    (folder / "data").mkdir()
    return {key: path.relative_to(folder) for key, path in make_toy_files(folder / "data").items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def short_temp_dir() -> Path:
    """A temp dir for Ray's session files, short enough for its unix socket paths (108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))


def job_env(**extra: str) -> dict[str, str]:
    """The environment for a head whose job drivers run `python` from this test venv first."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def running_head(
    command: list[str] | str, env: dict[str, str], log: Path, timeout_s: float = 240
) -> Iterator[subprocess.Popen]:
    """Run a `ray start --head --block ...` command (a list, or a bash line); yield once the head
    says it started; then stop the head and everything it started, by process group and PID."""
    shell = isinstance(command, str)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command] if shell else command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it touches nothing else
        )
    try:
        deadline = time.monotonic() + timeout_s
        while STARTED not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"ray start did not start (exit {proc.poll()}):\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group, then SIGKILL it and any descendant that left the group."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        _, family = psutil.wait_procs(family, timeout=wait_s)
        if sig == signal.SIGKILL:
            for child in family:
                with suppress(psutil.NoSuchProcess):
                    child.kill()
    proc.wait(timeout=30)


def killed_driver(folder: Path, space: Path, hook: str, value: str) -> None:
    """Run `sft-tune search --space SPACE` in a child that a fault hook kills (SIGKILL) at that
    point (see sft_tune.sweep.faults: the SFT_TUNE_KILL_DRIVER_* hooks), then end its process
    group (its own Ray processes) by PID."""
    env = {**os.environ, "RAY_ADDRESS": "", "WANDB_MODE": "offline", hook: value}
    driver = subprocess.Popen(
        [sys.executable, "-m", "sft_tune", "search", "--space", str(space), "--no-select"],
        cwd=folder,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert driver.wait(timeout=600) == -signal.SIGKILL
    finally:
        with suppress(ProcessLookupError):  # the driver's own Ray processes share its group
            os.killpg(driver.pid, signal.SIGKILL)
