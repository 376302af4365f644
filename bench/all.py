#!/usr/bin/env python
"""The sft-tune cost study in one command: every benchmark side by side, written to
bench/RESULTS.md.

    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/all.py [--quick] [--parts core,sweep,tokens,memory,hf] ...

Parts, each run as a subprocess with its own time limit (a part that fails or times out is written
down as failed with its error; the others still run):

  core    bench/core.py: phase-1 step time naive / sft-tune, phase-2 step time Trainer / sft-tune,
          achieved share of the machine's fp32 matmul peak (MiniLM-L6 + tweets).
  sweep   bench/sweep.py: sweep wall time against the same configurations trained back to back in
          one process; ASHA against no scheduler (compute, wall time, best CV).
  memory  bench/memory.py: peak memory (PSS/RSS/USS of the driver, Ray's daemons and workers, and the
          object store) of N concurrent trials against one, against the tokenized data's size.
  tokens  tokenization passes per sweep (summary.json) and per trial (worker_tokenization_passes):
          read from the memory part's sweeps, or from `bench/memory.py --sweeps A` when memory is not run.
  hf      bench/hf_compare.py: sft-tune search + select against Hugging Face
          `Trainer.hyperparameter_search` (optuna) on the same model, data, trials and ranges.

The machine is shared: ratios measured side by side are the point, not absolute times. While each
part runs, this process measures how many cores processes outside its own tree kept busy (from
/proc) and writes it next to the part's figures. Everything that starts Ray must hold the lock
/tmp/sft-tune-ray.lock, so run this whole command under `flock` (it does not take the lock itself:
its parts run inside it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    BENCH,
    DEMO_PACKAGES,
    ROOT,
    OtherCPU,
    cpu_name,
    load_average,
    markdown_table,
    mean_std,
    others_text,
    ram_gib,
    save_report,
    versions,
    watched,
)

PARTS = ("core", "sweep", "tokens", "memory", "hf")
RUN_ORDER = ("core", "sweep", "memory", "tokens", "hf")  # tokens reads the memory part's sweeps
LOCK = "/tmp/sft-tune-ray.lock"

# Sizes: the full study, and --quick (a few minutes of each part on 2 busy cores).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "core_steps": 10,
        "core_warmup": 2,
        "sweep_overhead": "120:4:1.05,10:8:1.25",
        "asha_trials": 16,
        "asha_trial_seconds": 10.0,
        "sweep_folds": 3,
        "memory_concurrent": 2,
        "memory_unlabelled": 500_000,
        "memory_steps": 400,
        "hf_model": "minilm",
        "hf_trials": 4,
        "hf_folds": 1,
        "hf_test_seeds": 3,
        "part_timeout": 5400.0,
    },
    "quick": {
        "core_steps": 2,
        "core_warmup": 1,
        "sweep_overhead": "8:3:1.25",
        "asha_trials": 6,
        "asha_trial_seconds": 4.0,
        "sweep_folds": 3,
        "memory_concurrent": 2,
        "memory_unlabelled": 200_000,
        "memory_steps": 120,
        "hf_model": "tiny",
        "hf_trials": 3,
        "hf_folds": 1,
        "hf_test_seeds": 5,
        "part_timeout": 900.0,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the quick preset: small sizes of every part (a few minutes each on 2 busy cores)",
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH / "RESULTS.md",
        help="the report (default bench/RESULTS.md)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (= CPUs of a Train worker) of core, sweep and hf, the same on both "
        "sides of each "
        "comparison (default: all cores for MiniLM runs, 1 for the tiny BERT: more threads only "
        "wait for busy cores)",
    )
    p.add_argument(
        "--part-timeout",
        type=float,
        default=None,
        help="seconds before a part is stopped and reported as failed (default 5400, quick 900)",
    )
    p.add_argument(
        "--logs",
        type=Path,
        default=None,
        help="keep each part's full output in this folder (default: a temp folder, removed)",
    )
    g = p.add_argument_group("sizes (defaults from the preset; --quick changes them)")
    g.add_argument(
        "--core-steps", type=int, help="core: timed steps per variant and phase (full 10, quick 2)"
    )
    g.add_argument("--core-warmup", type=int, help="core: untimed warm-up steps (full 2, quick 1)")
    g.add_argument(
        "--sweep-overhead",
        help="sweep: overhead sweeps, comma-separated SECONDS:TRIALS:GOAL (full "
        "120:4:1.05,10:8:1.25, quick 8:3:1.25)",
    )
    g.add_argument(
        "--asha-trials", type=int, help="sweep: trials of each ASHA / none sweep (full 16, quick 6)"
    )
    g.add_argument(
        "--asha-trial-seconds",
        type=float,
        help="sweep: training seconds of one full ASHA trial (full 10, quick 4)",
    )
    g.add_argument("--sweep-folds", type=int, help="sweep: k (full 3, quick 3)")
    g.add_argument(
        "--sweep-real",
        action="store_true",
        help="sweep: MiniLM + tweets instead of the tiny BERT + toy data",
    )
    g.add_argument(
        "--no-wandb",
        action="store_true",
        help="sweep: no W&B callback (default offline W&B, as run_search does)",
    )
    g.add_argument(
        "--memory-concurrent", type=int, help="memory: N concurrent trials (full 2, quick 2)"
    )
    g.add_argument(
        "--memory-unlabelled",
        type=int,
        help="memory: synthetic unlabelled sentences (full 500000, quick 200000)",
    )
    g.add_argument(
        "--memory-steps", type=int, help="memory: phase1.steps per fold (full 400, quick 120)"
    )
    g.add_argument(
        "--hf-model",
        choices=["tiny", "minilm"],
        help="hf: model and data (full minilm, quick tiny)",
    )
    g.add_argument("--hf-trials", type=int, help="hf: trials on each side (full 4, quick 3)")
    g.add_argument(
        "--hf-folds",
        type=int,
        help="hf: sft-tune's k (full 1 and quick 1: a holdout split, as the Trainer's)",
    )
    g.add_argument(
        "--hf-epochs", help="hf: epoch range LOW,HIGH (default 1,3 for minilm, 3,8 for tiny)"
    )
    g.add_argument(
        "--hf-train-size",
        type=int,
        help="hf: labelled examples (default: tiny 300 toy ones, minilm all 300 tweets)",
    )
    g.add_argument(
        "--hf-test-size",
        type=int,
        help="hf: test examples (default: tiny 600 toy ones, minilm all 1500 tweets)",
    )
    g.add_argument(
        "--hf-test-seeds",
        type=int,
        help="hf: seeds the best configuration is retrained with on each side (full 3, quick 5)",
    )
    g.add_argument(
        "--hf-lr",
        help="hf: learning-rate range LOW,HIGH, log scale (default 1e-5,3e-4 for minilm, "
        "1e-3,3e-2 for tiny)",
    )
    args = p.parse_args(argv)
    args.preset = "quick" if args.quick else "full"
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown or not args.parts:
        p.error(f"--parts: unknown part(s) {unknown}; valid parts: {', '.join(PARTS)}")
    return args


# ----------------------------------------------------------------------------- machine


def invocation() -> tuple[str, bool]:
    """The command as typed (the `flock` ancestor's command line when there is one), and whether
    this process runs under the Ray lock."""
    pid = os.getppid()
    for _ in range(6):
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if argv and Path(argv[0]).name == "flock" and LOCK in argv:
            return shlex.join(argv), True
        pid = ppid
    python = (
        os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable
    )
    return shlex.join([python, *sys.argv]), False


# ----------------------------------------------------------------------------- running a part


class Interrupted(Exception):
    pass


def _interrupt(signum, frame) -> None:
    raise Interrupted(f"signal {signum}")


def run_child(
    name: str, cmd: list[str], timeout: float, log: Path, others: OtherCPU
) -> dict[str, Any]:
    """Run one part's command in its own session, echoing its output with a prefix; stop it
    (SIGTERM, then SIGKILL of its group) after `timeout`. Returns rc, lines, seconds and the cores
    that processes outside this tree kept busy meanwhile."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("RAY_ADDRESS", None)
    shown = shlex.join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd)
    print(f"[all] {name}: {shown}", flush=True)
    window: dict[str, Any] = {}
    lines: list[str] = []
    with watched(window, others), open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

        def pump() -> None:
            for line in proc.stdout:
                handle.write(line)
                lines.append(line.rstrip("\n"))
                print(f"[{name}] {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            stop(proc)
        except BaseException:
            stop(proc)
            raise
        finally:
            reader.join(timeout=10)
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "lines": lines,
        "seconds": window["seconds"],
        "others": window["others"],
        "load": window["load"],
        "command": shown,
    }


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


def result_json(lines: list[str]) -> dict[str, Any]:
    for line in reversed(lines):
        if line.startswith("RESULT_JSON "):
            return json.loads(line.removeprefix("RESULT_JSON "))
    raise ValueError("no RESULT_JSON line in the output")


def failure(run: dict[str, Any] | None, err: BaseException | None = None) -> str:
    """One-line reason and the output's last lines."""
    if err is not None:
        reason = f"{type(err).__name__}: {err}"
    elif run["timed_out"]:
        reason = f"stopped after the part time limit ({run['seconds']:.0f} s)"
    else:
        reason = f"exit status {run['rc']}"
    tail = [line for line in (run or {}).get("lines", []) if line.strip()][-15:]
    return reason + ("\n" + "\n".join(tail) if tail else "")


# ----------------------------------------------------------------------------- parts
#
# Each part returns {"rows": [[figure, value, goal/expected]], "details": [markdown lines]} or
# raises.


def threads(args: argparse.Namespace, big: bool) -> int:
    """--threads, else all cores for MiniLM and 1 for the tiny BERT (on a shared machine, OpenMP
    threads of a tiny model mostly wait for a busy core: steps get several times slower)."""
    return args.threads or ((os.cpu_count() or 1) if big else 1)


def part_core(args: argparse.Namespace, run: Callable) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(BENCH / "core.py"),
        "--steps",
        str(args.core_steps),
        "--warmup",
        str(args.core_warmup),
        "--threads",
        str(threads(args, big=True)),
    ]
    r = run(cmd)
    text = "\n".join(r["lines"])
    if r["rc"] != 0:
        raise PartFailed(r)
    ratio = re.compile(
        r"(phase \d)\s+(\w+) / sft-tune\s+=\s+([\d.]+)x mean wall time \(medians ([\d.]+)x, "
        r"minima ([\d.]+)x, CPU seconds ([\d.]+)x\)\s+goal >= ([\d.]+)\s+(.+)$",
        re.M,
    )
    found = {m.group(1): m for m in ratio.finditer(text)}
    peak = re.search(
        r"achieved / peak: phase 1 sft-tune ([\d.]+)%, phase 2 sft-tune ([\d.]+)%", text
    )
    gflops = re.search(r"-> peak ([\d.]+) GFLOP/s", text)
    busy = re.search(r"other processes kept ([\d.]+) \(phase 1\) and ([\d.]+) \(phase 2\)", text)
    if len(found) != 2 or not peak:
        raise ValueError("could not read the RATIOS block of bench/core.py's output")
    rows = []
    for phase, slow in (("phase 1", "naive"), ("phase 2", "Trainer")):
        m = found[phase]
        rows.append(
            [
                f"{phase} step time, {slow} / sft-tune",
                f"{float(m.group(3)):.2f}x mean, {float(m.group(4)):.2f}x median, "
                f"{float(m.group(6)):.2f}x CPU s",
                f">= {m.group(7)}: {m.group(8).strip()}",
            ]
        )
    rows.append(
        [
            "sft-tune achieved / fp32 matmul peak",
            f"phase 1 {peak.group(1)}%, phase 2 {peak.group(2)}%"
            + (f" of {gflops.group(1)} GFLOP/s" if gflops else ""),
            "-",
        ]
    )
    details = [
        "```",
        *[
            line
            for line in r["lines"]
            if line.startswith(
                ("model:", "data:", "settings:", "objective check", "fp32 matmul peak")
            )
        ],
        "",
        *_block(r["lines"], "phase    variant"),
        "",
        *_block(r["lines"], "RATIOS", "load average at end"),
        "```",
    ]
    if busy:
        details.insert(
            0,
            "bench/core.py's own /proc/stat meter while timing: other processes kept "
            f"{busy.group(1)} (phase 1) and {busy.group(2)} (phase 2) cores busy.",
        )
    return {"rows": rows, "details": details}


def _block(lines: list[str], start: str, end: str | None = None) -> list[str]:
    """The lines from the first one starting with `start` up to a blank line (or up to the first
    one starting with `end`, excluded)."""
    out: list[str] = []
    for line in lines:
        if not out:
            if line.startswith(start):
                out.append(line)
        elif (end is None and not line.strip()) or (end is not None and line.startswith(end)):
            break
        else:
            out.append(line)
    return out


def part_sweep(args: argparse.Namespace, run: Callable) -> dict[str, Any]:
    sizes = [arg for size in args.sweep_overhead.split(",") for arg in ("--overhead", size.strip())]
    cmd = (
        [
            sys.executable,
            str(BENCH / "sweep.py"),
            *sizes,
            "--asha-trials",
            str(args.asha_trials),
            "--asha-trial-seconds",
            str(args.asha_trial_seconds),
            "--folds",
            str(args.sweep_folds),
            "--threads",
            str(threads(args, big=args.sweep_real)),
        ]
        + (["--real"] if args.sweep_real else [])
        + (["--no-wandb"] if args.no_wandb else [])
    )
    r = run(cmd)
    if r["rc"] != 0:
        raise PartFailed(r)
    f = result_json(r["lines"])
    sizes, p2s = f["part1"], f["part2"]
    rows = []
    for p1 in sizes:
        rows += [
            [
                f"sweep / back-to-back wall time ({p1['trials']} trials of "
                f"{p1['training_per_config']:.0f} s)",
                f"{p1['ratio']:.2f}x ({p1['sweep_seconds']:.0f} s vs {p1['plain_seconds']:.0f} s)",
                _goal(p1["ratio"] <= p1["goal"], f"<= {p1['goal']}"),
            ],
            [
                "sweep cost per trial outside the training loops "
                f"({p1['training_per_config']:.0f}-s trials)",
                f"{p1['fixed_per_trial']:.1f} s per trial",
                "-",
            ],
        ]
        if p1.get("gap_max") is not None:
            rows.append(
                [
                    f"gap between trials after the first ({p1['training_per_config']:.0f}-s "
                    "trials)",
                    f"mean {p1['gap_mean']:.2f} s, max {p1['gap_max']:.2f} s",
                    _goal(p1["gap_max"] <= 1.0, "<= 1 s"),
                ]
            )
        if p1.get("inside_ratio") is not None:
            rows.append(
                [
                    "training inside a trial / same training in one process "
                    f"({p1['training_per_config']:.0f}-s trials)",
                    f"{p1['inside_ratio']:.2f}x",
                    "-",
                ]
            )
    for p2 in p2s:
        name = p2["scheduler"].upper() if p2["scheduler"] == "asha" else p2["scheduler"]
        rows += [
            [
                f"{name} / none, folds trained ({p2['trials']} trials x {p2['folds']} folds, "
                f"seed {p2['seed']}, stopped contenders finished)",
                f"{p2['fold_ratio']:.0%} ({p2['folds_trained']}/{p2['none_folds']})",
                _goal(p2["fold_ratio"] <= 0.6, "<= 60%"),
            ],
            [
                f"{name} / none, wall time (seed {p2['seed']})",
                f"{p2['wall_ratio']:.0%} ({p2['seconds']:.0f} s vs {p2['none_seconds']:.0f} s)",
                "-",
            ],
            [
                f"complete CV macro-F1 of the chosen configuration, none - {name} (seed "
                f"{p2['seed']})",
                f"{p2['diff_points']:+.2f} points ({p2['none_chosen_full_cv'] * 100:.2f} vs "
                f"{p2['chosen_full_cv'] * 100:.2f})",
                _goal(p2["diff_points"] <= 1.0, "<= 1 point (the ROPE)"),
            ],
        ]
    p1 = sizes[0]
    summary = _block(r["lines"], "== summary ==", "total bench time")
    details = [
        f"bench/sweep.py's own meter: other processes kept {p1['others_sweep']:.2f} / "
        f"{p1['others_plain']:.2f} cores busy (sweep / back to back, part 1, first size) "
        "and, in part 2, "
        + "; ".join(
            f"{p2['others']:.2f} / {p2['others_none']:.2f} ({p2['scheduler']} / none, seed "
            f"{p2['seed']})"
            for p2 in p2s
        )
        + ".",
        "Part 2 sampled the same configurations on both sides: "
        + "; ".join(
            f"{p2['scheduler']} seed {p2['seed']}: {'yes' if p2['same_configs'] else 'no'}, "
            f"statuses {p2['statuses']}"
            for p2 in p2s
        )
        + ".",
        "```",
        *[line for line in r["lines"] if line.startswith(("model and data:", "calibration"))],
        "",
        *summary,
        "```",
    ]
    return {"rows": rows, "details": details}


def _goal(met: bool, goal: str) -> str:
    return f"{goal}: {'met' if met else 'MISSED'}"


def memory_cmd(args: argparse.Namespace, sweeps: str) -> list[str]:
    if sweeps == "A":  # the tokenization figures alone: one small sweep
        return [
            sys.executable,
            str(BENCH / "memory.py"),
            "--sweeps",
            "A",
            "--concurrent",
            "2",
            "--unlabelled",
            "2000",
            "--steps",
            "10",
        ]
    return [
        sys.executable,
        str(BENCH / "memory.py"),
        "--sweeps",
        sweeps,
        "--concurrent",
        str(args.memory_concurrent),
        "--unlabelled",
        str(args.memory_unlabelled),
        "--steps",
        str(args.memory_steps),
    ]


def part_memory(args: argparse.Namespace, run: Callable, state: dict[str, Any]) -> dict[str, Any]:
    r = run(memory_cmd(args, "A,B,C"))
    if r["rc"] != 0:
        raise PartFailed(r)
    f = result_json(r["lines"])
    state["memory"] = f
    n, measure = f["concurrent"], f["measure"]
    rows = [
        [
            f"peak total {measure}, 1 trial at a time / {n} concurrent",
            f"{f['peak_one_mb']:.0f} MB / {f['peak_n_mb']:.0f} MB",
            "-",
        ],
        [
            "increment per extra concurrent trial",
            f"{f['per_extra_trial_mb']:+.0f} MB",
            "a trial's Ray processes + (if copied) one deserialized copy of the data",
        ],
        [
            "Ray processes added per concurrent trial (at the peak)",
            f"{f.get('processes_per_extra_trial', 0):.0f}: "
            + ", ".join(
                f"{k.removeprefix('ray::')} {v:.0f} MB"
                for k, v in list(f.get("per_trial_roles_mb", {}).items())[:4]
            ),
            "-",
        ],
        [
            "tokenized data: pickled (object store) / deserialized into a heap",
            f"{f['data_pickled_mb']:.1f} MB / {f['data_heap_mb']:.1f} MB",
            "-",
        ],
        [
            f"object store used, 1 / {n} concurrent",
            f"{f['store_one_mb']:.1f} MB / {f['store_n_mb']:.1f} MB",
            "one copy: same for 1 and N",
        ],
    ]
    if "get_uss_mb" in f:
        rows.append(
            [
                f"`ray.get` of the data in {f['get_workers']} fresh Ray workers at once: each "
                "worker's own USS",
                f"{f['get_uss_mb']:+.1f} MB (RSS {f['get_rss_mb']:+.1f} MB)",
                f"shared: ~0; a private copy: {f['data_heap_mb']:.1f} MB. Measured: "
                + ("copied per worker" if f["get_copied"] else "mapped, not copied"),
            ]
        )
        rows.append(
            [
                "the same probe on a control: the pool's token ids as Python lists",
                f"{f['get_control_uss_mb']:+.1f} MB",
                "a copy per worker (what the probe shows for one)",
            ]
        )
    if "worker_data_cost_mb" in f:
        rows.append(
            [
                "Train worker's own peak USS, large pool - small pool",
                f"{f['worker_data_cost_mb']:+.0f} MB per trial (deserialized data differ by "
                f"{f['worker_data_heap_mb']:.0f} MB)",
                "the data if copied + per-trial structures over the pool (fold indices, shuffled "
                "order)",
            ]
        )
    rows.append(
        [
            f"time the {n} concurrent trials overlapped in their Train loops",
            f"{f['overlap_seconds']:.0f} s",
            "> 0 (else the peak is not concurrent)",
        ]
    )
    table_lines = _block(r["lines"], "sweep  ")
    details = [
        "```",
        *table_lines,
        "",
        *[
            line
            for line in r["lines"]
            if line.startswith(
                ("   each extra", "PEAK", "OBJECT STORE", "RAY.GET", "PER TRIAL", "WARNING")
            )
        ],
        "```",
    ]
    if "get_uss_mb" in f:
        shared_store = f["store_n_mb"] < f["store_one_mb"] + 0.5 * f["data_pickled_mb"]
        details.insert(
            0,
            (
                "Reading: the object store holds "
                f"{'one copy' if shared_store else 'more than one copy'} of the tokenized data "
                f"({f['store_n_mb']:.1f} MB with {n} concurrent trials, "
                f"{f['store_one_mb']:.1f} MB with one). "
                + (
                    f"`ray.get` in a worker builds a private copy: {f['get_uss_mb']:+.1f} MB of "
                    f"the worker's own memory for {f['data_heap_mb']:.1f} MB of deserialized "
                    "data, so the data "
                    f"is shared in the store but copied into every trial's worker. "
                    if f["get_copied"]
                    else f"`ray.get` in a worker maps the store's copy: {f['get_uss_mb']:+.1f} "
                    f"MB of the worker's own memory for {f['data_heap_mb']:.1f} MB of data, "
                    "so N concurrent trials "
                    f"share one copy. "
                )
                + f"Most of the {f['per_extra_trial_mb']:.0f} MB per extra concurrent trial is "
                f"the trial's own Ray processes ({f.get('processes_per_extra_trial', 0):.0f} "
                "processes)."
            ),
        )
        details.insert(1, "")
    return {"rows": rows, "details": details}


def part_tokens(args: argparse.Namespace, run: Callable, state: dict[str, Any]) -> dict[str, Any]:
    f = state.get("memory")
    source = "the memory part's sweeps A (fresh cache) and B (A's cache)"
    if not f or "tokenization_passes" not in f:
        r = run(memory_cmd(args, "A"))
        if r["rc"] != 0:
            raise PartFailed(r)
        f = result_json(r["lines"])
        source = "one 2-trial sweep (`bench/memory.py --sweeps A`, fresh cache)"
    else:
        state["tokens_reused"] = True
    rows = [
        [
            "tokenization passes of a sweep (summary.json, fresh cache)",
            str(f["tokenization_passes"]),
            "2 (labelled + unlabelled; the labelled texts for the LM are a cache hit)",
        ],
        [
            "worker_tokenization_passes, largest over trials",
            str(f["worker_tokenization_passes"]),
            "0",
        ],
    ]
    if "tokenization_passes_warm_cache" in f:
        rows.append(
            [
                "tokenization passes of a second sweep over the same files",
                str(f["tokenization_passes_warm_cache"]),
                "0 (cache hit)",
            ]
        )
    return {
        "rows": rows,
        "details": [
            f"From {source}: a classification sweep on a tiny BERT, a toy labelled set and an "
            "unlabelled pool."
        ],
    }


def part_hf(args: argparse.Namespace, run: Callable) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(BENCH / "hf_compare.py"),
        "--model",
        args.hf_model,
        "--trials",
        str(args.hf_trials),
        "--folds",
        str(args.hf_folds),
        "--threads",
        str(threads(args, big=args.hf_model == "minilm")),
    ]
    for option, value in (
        ("--epochs", args.hf_epochs),
        ("--lr", args.hf_lr),
        ("--train-size", args.hf_train_size),
        ("--test-size", args.hf_test_size),
        ("--test-seeds", args.hf_test_seeds),
    ):
        cmd += [option, str(value)] if value else []
    r = run(cmd)
    if r["rc"] != 0:
        raise PartFailed(r)
    f = result_json(r["lines"])
    hf, sft = f["hf"], f["sft"]
    rows = [
        [
            "wall time, sft-tune / HF (search + retrain best + test)",
            f"{sft['seconds'] / hf['seconds']:.2f}x ({sft['seconds']:.0f} s vs "
            f"{hf['seconds']:.0f} s)",
            "-",
        ],
        [
            "test macro-F1 of the best configuration retrained, sft-tune vs HF: seed 42",
            f"{sft['test_macro_f1']:.4f} vs {hf['test_macro_f1']:.4f}",
            "-",
        ],
        [
            f"the same, mean ± std over {f['test_seeds']} seeds",
            f"{mean_std(sft['test_macro_f1_seeds'])} vs {mean_std(hf['test_macro_f1_seeds'])}",
            "-",
        ],
        [
            f"best search score: sft-tune {f['folds']}-fold CV vs HF eval split "
            f"({f['eval_fraction']:.0%})",
            f"{sft['best_score']:.4f} vs {hf['best_score']:.4f}",
            "not comparable: different estimates",
        ],
        [
            "examples trained, sft-tune / HF",
            f"{sft['examples_trained'] / hf['examples_trained']:.2f}x ({sft['trainings']} vs "
            f"{hf['trainings']} trainings)",
            "-",
        ],
    ]
    side = []
    for label, key, fmt in (
        ("wall s, total", "seconds", "{:.0f}"),
        ("wall s, search", "search_seconds", "{:.0f}"),
        ("wall s, retrain best + test", "select_seconds", "{:.0f}"),
        ("trainings", "trainings", "{}"),
        ("examples trained (epochs x examples)", "examples_trained", "{:,.0f}"),
        ("best search score", "best_score", "{:.4f}"),
        ("test macro-F1 (seed 42)", "test_macro_f1", "{:.4f}"),
    ):
        side.append([label, fmt.format(sft[key]), fmt.format(hf[key])])
    side += [
        [
            f"test macro-F1, best configuration retrained with seeds 42..{41 + f['test_seeds']}",
            ", ".join(f"{x:.4f}" for x in sft["test_macro_f1_seeds"]),
            ", ".join(f"{x:.4f}" for x in hf["test_macro_f1_seeds"]),
        ],
        [
            "search wall s per trial",
            f"{sft['search_seconds'] / f['trials']:.1f}",
            f"{hf['search_seconds'] / f['trials']:.1f}",
        ],
        [
            "scored by",
            f"{f['folds']}-fold CV on the training file",
            f"one stratified eval split ({f['eval_fraction']:.0%}) of the training file",
        ],
        [
            "best configuration",
            f"lr {sft['best']['learning_rate']:.2e}, epochs {sft['best']['epochs']}",
            f"lr {hf['best']['learning_rate']:.2e}, epochs {hf['best']['epochs']}",
        ],
    ]
    details = [
        *[
            line
            for line in r["lines"]
            if line.startswith(("model and data:", "search:", "machine:"))
        ],
        "",
        *markdown_table(
            [
                "",
                "sft-tune `run_search` + `select_best`",
                "HF `Trainer.hyperparameter_search` (optuna) + retrain",
            ],
            side,
        ),
        "",
        "```",
        *[
            line
            for line in r["lines"]
            if line.startswith(
                ("   hf trials", "   sft trials", "RATIO", "   the HF", "   both sides")
            )
        ],
        "```",
    ]
    return {"rows": rows, "details": details}


class PartFailed(Exception):
    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__(failure(run))
        self.run = run


# ----------------------------------------------------------------------------- report

TITLES = {
    "core": "1. Step time of phase 1 and phase 2 (bench/core.py)",
    "sweep": "2. Sweep overhead and ASHA savings (bench/sweep.py)",
    "tokens": "3. Tokenization passes per sweep",
    "memory": "4. Peak memory of N concurrent trials against one (bench/memory.py)",
    "hf": "5. sft-tune against Hugging Face Trainer.hyperparameter_search (bench/hf_compare.py)",
}


def write_report(
    args: argparse.Namespace, meta: dict[str, Any], results: dict[str, dict[str, Any]]
) -> None:
    lines = [
        "# sft-tune cost study",
        "",
        f"Written by `bench/all.py` ({args.preset} preset). Ratios measured side by side are the "
        "point; absolute times",
        "depend on how busy this shared machine was (see the other-process load of each part).",
        "",
        f"- **Date**: {meta['started']} to {meta['finished']} (UTC)",
        f"- **Command**: `{meta['command']}`"
        + ("" if meta["locked"] else f" (NOT run under `flock {LOCK}`)"),
        f"- **Machine**: {cpu_name()}, {os.cpu_count()} logical CPUs, {ram_gib()} RAM, "
        f"{platform.system()} {platform.release()}; load average {meta['load_start']} at start, "
        f"{load_average()} at end",
        "- **Versions**: "
        f"{', '.join(versions(('tokenizers', 'accelerate', 'numpy', *DEMO_PACKAGES)))}",
        "- **Threads** (torch threads = CPUs of a Train worker, the same on both sides of each "
        f"comparison): core {threads(args, True)}, "
        f"sweep {threads(args, args.sweep_real)}, hf {threads(args, args.hf_model == 'minilm')}, "
        "memory 1 per trial",
        "",
        "## Figures",
        "",
    ]
    figures = []
    for name in PARTS:
        res = results.get(name)
        if res is None:
            continue
        title = TITLES[name].split(" (")[0]
        busy = res.get("others")
        busy_text = f"{busy:.2f}" if isinstance(busy, float) and busy == busy else "-"
        if res["status"] != "ok":
            status = f"**{res['status'].upper()}**: {res['error'].splitlines()[0]}"
            figures.append([title, "-", "-", "-", busy_text, status])
            continue
        for i, row in enumerate(res["rows"]):
            first = i == 0
            figures.append(
                [
                    title if first else "",
                    *row[:3],
                    busy_text if first else "",
                    "ok" if first else "",
                ]
            )
    header = ["part", "figure", "value", "goal / expected"]
    header += [f"other processes busy (cores of {os.cpu_count()})", "status"]
    lines += [*markdown_table(header, figures), "", "## Per part", ""]
    for name in PARTS:
        res = results.get(name)
        if res is None:
            continue
        lines += [f"### {TITLES[name]}", ""]
        busy_text = others_text(res.get("others"))
        if res.get("command"):
            lines += [
                f"Command: `{res['command']}`; {res['seconds']:.0f} s; {busy_text}; load average "
                f"{res['load']}.",
                "",
            ]
        elif res["status"] == "ok":
            lines += [
                f"No run of its own: read from the memory part's sweeps ({busy_text} then).",
                "",
            ]
        if res["status"] != "ok":
            lines += [
                f"**{res['status'].upper()}**:",
                "",
                "```",
                *res["error"].splitlines(),
                "```",
                "",
            ]
            continue
        lines += [*res["details"], ""]
    lines += ["## Approximate or left out", "", *NOTES, ""]
    save_report(args.out, "\n".join(lines))


NOTES = [
    "- The machine is shared and busy (other agents' tests run on the same 2 cores): every part "
    "reports the cores other",
    "  processes kept busy while it ran (a lower bound from /proc: processes that end between "
    "two samples lose their last second).",
    "  Compared variants run interleaved (core) or back to back (sweep, memory, hf), so load "
    "changes between them move the ratios.",
    "- core: a few timed steps per variant in the quick preset; the mean and median ratios "
    "disagree when the load changes.",
    "- sweep: trials of seconds, not minutes, in the quick preset: the fixed Ray/Train cost per "
    "trial (tens of seconds on this",
    "  machine) dominates the ratio; the goal of 1.05 is for trials of about 2 minutes. ASHA "
    "decides on few, short toy trials.",
    "- memory: PSS splits shared pages (the object store's shared memory, libraries) between the "
    "processes mapping them, so the",
    "  total PSS is the machine's memory; RSS counts shared pages once per process. Sampled "
    "every 0.5 s: a shorter peak can be",
    "  missed. The object store's bytes come from Ray internals (the raylet's store stats, as "
    "`ray memory --stats-only`).",
    "  Whether a trial copies the data is measured by the `ray.get` probe (fresh Ray workers "
    "fetching the same object); the",
    "  Train workers' peak USS with a large pool minus a 100x smaller one also holds per-trial "
    "structures over the pool.",
    "- tokens: on a tiny BERT and toy data; other tasks (ner, qa, generation) are not covered "
    "here.",
    "- hf: plain fine-tuning only (phase1.steps 0 on the sft-tune side), so the two-phase "
    "objective is not part of this",
    "  comparison. sft-tune scores by k-fold CV (k trainings per trial) and HF by one eval "
    "split, so the search scores are",
    "  different estimates and the compute differs (see 'examples trained'). The Ray Tune "
    "backend of HF is not run.",
    "  On the tiny random BERT a training run either learns the 3 classes (test macro-F1 ~0.95) "
    "or merges two of them",
    "  (~0.55) depending on the seed, on both sides: compare the means over seeds, not one "
    "seed's score.",
    "- Not measured: GPUs, multi-node clusters, W&B online.",
]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, locked = invocation()
    if not locked:
        print(
            f"[all] WARNING: not run under `flock {LOCK}`: other Ray users of this machine may "
            "collide with this run",
            flush=True,
        )
    logs = args.logs.resolve() if args.logs else Path(tempfile.mkdtemp(prefix="sft-bench-all-"))
    logs.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "locked": locked,
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_start": load_average(),
    }
    print(
        f"[all] {args.preset} preset, parts {','.join(args.parts)}; machine {cpu_name()}, "
        f"{os.cpu_count()} cores, {ram_gib()}; load average {meta['load_start']}",
        flush=True,
    )
    others = OtherCPU()
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, dict[str, Any]] = {}
    state: dict[str, Any] = {}
    try:
        for name in RUN_ORDER:
            if name not in args.parts:
                continue
            runs: list[dict[str, Any]] = []

            def run(
                cmd: list[str], name: str = name, runs: list[dict[str, Any]] = runs
            ) -> dict[str, Any]:
                r = run_child(name, cmd, args.part_timeout, logs / f"{name}.log", others)
                runs.append(r)
                return r

            start = time.perf_counter()
            try:
                if name == "core":
                    out = part_core(args, run)
                elif name == "sweep":
                    out = part_sweep(args, run)
                elif name == "memory":
                    out = part_memory(args, run, state)
                elif name == "tokens":
                    out = part_tokens(args, run, state)
                else:
                    out = part_hf(args, run)
                res = {"status": "ok", **out}
            except (Interrupted, KeyboardInterrupt):
                results[name] = {
                    "status": "interrupted",
                    "error": "bench/all.py was stopped during this part",
                    **_run_info(runs),
                }
                raise
            except PartFailed as err:
                res = {
                    "status": "timed out" if err.run["timed_out"] else "failed",
                    "error": str(err),
                }
            except Exception as err:  # a part's output that cannot be read is that part's failure
                res = {"status": "failed", "error": failure(runs[-1] if runs else None, err)}
            res.update(_run_info(runs))
            if name == "tokens" and state.get(
                "tokens_reused"
            ):  # no run of its own: the memory part's load
                res.update(
                    others=results.get("memory", {}).get("others"),
                    load=results.get("memory", {}).get("load", "-"),
                )
            results[name] = res
            print(
                f"[all] {name}: {res['status']} in {time.perf_counter() - start:.0f} s; "
                + others_text(res.get("others")),
                flush=True,
            )
            meta["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            write_report(
                args, meta, results
            )  # after every part: a stopped run still leaves its figures
        return 0 if all(r["status"] == "ok" for r in results.values()) else 1
    except (Interrupted, KeyboardInterrupt):
        print("[all] interrupted: writing what was measured", flush=True)
        return 130
    finally:
        others.stop()
        meta["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        for name in args.parts:
            results.setdefault(
                name, {"status": "not run", "error": "bench/all.py stopped before this part"}
            )
        write_report(args, meta, results)
        print(f"[all] wrote {args.out}", flush=True)
        if not args.logs:
            shutil.rmtree(logs, ignore_errors=True)


def _run_info(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall seconds and other-process load of a part (summed / time-weighted over its commands)."""
    if not runs:
        return {"seconds": 0.0, "others": None, "load": "-", "command": None}
    seconds = sum(r["seconds"] for r in runs)
    busy = sum(r.get("others", 0.0) * r["seconds"] for r in runs) / seconds if seconds else None
    return {
        "seconds": seconds,
        "others": busy,
        "load": runs[-1].get("load", "-"),
        "command": " ; ".join(r["command"] for r in runs if r.get("command")),
    }


if __name__ == "__main__":
    sys.exit(main())
