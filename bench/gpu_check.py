#!/usr/bin/env python
"""The GPU paths of sft-tune, checked in one prepared run (for a GPU machine lent for minutes).

    .venv/bin/python bench/gpu_check.py            # on a machine with a CUDA GPU (~10 min)
    .venv/bin/python bench/gpu_check.py --dry      # CPU dry run of the same script (CI, ~1-2 min)

Prints a table and `RESULT_JSON {...}` last (tests/test_gpu_check.py reads it). What it measures,
how, and its goals: bench/README.md, section `gpu_check.py`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import (  # noqa: E402
    VERBOSE,
    OtherCPU,
    chatter_to,
    machine,
    others_text,
    parser,
    say,
    table,
    timed_search,
    versions,
)
from harness import write_space as space_file  # noqa: E402
from sweep import make_real, make_toy, sized  # noqa: E402  (bench/sweep.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
OTHERS = OtherCPU()


def write_space(folder: Path, name: str, setup: dict, resources: dict, **search: Any) -> Path:
    return space_file(folder, name, setup["base"], setup["params"], resources=resources, **search)


def sweep(space: Path, log: Path, verbose: bool) -> dict[str, Any]:
    return timed_search(space, log, verbose, OTHERS, use_wandb=False)


def most_at_once(events: list[dict]) -> int:
    """The most trials running at the same moment, from their start and end events."""
    moments = sorted(
        (e["time"], 1 if e["event"] == "start" else -1)
        for e in events
        if e["event"] in ("start", "end")
    )
    running = most = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


def train_seconds(base: dict, precision: str, folder: Path, log: Path, verbose: bool) -> float:
    from sft_tune.run import train
    from sft_tune.runconfig import parse_config

    config = parse_config({**base, "precision": precision, "output_dir": str(folder / precision)})
    start = time.perf_counter()
    with chatter_to(log, not verbose):
        train(config, progress=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    dry = ("--dry", False, "CPU dry run: tiny model, small sweeps")
    args = parser(__doc__, [dry, VERBOSE]).parse_args(argv)
    import ray
    import torch

    gpu = torch.cuda.is_available() and not args.dry
    if not gpu and not args.dry:
        say("no CUDA device: run with --dry for the CPU dry run")
        return 2
    say(f"machine: {machine()}", *versions(("ray",)))
    if gpu:
        say(f"GPU: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s)")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-check-"))
    log = work / "chatter.log"
    if gpu:
        setup = make_real()
        setup["base"]["device"] = "auto"
        base = sized(setup["base"], 50, 1)
    else:
        setup = make_toy(work, n_train=120, n_unlabelled=120, noise=0.1)
        base = sized(setup["base"], 2, 1)
    setup = {**setup, "base": base}
    rows, result = [], {"dry": not gpu}

    # 1. bf16 steps
    fp32 = train_seconds(base, "fp32", work, log, args.verbose)
    bf16 = train_seconds(base, "bf16", work, log, args.verbose) if gpu else None
    result["train_fp32_s"], result["train_bf16_s"] = fp32, bf16
    rows.append(
        [
            "1. train fp32 / bf16",
            f"{fp32:.1f} s / "
            + (f"{bf16:.1f} s ({fp32 / bf16:.2f}x)" if bf16 else "bf16 needs CUDA (dry)"),
            "-",
        ]
    )

    with chatter_to(log, not args.verbose):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1")
    try:
        # 2. four trials packed on one GPU
        packed = {"workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0.25 if gpu else 0}
        info = sweep(
            write_space(work, "packed", setup, packed, num_trials=4, folds=2, max_concurrent=4),
            log,
            args.verbose,
        )
        result["packed_at_once"], result["packed_s"] = most_at_once(info["events"]), info["seconds"]
        rows.append(
            [
                "2. 4 trials at 0.25 GPU",
                f"{result['packed_at_once']} at once, {info['seconds']:.1f} s",
                others_text(info["others"]),
            ]
        )

        # 3. memory over reused-actor trials
        one = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1 if gpu else 0}
        count = 10 if gpu else 3
        info = sweep(
            write_space(work, "reused", setup, one, num_trials=count, folds=2), log, args.verbose
        )
        peaks = [t.cuda_peak_mb for t in info["result"].trials]
        loads = [t.process_model_loads for t in info["result"].trials]
        result["reused_cuda_peak_mb"], result["reused_model_loads"] = peaks, loads
        grows = (
            gpu and peaks[-1] is not None and peaks[0] is not None and peaks[-1] > 1.1 * peaks[0]
        )
        rows.append(
            [
                f"3. {count} reused-actor trials",
                f"CUDA peak MB {peaks}; model loads {loads}" + ("  GROWS" if grows else ""),
                others_text(info["others"]),
            ]
        )

        # 4. the tweet search (the toy one in the dry run)
        trials, folds = (32, 5) if gpu else (2, 2)
        info = sweep(
            # a retry for a crashing trial, as a user's search has by default (search.max_failures)
            write_space(work, "search", setup, one, num_trials=trials, folds=folds, max_failures=1),
            log,
            args.verbose,
        )
        complete = sum(t.status == "COMPLETE" for t in info["result"].trials)
        result["search_s"], result["search_complete"] = info["seconds"], complete
        result["search_statuses"] = {
            t.trial_id: [t.status.value, t.error] for t in info["result"].trials
        }
        rows.append(
            [
                f"4. {trials} trials x {folds} folds",
                f"{info['seconds']:.1f} s, {complete} complete",
                others_text(info["others"]),
            ]
        )
    finally:
        ray.shutdown()
    say(table(["part", "figures", "other processes"], rows))
    print("RESULT_JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
