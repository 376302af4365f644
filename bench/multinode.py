#!/usr/bin/env python
"""What leaving one machine costs a sweep: the same tiny sweep on one node with a local folder and
on a two-node cluster with S3 storage, side by side, plus `select` from the URI alone.

    .venv/bin/python bench/multinode.py [--rounds 2] [--trials 4] [--folds 3] [--verbose]

What it measures, how, and its goals: bench/README.md, section `multinode.py`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
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
    watched,
)
from harness import write_space as space_file  # noqa: E402
from ray_nodes import Nodes  # noqa: E402  (tests/ray_nodes.py)
from s3_server import moto_s3, objects  # noqa: E402  (tests/s3_server.py)
from sweep import make_toy, sized  # noqa: E402  (bench/sweep.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
BUCKET = "bench"
OTHERS = OtherCPU()


def write_space(folder: Path, name: str, setup: dict, args, storage: str) -> Path:
    resources = {"workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0}
    return space_file(
        folder, name, sized(setup["base"], 4, 1), setup["params"], num_trials=args.trials,
        folds=args.folds, resources=resources, storage_path=storage,
    )  # fmt: skip


def timed_sweep(space: Path, log: Path, verbose: bool) -> dict[str, Any]:
    info = timed_search(space, log, verbose, OTHERS)
    info["folds"] = sum(t.folds_done for t in info["result"].trials)
    info["complete"] = sum(t.status == "COMPLETE" for t in info["result"].trials)
    return info


def main(argv: list[str] | None = None) -> int:
    options = [("--rounds", 2, "local/cluster pairs"), ("--trials", 4, "trials per sweep")]
    options += [("--folds", 3, "folds per trial"), VERBOSE]
    args = parser(__doc__, options).parse_args(argv)
    import ray

    say(f"machine: {machine()}", *versions(("ray", "pyarrow", "moto")))
    work = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    os.chdir(work)
    log = work / "chatter.log"
    setup = make_toy(work, n_train=240, n_unlabelled=400, noise=0.1)
    rows, local, cluster, stored = [], [], [], []
    with moto_s3(work / "moto.log", BUCKET) as s3:
        for round_ in range(args.rounds):
            order = ("local", "cluster") if round_ % 2 == 0 else ("cluster", "local")
            for where in order:
                name = f"{where}-{round_}"
                if where == "local":
                    # a local Ray started outside the clock, as the cluster is
                    with chatter_to(log, not args.verbose):
                        ray.init(
                            num_cpus=os.cpu_count(),
                            include_dashboard=True,
                            dashboard_host="127.0.0.1",
                        )
                    try:
                        space = write_space(work, name, setup, args, str(work / "sweeps"))
                        info = timed_sweep(space, log, args.verbose)
                    finally:
                        ray.shutdown()
                    local.append(info["seconds"])
                else:
                    (work / "nodes").mkdir(exist_ok=True)
                    (work / "hidden").mkdir(exist_ok=True)
                    nodes = Nodes(hidden=work / "hidden", logs=work / "nodes")
                    try:
                        nodes.add(cpus=2)
                        space = write_space(work, name, setup, args, f"s3://{BUCKET}/sweeps")
                        info = timed_sweep(space, log, args.verbose)
                    finally:
                        nodes.shutdown()
                    cluster.append(info["seconds"])
                    found = objects(s3, f"{BUCKET}/sweeps/{name}")
                    own = sum(
                        size
                        for path, size in found.items()
                        if not path.startswith(("run_trial_", "train/", "finish/"))
                        and not path.startswith(
                            ("experiment_state", "tuner.pkl", "search_", "basic-variant")
                        )
                    )
                    stored.append(
                        {
                            "name": name,
                            "total": sum(found.values()),
                            "own": own,
                            "folds": info["folds"],
                        }
                    )
                rows.append(
                    [
                        name,
                        f"{info['seconds']:.1f}",
                        info["complete"],
                        info["folds"],
                        others_text(info.get("others")),
                    ]
                )
        say(table(["sweep", "wall s", "complete", "folds", "other processes"], rows))
        ratio = statistics.median(cluster) / statistics.median(local)
        last = stored[-1]
        per_trial, per_fold = last["total"] / args.trials, last["total"] / max(last["folds"], 1)
        say(
            f"cluster / local wall time (medians {statistics.median(cluster):.1f} s / "
            f"{statistics.median(local):.1f} s): "
            f"{ratio:.2f} (goal <= 1.3: {'MET' if ratio <= 1.3 else 'NOT MET'})",
            f"bytes on S3 for {last['name']}: {last['total']:,} in all ({last['own']:,} the "
            "sweep's own files), "
            f"{per_trial:,.0f} per trial, {per_fold:,.0f} per fold",
        )
        fresh = work / "laptop"
        fresh.mkdir()
        uri = f"s3://{BUCKET}/sweeps/{last['name']}"
        started = time.perf_counter()
        info = {}
        with watched(info, OTHERS):
            done = subprocess.run(
                [sys.executable, "-m", "sft_tune", "select", uri, "--no-wandb", "--no-progress"],
                cwd=fresh,
                capture_output=True,
                text=True,
            )
        select_s = time.perf_counter() - started
        if done.returncode != 0:
            say(done.stderr[-2000:])
            return 1
        say(
            f"select from {uri} in a fresh folder: {select_s:.1f} s "
            f"({others_text(info.get('others'))})"
        )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
