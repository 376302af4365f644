"""The sft-tune cost study in one command: the benchmarks one after another, into bench/RESULTS.md.

    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/all.py [--quick] [--parts core,sweep,...]
    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/all.py --quick --with "sweep --real"

The parts, their presets and the report: bench/README.md, section `all.py`.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    BENCH,
    DEMO_PACKAGES,
    ROOT,
    OtherCPU,
    load_average,
    machine,
    markdown_table,
    others_text,
    parser,
    ram_gib,
    save_report,
    versions,
    watched,
)

LOCK = "/tmp/sft-tune-ray.lock"
# Each part's script, and its options in the full study and in --quick (minutes on 2 busy cores).
SCRIPTS = {"core": "core.py", "sweep": "sweep.py", "memory": "memory.py", "hf": "hf_compare.py"}
SCRIPTS["tokens"] = "memory.py"
TOKENS = "--sweeps A --unlabelled 2000 --steps 10"
PRESETS = {
    "full": {
        "core": "--steps 10 --warmup 2",
        "sweep": "--overhead 120:4:1.05 --overhead 10:8:1.25 --asha-trials 16 "
        "--asha-trial-seconds 10 --folds 3 --threads 1",
        "memory": "--concurrent 2 --unlabelled 500000 --steps 400",
        "tokens": TOKENS,
        "hf": "--model minilm --trials 4 --folds 1 --test-seeds 3",
    },
    "quick": {
        "core": "--steps 2 --warmup 1",
        "sweep": "--overhead 8:3:1.25 --asha-trials 6 --asha-trial-seconds 4 --folds 3 --threads 1",
        "memory": "--concurrent 2 --unlabelled 200000 --steps 120",
        "tokens": TOKENS,
        "hf": "--model tiny --trials 3 --folds 1 --test-seeds 5",
    },
}
DEFAULT_PARTS = "core,sweep,memory,hf"  # memory reports the tokenization passes too
WITH = {"action": "append", "dest": "extra", "metavar": "'PART ARGS'"}
OPTIONS = [
    ("--quick", False, "the quick preset: small sizes of every part"),
    ("--parts", DEFAULT_PARTS, f"comma-separated parts, of {','.join(SCRIPTS)}"),
    ("--with", None, "more options for PART, e.g. --with 'sweep --real'", WITH),
    ("--out", BENCH / "RESULTS.md", "the report (default bench/RESULTS.md)"),
    ("--part-timeout", float, "seconds before a part is stopped (default 5400, quick 900)"),
    ("--logs", Path, "keep each part's stderr in this folder (default: a temp folder, removed)"),
]
NOTES = """\
- The machine is shared: every part reports the cores other processes kept busy while it ran (a
  lower bound from /proc: a process that ends between two samples loses its last second).
  Compared variants run interleaved (core) or back to back (sweep, memory, hf), so load changes
  between them move the ratios.
- core: few timed steps per variant in the quick preset; the mean and median ratios disagree when
  the load changes.
- sweep: trials of seconds in the quick preset, so a sweep's fixed start weighs on the ratio; its
  goals are for trials of 15 s to 2 minutes.
- memory: PSS splits shared pages between the processes mapping them, so the total PSS is the
  machine's memory; sampled every 0.5 s, so a shorter peak can be missed.
- hf: plain fine-tuning only (phase1.steps 0 on the sft-tune side); the tiny random BERT either
  learns the 3 classes or merges two of them depending on the seed: compare means over seeds.
- Not measured here: GPUs (bench/gpu_check.py), several nodes (bench/multinode.py), adapters
  (bench/adapters.py), bad input (bench/bad_input.py), W&B online."""


def parse_args(argv: list[str] | None = None):
    p = parser(__doc__, OPTIONS)
    args = p.parse_args(argv)
    args.preset = "quick" if args.quick else "full"
    args.part_timeout = args.part_timeout or (900.0 if args.quick else 5400.0)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    extra = {
        name: shlex.split(more) for name, _, more in (w.partition(" ") for w in args.extra or [])
    }
    if not args.parts or not set(args.parts) | set(extra) <= set(SCRIPTS):
        p.error(f"--parts and --with name parts of {', '.join(SCRIPTS)}")
    args.commands = {
        name: [sys.executable, str(BENCH / SCRIPTS[name])]
        + shlex.split(PRESETS[args.preset][name])
        + extra.get(name, [])
        for name in args.parts
    }
    return args


def invocation() -> tuple[str, bool]:
    """The command as typed (the `flock` ancestor's command line when there is one), and whether
    this process runs under the Ray lock."""
    pid = os.getppid()
    for _ in range(6):
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if argv and Path(argv[0]).name == "flock" and LOCK in argv:
            return shlex.join(argv), True
    return shlex.join([os.path.relpath(sys.executable), *sys.argv]), False


def run_part(cmd: list[str], timeout: float, log: Path, others: OtherCPU) -> dict[str, Any]:
    """Run one part in its own session, echoing its stdout (its report) and sending its stderr to
    `log`; stop it (SIGTERM, then SIGKILL of its group) after `timeout`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("RAY_ADDRESS", None)
    shown = shlex.join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd)
    print(f"[all] {shown}", flush=True)
    window: dict[str, Any] = {}
    lines: list[str] = []
    with watched(window, others), open(log, "w") as errors:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
            start_new_session=True,
        )  # fmt: skip

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                print(line, end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit status {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
        finally:
            stop(proc)
            reader.join(timeout=10)
    if status != "ok":
        lines += ["", f"--- {status}; the last lines of its stderr:"]
        lines += log.read_text(errors="replace").splitlines()[-20:]
    report = [line for line in lines if not line.startswith("RESULT_JSON ")]
    return {"status": status, "command": shown, "report": report, **window}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the part (the benchmarks stop Ray and clean up on it), then SIGKILL its group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def write_report(args, meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    lock = "" if meta["locked"] else f" (NOT run under `flock {LOCK}`)"
    lines = [
        "# sft-tune cost study",
        "",
        f"Written by `bench/all.py` ({args.preset} preset). Ratios measured side by side are the "
        "point; absolute times depend on how busy this shared machine was.",
        "",
        f"- **Date**: {meta['started']} to {now()} (UTC)",
        f"- **Command**: `{meta['command']}`{lock}",
        f"- **Machine**: {machine()}, {ram_gib()} RAM; load average {meta['load']} at start, "
        f"{load_average()} at end",
        f"- **Versions**: {', '.join(versions(('tokenizers', 'accelerate', *DEMO_PACKAGES)))}",
        "",
    ]
    rows = [
        [name, f"`{r['command']}`", f"{r.get('seconds', 0):.0f}", others_text(r.get("others")),
         r["status"]]
        for name, r in results.items()
    ]  # fmt: skip
    lines += markdown_table(["part", "command", "seconds", "other processes", "status"], rows)
    goals = [
        f"- {name}: {line.strip()}"
        for name, r in results.items()
        for line in r["report"]
        if "goal" in line.lower() and not line.startswith("==")
    ]
    lines += ["", "## The goals, as each part printed them", "", *goals]
    for name, r in results.items():
        lines += ["", f"## {name} (bench/{SCRIPTS[name]})", "", "```", *r["report"], "```"]
    lines += ["", "## Approximate or left out", "", NOTES, ""]
    save_report(args.out, "\n".join(lines))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, locked = invocation()
    if not locked:
        print(f"[all] WARNING: not run under `flock {LOCK}`: Ray users may collide", flush=True)
    temp = None if args.logs else tempfile.TemporaryDirectory(prefix="sft-bench-all-")
    logs = args.logs.resolve() if args.logs else Path(temp.name)
    logs.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "locked": locked, "started": now(), "load": load_average()}
    print(f"[all] {args.preset} preset, parts {','.join(args.parts)}; {machine()}", flush=True)
    others = OtherCPU()
    results: dict[str, dict[str, Any]] = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(130))
    try:
        for name, cmd in args.commands.items():
            results[name] = run_part(cmd, args.part_timeout, logs / f"{name}.log", others)
            print(f"[all] {name}: {results[name]['status']}", flush=True)
            write_report(args, meta, results)  # after every part: a stopped run keeps its figures
        return 0 if all(r["status"] == "ok" for r in results.values()) else 1
    finally:
        others.stop()
        if temp is not None:
            temp.cleanup()
        print(f"[all] wrote {args.out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
