"""Run every case of the bad-input corpus (`cases.yaml`) and record what each did.

    python tests/bad_input/runner.py                     # JSON results on stdout
    python tests/bad_input/runner.py --output r.json     # JSON to r.json, a summary on stdout
    python tests/bad_input/runner.py --only data-csv     # the data-csv-* cases

One interpreter runs them all: it imports the CLI once, then forks a child per case, so a case
pays no interpreter start, yet each starts from the same light module state (a module that one
case imports cannot hide another case's import of it) and a crash, hang or stray process stays
in that case. Each case runs `sft_tune.cli.main(argv)` in a fresh working folder with its own
empty HOME, caches and TMPDIR, and records: the exit code, stdout and stderr, the heavy modules
it imported, the heavy files it opened and any file it opened for writing (an audit hook on
`open`), what changed in its folders, and any connection it tried beyond 127.0.0.1 (refused).
Files that Rust code opens (safetensors, tokenizers) escape the hook; importing their modules
does not. `corpus.check` says what is wrong with a record; `test_bad_input.py` asserts on it.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corpus import CASE_TIMEOUT_S, CASES_FILE, FILES, Case, load_cases, selected, summary

# Loading any of these is heavy work that a bad input must not cost.
HEAVY_MODULES = (
    "torch",
    "transformers",
    "ray",
    "datasets",
    "sklearn",
    "tokenizers",
    "safetensors",
    "seqeval",
    "wandb",
    "gguf",
    "accelerate",
)
# Weights and tokenizer files; a model's config.json may be read.
HEAVY_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
HEAVY_NAMES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Light modules every case needs, imported once before the children fork.
PRELOAD = ("yaml", "pydantic", "optuna", "sft_tune.cli", "sft_tune.config")
# The environment of every case (the tool's own settings; no token, no cluster).
FIXED_ENV = {
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "SFT_TUNE_PROBE_TIMEOUT_S": "1",
}
CLEARED_ENV = (
    "RAY_ADDRESS",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "HF_DATASETS_CACHE",
    "HF_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "WANDB_DIR",
    "WANDB_API_KEY",
)


# ---- the audit hook ------------------------------------------------------------------------

_AUDIT: dict[str, Any] = {"on": False}


def _reset_audit() -> None:
    _AUDIT.update(on=False, opens=[], writes=[], imports=[], connects=[], refused=[], processes=[])


def _audit(event: str, args: tuple) -> None:
    """Record heavy opens and imports; refuse traffic beyond 127.0.0.1 and Ray's processes."""
    if not _AUDIT["on"]:
        return
    if event == "open":
        path, flags = args[0], args[2]
        if isinstance(path, (str, bytes, os.PathLike)):
            text = os.fsdecode(path)
            name = os.path.basename(text)
            if name in HEAVY_NAMES or name.endswith(HEAVY_SUFFIXES):
                _AUDIT["opens"].append(text)
            # Anywhere, not only in the watched folders (bytecode caches and devices aside).
            quiet = "__pycache__" in text or text.startswith("/dev/")
            if isinstance(flags, int) and flags & WRITING and not quiet:
                _AUDIT["writes"].append(text)
    elif event == "import":
        top = str(args[0]).partition(".")[0]
        if top in HEAVY_MODULES and top not in _AUDIT["imports"]:
            _AUDIT["imports"].append(top)
    elif event in ("socket.connect", "socket.getaddrinfo"):
        address = args[1] if event == "socket.connect" else args[0]
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if (
            isinstance(host, str)
            and host
            and not host.startswith(("/", "\0"))
            and host not in LOCAL_HOSTS
        ):
            _AUDIT["refused"].append(f"{event} {address!r}")
            raise PermissionError(f"bad-input runner: no traffic beyond 127.0.0.1 ({address!r})")
        if event == "socket.connect":
            _AUDIT["connects"].append(repr(address))
    elif event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1] or args[0]]
        line = " ".join(os.fsdecode(a) for a in argv if a is not None)
        _AUDIT["processes"].append(line[:300])
        if any(part in line for part in ("raylet", "gcs_server", "ray/dashboard", "ray start")):
            _AUDIT["refused"].append(f"process {line[:200]}")
            raise PermissionError("bad-input runner: a bad input must not start Ray")


# ---- servers on 127.0.0.1 ------------------------------------------------------------------


def _answering(status: int, body: bytes, kind: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def start_servers() -> tuple[dict[str, int], int, socket.socket]:
    """The addresses the cases point at: (ports by placeholder, server process id, the silent
    socket). The HTTP servers run in a forked process, so this one stays single-threaded."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once closed
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
    page = b"<html><body>a web page, not a Ray dashboard</body></html>"
    servers = {
        "html_port": http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), _answering(200, page, "text/html")
        ),
        "notfound_port": http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), _answering(404, b"not found", "text/plain")
        ),
        "auth_port": http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), _answering(401, b'{"error": "unauthorized"}', "application/json")
        ),
    }
    ports = {name: server.server_address[1] for name, server in servers.items()}
    ports.update(closed_port=closed, silent_port=silent.getsockname()[1])
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the server process: serves until the runner is gone
        try:
            for server in servers.values():
                threading.Thread(target=server.serve_forever, daemon=True).start()
            while os.getppid() == parent:
                time.sleep(0.5)
        finally:
            os._exit(0)
    for server in servers.values():
        server.server_close()
    return ports, pid, silent


def fill(text: str, ports: dict[str, int]) -> str:
    for name, port in ports.items():
        text = text.replace("{" + name + "}", str(port))
    return text


# ---- one case ------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, list]:
    """Every file and folder under `folder`: relative path -> [kind, size, mtime_ns]."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            info = path.lstat()
            kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
            size = 0 if kind == "dir" else info.st_size
            mtime = 0 if kind == "dir" else info.st_mtime_ns
            found[str(path.relative_to(folder))] = [kind, size, mtime]
    return found


def changes(before: dict[str, list], after: dict[str, list], label: str) -> list[str]:
    """What appeared, vanished or changed between two snapshots, e.g. "created work/x.json"."""
    found = [f"created {label}/{name}" for name in sorted(set(after) - set(before))]
    found += [f"deleted {label}/{name}" for name in sorted(set(before) - set(after))]
    found += [
        f"changed {label}/{name}"
        for name in sorted(set(before) & set(after))
        if before[name] != after[name]
    ]
    return found


def prepare(case: Case, folder: Path) -> None:
    """The case's working folder (`folder/work`) with its files, and its empty caches."""
    work = folder / "work"
    work.mkdir(parents=True)
    for destination, source in case.files.items():
        target = work / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, dict):
            target.write_text(source["text"])
        elif (FILES / source).is_dir():
            shutil.copytree(FILES / source, target)
        else:
            shutil.copy2(FILES / source, target)
    for name in ("home", "cache", "xdg", "hf", "tmp"):
        (folder / "env" / name).mkdir(parents=True)


def case_env(folder: Path) -> dict[str, str]:
    """HOME and every cache a case could write to, inside its own empty folders."""
    env = folder / "env"
    return {
        "HOME": str(env / "home"),
        "SFT_TUNE_CACHE": str(env / "cache"),
        "XDG_CACHE_HOME": str(env / "xdg"),
        "HF_HOME": str(env / "hf"),
        "TMPDIR": str(env / "tmp"),
    }


def run_case(case: Case, folder: Path, ports: dict[str, int], baseline: list[str]) -> dict:
    """Run one case in this (forked) process and return its record."""
    argv = [fill(arg, ports) for arg in case.argv]
    record: dict[str, Any] = {
        "id": case.id,
        "argv": argv,
        "expect": [fill(item, ports) for item in case.expect],
        "absent": case.absent,
    }
    os.environ.update(case_env(folder))
    os.environ.update({key: fill(value, ports) for key, value in case.env.items()})
    tempfile.tempdir = None  # the case's TMPDIR, not the runner's; its first use writes a
    tempfile.gettempdir()  # probe file there, which is Python's doing, not the case's
    work, env = folder / "work", folder / "env"
    os.chdir(work)
    before = snapshot(work), snapshot(env)
    modules = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    code, crash = None, None
    started = time.perf_counter()
    sys.stdout, sys.stderr = out, err
    _AUDIT["on"] = True
    try:
        from sft_tune.cli import main

        code = main(argv)
    except SystemExit as exit_:  # argparse exits this way
        if isinstance(exit_.code, str):  # what Python would print before exiting with 1
            err.write(exit_.code + "\n")
        code = 1 if isinstance(exit_.code, str) else exit_.code or 0
    except BaseException:
        crash = traceback.format_exc()
    finally:
        _AUDIT["on"] = False
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    seconds = time.perf_counter() - started
    loaded = {name.partition(".")[0] for name in set(sys.modules) - modules}
    heavy = sorted(set(baseline) | (loaded & set(HEAVY_MODULES)) | set(_AUDIT["imports"]))
    record.update(
        exit_code=code,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        crash=crash,
        seconds=round(seconds, 3),
        heavy_imports=heavy,
        heavy_import_events=list(_AUDIT["imports"]),
        heavy_opens=sorted(set(_AUDIT["opens"])),
        written=changes(before[0], snapshot(work), "work")
        + changes(before[1], snapshot(env), "env")
        + [f"opened for writing {path}" for path in sorted(set(_AUDIT["writes"]))],
        connects=_AUDIT["connects"],
        refused=_AUDIT["refused"],
        processes=_AUDIT["processes"],
    )
    return record


def _child(case: Case, folder: Path, ports: dict[str, int], baseline: list[str], pipe: int) -> None:
    """The forked process of one case: its own process group (a timeout kills what it started
    too), fd 1 and 2 into a file (C-level output stays out of the runner's stdout)."""
    try:
        os.setpgid(0, 0)
        log = os.open(folder / "fd_output.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        record = run_case(case, folder, ports, baseline)
        sys.stdout.flush()
        sys.stderr.flush()
        record["fd_output"] = (folder / "fd_output.txt").read_text(errors="replace")[-20000:]
        payload = json.dumps(record, default=str).encode()
    except BaseException:
        payload = json.dumps({"id": case.id, "runner_error": traceback.format_exc()}).encode()
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(pipe, view) :]
    finally:
        os._exit(0)


# ---- all cases -----------------------------------------------------------------------------


@dataclass
class _Running:
    case: Case
    pid: int
    started: float
    chunks: list[bytes] = field(default_factory=list)


def _start(
    case: Case, root: Path, ports: dict[str, int], baseline: list[str]
) -> tuple[int, _Running]:
    """Prepare a case's folders and fork its process: (the pipe its record comes on, it)."""
    folder = root / case.id
    prepare(case, folder)
    read, write = os.pipe()
    sys.stdout.flush()  # else the child inherits (and writes again) what is buffered here
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(case, folder, ports, baseline, write)
    os.close(write)
    return read, _Running(case, pid, time.monotonic())


def _finish(running: _Running, timed_out: bool) -> dict[str, Any]:
    """Reap a case's process (and anything left in its group) and decode its record."""
    if timed_out:
        _kill_group(running.pid)
    _, status = os.waitpid(running.pid, 0)
    leftover = _kill_group(running.pid)
    seconds = round(time.monotonic() - running.started, 3)
    if timed_out:
        return _failed(running.case, f"killed after {seconds:.0f} s", seconds, timed_out=True)
    try:
        record = json.loads(b"".join(running.chunks))
    except ValueError:
        return _failed(running.case, f"its process died (wait status {status}) with no record")
    if "runner_error" in record:
        return _failed(running.case, record["runner_error"], seconds)
    record["leftover_processes"] = leftover
    return record


def _failed(case: Case, crash: str, seconds: float = 0.0, timed_out: bool = False) -> dict:
    """The record of a case that left none of its own."""
    return {
        **{"id": case.id, "argv": case.argv, "expect": case.expect, "absent": case.absent},
        **{"exit_code": None, "crash": crash, "seconds": seconds, "timed_out": timed_out},
    }


def _kill_group(pid: int) -> bool:
    """Kill the process group this runner made for one case; True when something was left."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _run_children(
    cases: list[Case],
    root: Path,
    ports: dict[str, int],
    baseline: list[str],
    jobs: int,
    timeout: float,
) -> dict[str, Any]:
    """Every case in its own forked process, `jobs` at a time; their records by id."""
    results: dict[str, Any] = {}
    queue, running = list(cases), {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                case = queue.pop(0)
                try:
                    read, item = _start(case, root, ports, baseline)
                except Exception:
                    results[case.id] = _failed(case, traceback.format_exc())
                    continue
                running[read] = item
            ready, _, _ = select.select(list(running), [], [], 0.5)
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if data:
                    running[fd].chunks.append(data)
                    continue
                item = running.pop(fd)
                os.close(fd)
                results[item.case.id] = _finish(item, timed_out=False)
            for fd, item in list(running.items()):
                if time.monotonic() - item.started > timeout:
                    running.pop(fd)
                    os.close(fd)
                    results[item.case.id] = _finish(item, timed_out=True)
    finally:
        for fd, item in running.items():  # interrupted: stop what still runs
            os.close(fd)
            _finish(item, timed_out=True)
    return results


def run_all(
    cases: list[Case], jobs: int = 1, timeout: float = CASE_TIMEOUT_S, keep: bool = False
) -> dict[str, Any]:
    """Run every case, each in a forked child of this process; returns {"meta", "results"}."""
    for key in CLEARED_ENV:
        os.environ.pop(key, None)
    os.environ.update(FIXED_ENV)
    root = Path(tempfile.mkdtemp(prefix="sft-tune-bad-input-"))
    ports, server, silent = start_servers()
    preload_error = None
    try:
        for name in PRELOAD:
            __import__(name)
    except BaseException:
        preload_error = traceback.format_exc()
    baseline = sorted({name.partition(".")[0] for name in sys.modules} & set(HEAVY_MODULES))
    _reset_audit()
    sys.addaudithook(_audit)
    started = time.monotonic()
    try:
        results = _run_children(cases, root, ports, baseline, jobs, timeout)
    finally:
        os.kill(server, signal.SIGKILL)
        os.waitpid(server, 0)
        silent.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    meta = {
        "python": sys.version.split()[0],
        "cases": len(cases),
        "seconds": round(time.monotonic() - started, 1),
        "baseline_heavy_imports": baseline,
        "preload_error": preload_error,
        "folder": str(root) if keep else None,
    }
    return {"meta": meta, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the JSON here; print a summary")
    parser.add_argument(
        "--only", nargs="+", default=None, help="ids, or id prefixes such as data-csv, to run"
    )
    parser.add_argument("--jobs", type=int, default=1, help="cases at once (default 1)")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    parser.add_argument("--keep", action="store_true", help="keep the working folders")
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help="the case list")
    args = parser.parse_args()
    cases = load_cases(args.cases)
    if args.only:
        cases = selected(cases, args.only)
    run = run_all(cases, args.jobs, args.timeout, args.keep)
    run["cases"] = [asdict(case) for case in cases]
    if args.output is None:
        json.dump(run, sys.stdout, indent=1)
        print()
        return
    args.output.write_text(json.dumps(run, indent=1))
    print(summary(cases, run))


if __name__ == "__main__":
    main()
