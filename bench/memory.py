#!/usr/bin/env python
"""Peak memory of N concurrent trials of `sft-tune search` against one, and the tokenization
passes of a sweep.

    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/memory.py [--concurrent N] [--sweeps A,B,C]

What it measures, how, and its goals: bench/README.md, section `memory.py`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    LOG,
    chatter_to,
    command_line,
    descendants,
    machine,
    parser,
    proc_stats,
    say,
    show_tail,
    table,
)
from harness import (
    write_space as space_file,
)
from sweep import make_toy, searched  # noqa: E402  (bench/sweep.py: the tiny BERT, toy data)

MB = 1024 * 1024


OPTIONS = [
    ("--concurrent", 2, "N: concurrent trials of sweeps B and C, and trials of every sweep"),
    ("--unlabelled", 300_000, "U: synthetic unlabelled sentences of sweeps A and B"),
    ("--train-size", 200, "toy labelled examples"),
    ("--steps", 300, "phase1.steps of each fold: long enough for concurrent trials to overlap"),
    ("--folds", 2, "k of the cross-validation"),
    ("--cpus-per-worker", 1, "CPUs (and torch threads) of each trial's Train worker"),
    ("--interval", 0.5, "seconds between /proc samples"),
    ("--sweeps", "A,B,C", "which sweeps to run (A alone gives the tokenization figures)"),
    LOG,
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, OPTIONS)
    args = p.parse_args(argv)
    args.sweeps = [s.strip().upper() for s in args.sweeps.split(",") if s.strip()]
    if not args.sweeps or not set(args.sweeps) <= {"A", "B", "C"}:
        p.error("--sweeps takes a comma-separated subset of A,B,C")
    if args.concurrent < 1 or args.unlabelled < 100 or args.folds < 2 or args.steps < 0:
        p.error("--concurrent >= 1, --unlabelled >= 100, --folds >= 2, --steps >= 0")
    return args


# ----------------------------------------------------------------------------- sampling


def _kb(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def process_memory(pid: int) -> dict[str, Any] | None:
    """RSS, PSS, USS in bytes (PSS/USS None where smaps_rollup is unreadable) and a role name."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    title = cmdline[0].decode(errors="replace") if cmdline and cmdline[0] else ""
    if title.startswith("ray::"):
        role = title.split(".")[0].split()[0]  # ray::RayTrainWorker.run -> ray::RayTrainWorker
    elif pid == os.getpid():
        role = "driver (this process)"
    else:
        role = "Ray daemons"
    out = {"role": role, "rss": _kb(status, "VmRSS:") * 1024, "pss": None, "uss": None}
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        out["pss"] = _kb(rollup, "Pss:") * 1024
        out["uss"] = (_kb(rollup, "Private_Clean:") + _kb(rollup, "Private_Dirty:")) * 1024
    except OSError:
        pass
    return out


class StoreStats:
    """(bytes used, objects) of this driver's object store, from the raylet's store stats (Ray
    internals, as `ray memory --stats-only` reads them); None where unavailable."""

    def __init__(self) -> None:
        self._state = None

    def __call__(self) -> tuple[int, int] | None:
        try:
            import ray
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if not ray.is_initialized():  # (get_runtime_context would start a Ray)
                return None
            # this driver's own cluster, never another session on the machine
            if self._state is None:
                self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
            reply = get_memory_info_reply(self._state, timeout_seconds=10)
            return int(reply.store_stats.object_store_bytes_used), int(
                reply.store_stats.num_local_objects
            )
        except Exception:
            return None


class Sampler:
    """Samples the memory of this process's tree (and the object store) in a thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.per_process_peak: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me, tick, store_stats = os.getpid(), 0, StoreStats()
        while True:
            procs = {
                pid: m
                for pid in descendants(me, proc_stats())
                if (m := process_memory(pid)) is not None
            }
            store = store_stats() if tick % 4 == 0 else None  # a gRPC call: every 4th sample
            tick += 1
            sample = {"time": time.time(), "procs": procs, "store": store}
            self.samples.append(sample)
            for pid, m in procs.items():
                best = self.per_process_peak.get(pid)
                if best is None or (m["uss"] or m["rss"]) > (best["uss"] or best["rss"]):
                    self.per_process_peak[pid] = {
                        **m,
                        "roles": (best or {}).get("roles", set()) | {m["role"]},
                    }
                else:
                    best["roles"].add(m["role"])
            if self._stop.wait(self.interval):
                return

    def summary(self) -> dict[str, Any]:
        def total(sample: dict[str, Any], key: str, roles: set[str] | None = None) -> int:
            return sum(
                (m[key] or 0)
                for m in sample["procs"].values()
                if roles is None or m["role"] in roles
            )

        if not self.samples:
            return {}
        have_pss = any(m["pss"] is not None for s in self.samples for m in s["procs"].values())
        key = "pss" if have_pss else "rss"
        peak = max(self.samples, key=lambda s: total(s, key))
        workers = {
            m["role"]
            for s in self.samples
            for m in s["procs"].values()
            if m["role"].startswith("ray::")
        }
        by_role: dict[str, list[int]] = {}
        for m in peak["procs"].values():
            by_role.setdefault(m["role"], []).append(m[key] or 0)
        # The processes that train: a 1-worker trial's own Tune actor (ray::ImplicitFunc), or the
        # Train workers of a multi-worker trial.
        train_workers = [
            p
            for p in self.per_process_peak.values()
            if p["roles"] & {"ray::RayTrainWorker", "ray::ImplicitFunc"}
        ]
        stores = [s["store"] for s in self.samples if s["store"] is not None]
        return {
            "measure": key,
            "samples": len(self.samples),
            "peak_total": total(peak, key),
            "peak_total_rss": max(total(s, "rss") for s in self.samples),
            "peak_total_uss": max(total(s, "uss") for s in self.samples) if have_pss else None,
            "peak_workers": max(total(s, key, workers) for s in self.samples),
            "peak_time": peak["time"],
            "at_peak_by_role": {
                role: {"count": len(v), "bytes": sum(v)} for role, v in sorted(by_role.items())
            },
            "train_worker_peak_uss": [p["uss"] for p in train_workers if p["uss"] is not None],
            "train_worker_peak_rss": [p["rss"] for p in train_workers],
            "store_peak_bytes": max((s[0] for s in stores), default=None),
            "store_peak_objects": max((s[1] for s in stores), default=None),
        }


# ----------------------------------------------------------------------------- sweeps


def write_pool(folder: Path, name: str, n: int, seed: int) -> Path:
    """n synthetic toy sentences (one sentiment word among filler words), as a JSONL pool."""
    import random

    from sweep import WORDS, toy_sentence

    rng = random.Random(seed)
    words = sum(WORDS.values(), [])
    path = folder / name
    with open(path, "w") as handle:
        for _ in range(n):
            handle.write(json.dumps({"text": toy_sentence(rng, rng.choice(words))}) + "\n")
    return path


def write_space(
    folder: Path, name: str, base: dict, pool: Path, args: argparse.Namespace, concurrent: int
) -> Path:
    config = json.loads(json.dumps(base))
    config["data"]["unlabelled"] = [str(pool)]
    config["phase1"]["steps"] = args.steps
    config["phase2"]["epochs"] = 1
    resources = {"workers": 1, "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": 0}
    params, trials = searched(1.0e-4, 1.0e-2), args.concurrent
    return space_file(
        folder, name, config, params, num_trials=trials, max_concurrent=concurrent,
        folds=args.folds, resources=resources,
    )  # fmt: skip


def overlap_seconds(events: list[dict[str, Any]]) -> float:
    """Seconds during which two or more trials were inside their Train loop (events.jsonl)."""
    spans: dict[str, list[float]] = {}
    for e in events:
        spans.setdefault(e["trial_id"], []).append(e["time"])
    edges = sorted([(min(t), 1) for t in spans.values()] + [(max(t), -1) for t in spans.values()])
    active, last, out = 0, None, 0.0
    for when, step in edges:
        if active >= 2 and last is not None:
            out += when - last
        active += step
        last = when
    return out


def get_probe(base: dict, pool: Path, folds: int, workers: int) -> dict[str, list[dict[str, int]]]:
    """What `ray.get` of the sweep's tokenized data costs a Ray worker: the same `prepare_data`
    object `ray.put` by this driver (as `run_search` does), fetched by `workers` fresh worker
    processes at once, each measuring its own /proc/self/smaps_rollup just before and after. Each
    worker first gets a second copy of the object, untimed: unpickling it the first time imports
    what it needs (sklearn, pandas: ~57 MB), which a trial's process has imported anyway. The
    control is the pool's token ids as a list of Python lists (a layout `ray.get` must rebuild in
    every worker's heap): it shows what a copy looks like to the same probe."""
    import ray

    from sft_tune.core.prepare import prepare_data
    from sft_tune.runconfig import parse_config
    from sft_tune.tasks import get_task

    config = json.loads(json.dumps(base))
    config["data"]["unlabelled"] = [str(pool)]
    run_config = parse_config(config)
    data = prepare_data(run_config, get_task(run_config.model.task), folds, 0)
    pool_ids = getattr(data, "unlabelled_ids", None)
    if pool_ids is None:  # a TokenArray: flat ids + offsets
        pool_ids = [data.unlabelled[i].tolist() for i in range(len(data.unlabelled))]
    control = list(pool_ids)
    refs = {"data": [ray.put(data), ray.put(data)], "control": [ray.put(control), ray.put(control)]}
    del data, pool_ids, control

    @ray.remote(num_cpus=0, max_calls=1)  # a fresh worker process per call
    def fetch(refs: list) -> dict[str, int]:
        import sft_tune.sweep.folds  # noqa: F401  (the data's classes, imported before measuring)

        def memory() -> dict[str, int]:
            lines = open("/proc/self/smaps_rollup").read().splitlines()
            kb = {
                line.split(":")[0]: int(line.split()[1])
                for line in lines[1:]
                if line.split()[-1] == "kB"
            }
            return {
                "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) * 1024,
                "rss": kb.get("Rss", 0) * 1024,
            }

        warm = ray.get(refs[1])  # noqa: F841  (kept: its buffers stay mapped, none reused)
        before = memory()
        data = ray.get(refs[0])
        after = memory()
        del data
        return {f"{key}_delta": after[key] - before[key] for key in before}

    try:
        return {
            name: ray.get([fetch.remote(pair) for _ in range(workers)], timeout=300)
            for name, pair in refs.items()
        }
    finally:
        del refs


def run_one(
    label: str,
    space: Path,
    cache: Path,
    args: argparse.Namespace,
    log: Path,
    probe: tuple[dict, Path] | None = None,
) -> dict[str, Any]:
    """One sweep on its own fresh local Ray, sampled; then, with `probe` (base config, pool), the
    `ray.get` probe on the same Ray."""
    import ray

    from sft_tune.sweep.folder import read_events
    from sft_tune.sweep.run import run_search

    os.environ["SFT_TUNE_CACHE"] = str(cache)
    logical = args.concurrent * args.cpus_per_worker + 2
    start = time.perf_counter()
    with chatter_to(log, True):
        ray.init(
            num_cpus=logical,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
        try:
            with Sampler(args.interval) as sampler:
                result = run_search(space, use_wandb=False)
            got = None
            if probe is not None:
                try:
                    got = get_probe(*probe, args.folds, args.concurrent)
                # the probe is extra evidence: its failure is reported, not fatal
                except Exception as err:
                    got = {"error": f"{type(err).__name__}: {err}"}
        finally:
            ray.shutdown()
    seconds = time.perf_counter() - start
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    trials = json.loads((result.sweep_dir / "trials.json").read_text())
    events = read_events(result.sweep_dir / "events.jsonl")
    return {
        "label": label,
        "seconds": seconds,
        "logical_cpus": logical,
        "memory": sampler.summary(),
        "get_probe": got,
        "tokenization_passes": summary["tokenization_passes"],
        "worker_tokenization_passes": [t.get("worker_tokenization_passes", 0) for t in trials],
        "statuses": summary["statuses"],
        "overlap_seconds": overlap_seconds(events),
        "sweep_dir": str(result.sweep_dir),
    }


def data_sizes(base: dict, pool: Path, folds: int, cache: Path) -> dict[str, int]:
    """Pickled size (what ray.put stores) and deserialized heap size (what ray.get builds) of the
    sweep's tokenized data, from the sweep's own `prepare_data` (warm cache: no tokenization)."""
    from sft_tune.core.prepare import prepare_data
    from sft_tune.runconfig import parse_config
    from sft_tune.tasks import get_task

    os.environ["SFT_TUNE_CACHE"] = str(cache)
    config = json.loads(json.dumps(base))
    config["data"]["unlabelled"] = [str(pool)]
    run_config = parse_config(config)
    data = prepare_data(run_config, get_task(run_config.model.task), folds, 0)
    blob = pickle.dumps(data, protocol=5)
    del data
    gc.collect()
    tracemalloc.start()
    copy = pickle.loads(blob)
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n_ids = token_count(copy)
    del copy
    gc.collect()
    return {"pickled": len(blob), "heap": heap, "unlabelled_tokens": n_ids}


def token_count(data: Any) -> int:
    """Unlabelled tokens of a PreparedData: a flat token array (`TokenArray`) or lists of token-id
    lists."""
    flat = getattr(getattr(data, "unlabelled", None), "flat", None)
    if flat is not None:
        return int(flat.size)
    return sum(len(x) for x in getattr(data, "unlabelled_ids", []))


# ----------------------------------------------------------------------------- report


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.0f}"


def report(
    runs: dict[str, dict[str, Any]], sizes: dict[str, dict[str, int]], args: argparse.Namespace
) -> None:
    n = args.concurrent
    rows = []
    for label, run in runs.items():
        m = run["memory"]
        tw = m.get("train_worker_peak_uss") or []
        rows.append(
            [
                label,
                str(run["max_concurrent"]),
                f"{run['unlabelled']:,}",
                f"{run['seconds']:.0f}",
                f"{run['overlap_seconds']:.0f}",
                mb(m.get("peak_total")),
                mb(m.get("peak_total_rss")),
                mb(m.get("peak_total_uss")),
                mb(m.get("peak_workers")),
                mb(statistics.fmean(tw)) if tw else "-",
                mb(m.get("store_peak_bytes")),
                str(m.get("store_peak_objects", "-")),
                str(run["tokenization_passes"]),
                str(max(run["worker_tokenization_passes"], default=0)),
            ]
        )
    measure = next(iter(runs.values()))["memory"].get("measure", "pss").upper()
    say(
        "",
        table(
            [
                "sweep",
                "concurrent",
                "unlabelled",
                "wall s",
                "overlap s",
                f"peak total {measure} MB",
                "peak RSS MB",
                "peak USS MB",
                f"ray:: workers {measure} MB",
                "trial process USS MB",
                "store MB",
                "store objects",
                "tok. passes",
                "worker passes",
            ],
            rows,
        ),
    )
    for label, run in runs.items():
        parts = ", ".join(
            f"{role} x{v['count']} {v['bytes'] / MB:.0f}"
            for role, v in run["memory"].get("at_peak_by_role", {}).items()
        )
        say(f"   {label} at its peak ({measure} MB by role): {parts}")
    for label, s in sizes.items():
        say(
            f"   tokenized data of sweep {label}: pickled (object store) {s['pickled'] / MB:.1f} "
            f"MB, deserialized in a heap {s['heap'] / MB:.1f} MB, {s['unlabelled_tokens']:,} "
            "unlabelled tokens"
        )
    big = sizes.get("A") or sizes.get("B")
    if "A" in runs and "B" in runs and n > 1:
        a, b = runs["A"]["memory"], runs["B"]["memory"]
        per_trial = (b["peak_total"] - a["peak_total"]) / (n - 1)
        say(
            "",
            f"PEAK total {measure}: 1 trial at a time {a['peak_total'] / MB:.0f} MB, {n} "
            f"concurrent {b['peak_total'] / MB:.0f} MB "
            f"-> {per_trial / MB:+.0f} MB per extra concurrent trial "
            f"({'met' if per_trial / MB <= 600 else 'MISSED'}, goal <= 600 MB; "
            f"data: {big['pickled'] / MB:.1f} MB pickled, {big['heap'] / MB:.1f} MB deserialized)",
        )
        ra, rb = a.get("at_peak_by_role", {}), b.get("at_peak_by_role", {})
        grew = {
            role: (v["bytes"] - ra.get(role, {}).get("bytes", 0)) / (n - 1)
            for role, v in rb.items()
            if v["count"] > ra.get(role, {}).get("count", 0)
        }
        added = (sum(v["count"] for v in rb.values()) - sum(v["count"] for v in ra.values())) / (
            n - 1
        )
        say(
            f"   each extra concurrent trial added {added:.0f} processes at the peak: "
            + ", ".join(
                f"{role} {v / MB:+.0f} MB" for role, v in sorted(grew.items(), key=lambda x: -x[1])
            )
        )
        if a["store_peak_bytes"] is not None and b["store_peak_bytes"] is not None:
            say(
                f"OBJECT STORE: {a['store_peak_bytes'] / MB:.1f} MB with 1 trial at a time, "
                f"{b['store_peak_bytes'] / MB:.1f} MB with {n} concurrent "
                f"(one copy of the {big['pickled'] / MB:.1f} MB pickled data: "
                f"{'yes' if b['store_peak_bytes'] < a['store_peak_bytes'] + 0.5 * big['pickled'] else 'NO'})"
            )
        if runs["B"]["overlap_seconds"] < 1:
            say(
                "WARNING: the concurrent trials of B did not overlap inside their Train loops; "
                "raise --steps"
            )
    probe = runs.get("A", {}).get("get_probe")
    if isinstance(probe, dict) and "data" in probe and big:
        uss, rss, control = (
            statistics.fmean(p[key] for p in probe[name]) / MB
            for name, key in (
                ("data", "uss_delta"),
                ("data", "rss_delta"),
                ("control", "uss_delta"),
            )
        )
        copied = uss >= 0.5 * big["heap"] / MB
        say(
            f"RAY.GET PROBE: {len(probe['data'])} fresh Ray workers fetching the sweep's data at "
            f"once: own USS {uss:+.1f} MB, RSS {rss:+.1f} MB each "
            f"(a private copy would be {big['heap'] / MB:.1f} MB): "
            f"{'COPIED into each worker' if copied else 'mapped from the object store, not copied'}; "
            f"control (the pool's token ids as Python lists): own USS {control:+.1f} MB each"
        )
    elif probe:
        say(f"RAY.GET PROBE failed: {probe}")
    if "B" in runs and "C" in runs:
        wb, wc = (
            runs["B"]["memory"].get("train_worker_peak_uss") or [],
            runs["C"]["memory"].get("train_worker_peak_uss") or [],
        )
        if wb and wc:
            cost = statistics.fmean(wb) - statistics.fmean(wc)
            extra = big["heap"] - sizes["C"]["heap"] if big and "C" in sizes else None
            say(
                f"PER TRIAL DATA COST: a training process's own peak USS is {cost / MB:+.0f} MB "
                f"larger with the {args.unlabelled:,}-sentence pool than with "
                f"{runs['C']['unlabelled']:,} sentences (B vs C); the deserialized data differ "
                f"by {(extra or 0) / MB:.0f} MB and the pickled data by "
                f"{(big['pickled'] - sizes['C']['pickled']) / MB:.0f} MB"
                if big and "C" in sizes
                else ""
            )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["OMP_NUM_THREADS"] = str(args.cpus_per_worker)  # the Train workers' torch threads
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    folder = Path(tempfile.mkdtemp(prefix="sft-mem-bench-"))
    os.environ["RAY_TMPDIR"] = str(folder)
    log = args.log.resolve() if args.log else folder / "chatter.log"
    say(
        f"command: {command_line()}",
        f"machine: {machine()}",
        f"sweeps {','.join(args.sweeps)}: {args.concurrent} trials each, {args.folds} folds, "
        f"phase1.steps {args.steps}, "
        f"1 Train worker x {args.cpus_per_worker} CPU per trial; temp folder {folder}",
    )
    ok = False
    try:
        import torch

        torch.set_num_threads(args.cpus_per_worker)
        import ray  # noqa: F401

        import sft_tune.sweep.run  # noqa: F401

        with chatter_to(log, True):
            setup = make_toy(folder, args.train_size, 0, 0.15)
        base = setup["base"]
        say(f"model and data: {setup['what'].split(';')[0]}; toy labelled set of {args.train_size}")
        pools = {
            "big": write_pool(folder, "pool-big.jsonl", args.unlabelled, 11),
            "small": write_pool(folder, "pool-small.jsonl", max(args.unlabelled // 100, 100), 12),
        }
        plan = {
            "A": ("pool big", pools["big"], 1, "cache-big"),
            "B": ("pool big", pools["big"], args.concurrent, "cache-big"),
            "C": ("pool small", pools["small"], args.concurrent, "cache-small"),
        }
        runs, sizes = {}, {}
        for label in args.sweeps:
            _, pool, concurrent, cache = plan[label]
            space = write_space(folder, f"mem-{label.lower()}", base, pool, args, concurrent)
            say(
                f"   sweep {label}: max_concurrent {concurrent}, {sum(1 for _ in open(pool)):,} "
                "unlabelled sentences ..."
            )
            run = run_one(
                label, space, folder / cache, args, log, (base, pool) if label == "A" else None
            )
            run.update(max_concurrent=concurrent, unlabelled=sum(1 for _ in open(pool)))
            runs[label] = run
            say(
                f"   sweep {label}: {run['seconds']:.0f} s, trials {run['statuses']}, peak total "
                f"{run['memory'].get('measure', '?').upper()} "
                f"{(run['memory'].get('peak_total') or 0) / MB:.0f} MB, "
                f"{run['memory'].get('samples', 0)} samples"
            )
            key = "A" if label in ("A", "B") else "C"
            if key not in sizes:
                with chatter_to(log, True):
                    sizes[key] = data_sizes(base, pool, args.folds, folder / cache)
        report(runs, sizes, args)
        ok = True
        return 0
    finally:
        if not ok:
            show_tail(log, 40)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
