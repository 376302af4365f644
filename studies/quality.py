"""Quality study: does searched two-phase SFT beat an equally searched plain fine-tune?

    python examples/prepare_tweets.py
    python studies/quality.py --seeds 0 1 2 3 4 --trials 4 --folds 2      # writes studies/QUALITY.md

What it does, how, and where its results go: studies/README.md, section `quality.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from sft_tune.config import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from harness import ROOT, markdown_table, mean_std, paired_test, save_report  # noqa: E402  (bench/harness.py)
from harness import parser as options_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

PHASE2 = {
    "phase2.learning_rate": {"type": "float", "low": 3.0e-5, "high": 5.0e-4, "log": True},
    "phase2.epochs": {"type": "int", "low": 2, "high": 8},
}
PHASE1 = {
    "phase1.learning_rate": {"type": "float", "low": 1.0e-5, "high": 3.0e-4, "log": True},
    "phase1.steps": {"type": "int", "low": 20, "high": 80, "step": 20},
}
ARMS = {  # every arm searches the same phase-2 ranges; the phase-1 arms the same phase-1 ranges
    "plain": {"overrides": {"phase1.steps": 0}, "params": PHASE2},
    "tapt": {"overrides": {"phase1.alpha": 0.0}, "params": {**PHASE1, **PHASE2}},
    "sft": {
        "overrides": {},
        "params": {
            "phase1.alpha": {"type": "float", "low": 0.25, "high": 4.0, "log": True},
            **PHASE1,
            **PHASE2,
        },
    },
    "sft-a1": {"overrides": {"phase1.alpha": 1.0}, "params": {**PHASE1, **PHASE2}},
}


OPTIONS = [
    ("--base", ROOT / "examples" / "tweets.yaml", "run config every arm starts from (the demo's)"),
    ("--arms", list(ARMS), "arms to run (default: all four)", {"choices": list(ARMS)}),
    ("--seeds", [0, 1, 2, 3, 4], "seeds (default: 0-4)"),
    ("--trials", 4, "trials per search (same for every arm)"),
    ("--folds", 2, "CV folds per trial (same for every arm)"),
    ("--warmup", 0, "LM-head warm-up steps in the phase-1 arms (0 = none)"),
    ("--head-lr-scale", 1.0, "head learning-rate multiplier in every arm"),
    ("--out", ROOT / "runs" / "quality", "folder for the sweeps and results.json"),
    ("--report", ROOT / "studies" / "QUALITY.md", "Markdown results table to write"),
    ("--concurrent", 1, "trials run at once, each a 1-CPU worker (every arm the same)"),
    ("--num-cpus", int, "logical CPUs for the local Ray (default: this machine's)"),
    (
        "--report-only",
        False,
        "recount the finished pairs in --out from their sweep folders and rewrite results.json "
        "and the report; train nothing",
    ),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options_parser(__doc__, OPTIONS)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.folds < 2 or args.concurrent < 1:
        parser.error("--trials and --concurrent must be >= 1 and --folds >= 2")
    if not args.base.is_file():
        parser.error(
            f"--base {args.base}: no such file (run `python examples/prepare_tweets.py` for the "
            "demo)"
        )
    return args


def write_space(args: argparse.Namespace, arm: str, seed: int) -> Path:
    """The search space of one (arm, seed), written under the output folder."""
    spec = ARMS[arm]
    overrides = {"seed": seed, "optimizer.head_lr_scale": args.head_lr_scale, **spec["overrides"]}
    if args.warmup and spec["overrides"].get("phase1.steps") != 0:
        overrides["phase1.head_warmup_steps"] = args.warmup
    space = {
        "base": str(args.base.resolve()),
        "overrides": overrides,
        "params": spec["params"],
        "search": {
            "name": f"{arm}-s{seed}",
            "num_trials": args.trials,
            "folds": args.folds,
            "seed": seed,
            "sampler": "tpe",
            "scheduler": "none",  # every trial runs every fold: the same budget in every arm
            "max_concurrent": args.concurrent,
            "max_failures": 3,  # a retried trial resumes at its last finished fold: same scores, more time
            "resources": {"workers": 1, "cpus_per_worker": 1},
            "storage_path": str((args.out / "sweeps").resolve()),
        },
    }
    path = args.out / "spaces" / f"{arm}-s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def consumed(config: RunConfig, n_train: int, n_lm: int) -> dict[str, int]:
    """Labelled and unlabelled (LM) examples one training run of `config` learns from.

    With alpha 0, phase 1 scores its labelled batches for the log without a gradient: not counted.
    """
    p1 = config.phase1
    steps = p1.steps * p1.accumulation_steps
    warmup = p1.head_warmup_steps if steps else 0
    task = p1.task_batch_size if p1.alpha > 0 else 0
    return {
        "labelled": steps * task + config.phase2.epochs * n_train,
        "unlabelled": (steps + warmup) * p1.lm_batch_size,
    }


def run_one(args: argparse.Namespace, arm: str, seed: int) -> dict:
    from sft_tune.select import select_best
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.folder import SweepFolder
    from sft_tune.sweep.run import run_search

    space = write_space(args, arm, seed)
    folder = SweepFolder.of(load_space(space).search).path
    start = time.time()
    resumed = (folder / SweepFolder.SNAPSHOT).exists()
    if resumed:  # a search this script started and was stopped in: resume it (its minutes then miss the time before the stop)
        print(f"   resuming {folder}", flush=True)
        result = run_search(resume=folder, use_wandb=False)
    else:
        result = run_search(space, use_wandb=False)
    selected = select_best(result.sweep_dir, use_wandb=False, progress=False)
    trials = json.loads((result.sweep_dir / "trials.json").read_text())
    used = examples_read(args, result.sweep_dir, selected["params"])
    return {
        "arm": arm,
        "seed": seed,
        "test": selected["test"],
        "cv_mean": selected["cv_mean"],
        "cv_std": selected["cv_std"],
        "params": selected["params"],
        "consumed": used,
        "minutes": (time.time() - start) / 60,
        "resumed": resumed,
        "trials_complete": sum(t["status"] == "COMPLETE" for t in trials),
        "sweep_dir": str(result.sweep_dir),
    }


def examples_read(args: argparse.Namespace, sweep_dir: Path, best_params: dict) -> dict[str, int]:
    """Labelled and unlabelled examples a pair read: every fold of every trial, plus the
    retraining."""
    from sft_tune.runconfig import parse_config, with_params
    from sft_tune.sweep.folder import SweepFolder

    trials = json.loads((Path(sweep_dir) / "trials.json").read_text())
    sweep = SweepFolder(Path(sweep_dir)).load_sweep()
    n_labelled = _rows(sweep.base_config.data.train)
    n_lm = _rows(sweep.base_config.data.unlabelled[0]) if sweep.base_config.data.unlabelled else 0
    fold_train = n_labelled * (args.folds - 1) // args.folds
    used = {"labelled": 0, "unlabelled": 0}
    for trial in trials:
        params = {k.removeprefix("param:"): v for k, v in trial.items() if k.startswith("param:")}
        one = consumed(parse_config(with_params(sweep.base, params)), fold_train, n_lm)
        for key in used:
            used[key] += one[key] * trial["folds_done"]
    final = consumed(parse_config(with_params(sweep.base, best_params)), n_labelled, n_lm)
    for key in used:
        used[key] += final[key]
    return used


def _rows(path: Path) -> int:
    from sft_tune.core.files import read_table

    return len(read_table(Path(path), "data file"))


def paired(results: list[dict], arm: str, metric: str) -> dict:
    """Per-seed differences of `arm` against plain, with a paired t-test and Wilcoxon test."""
    base = {r["seed"]: r["test"][metric] for r in results if r["arm"] == "plain"}
    mine = {r["seed"]: r["test"][metric] for r in results if r["arm"] == arm}
    return paired_test(mine, base)


def command(args: argparse.Namespace) -> str:
    """The command line that runs (or resumes) this study: the options that differ from the
    defaults."""
    parts = ["python studies/quality.py"]
    if args.base.resolve() != (ROOT / "examples" / "tweets.yaml").resolve():
        parts.append(f"--base {_rel(args.base)}")
    if args.arms != list(ARMS):
        parts.append("--arms " + " ".join(args.arms))
    parts.append("--seeds " + " ".join(map(str, args.seeds)))
    parts.append(f"--trials {args.trials} --folds {args.folds} --concurrent {args.concurrent}")
    if args.warmup:
        parts.append(f"--warmup {args.warmup}")
    if args.head_lr_scale != 1.0:
        parts.append(f"--head-lr-scale {args.head_lr_scale:g}")
    return " ".join(parts)


def _rel(path: Path | str) -> str:
    """`path` relative to the repository when it lies inside it (the report and its JSON are
    committed)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


KEEP = (
    "<!-- written by hand below this line; studies/quality.py keeps it when it rewrites the "
    "table -->"
)


def write_report(args: argparse.Namespace, results: list[dict]) -> None:
    """The Markdown report, keeping the hand-written part of the old one, and its JSON next to
    it."""
    save_report(args.report, report(args, results), keep=KEEP)
    rows = [{**r, "sweep_dir": _rel(r["sweep_dir"])} for r in results]
    args.report.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str) + "\n")


def report(args: argparse.Namespace, results: list[dict]) -> str:
    lines = [
        "# Quality study: searched two-phase SFT against an equally searched plain fine-tune",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the pairs finished "
        f"by `{command(args)}`.",
        f"Base config `{_rel(args.base)}`; every arm: {args.trials} trials x {args.folds} folds, "
        f"{args.concurrent} at a time (no early stopping of trials), best by CV macro-F1, "
        "retrained on all labelled data, tested once.",
        "",
    ]
    rows = []
    for arm in args.arms:
        pairs = [r for r in results if r["arm"] == arm]
        if not pairs:
            continue
        f1 = [100 * r["test"]["macro_f1"] for r in pairs]
        acc = [100 * r["test"]["accuracy"] for r in pairs]
        stat = paired(results, arm, "macro_f1") if arm != "plain" else {}
        diffs = " ".join(f"{100 * d:+.1f}" for d in stat.get("diffs", [])) or "-"
        lab = statistics.fmean(r["consumed"]["labelled"] for r in pairs)
        lm = statistics.fmean(r["consumed"]["unlabelled"] for r in pairs)
        rows.append(
            [
                arm,
                len(pairs),
                mean_std(f1, ".1f"),
                mean_std(acc, ".1f"),
                diffs,
                _p(stat.get("t_p")),
                _p(stat.get("wilcoxon_p")),
                f"{lab:,.0f} / {lm:,.0f}",
                f"{statistics.fmean(r['minutes'] for r in pairs):.1f}",
            ]
        )
    header = ["arm", "seeds", "test macro-F1 (mean ± std)", "test accuracy"]
    header += ["Δ macro-F1 vs plain (per seed)", "paired t p", "Wilcoxon p"]
    header += ["labelled / LM examples learned from", "minutes"]
    lines += [
        *markdown_table(header, rows),
        "",
        "Examples learned from: every fold of every trial plus the retraining; an α = 0 phase 1 "
        "scores its labelled "
        "batches for the log without learning from them (not counted). Both p-values are "
        "two-sided, over the per-seed pairs: a paired t-test and a Wilcoxon signed-rank test "
        f"(with n pairs the Wilcoxon test cannot go below 2/2^n: {2 / 2 ** len(args.seeds):.4f} "
        f"at {len(args.seeds)} seeds).",
        "",
        "Best parameters per (arm, seed):",
        "",
    ]
    for r in results:
        if _complete(r) != args.trials:
            lines.append(
                f"- WARNING {r['arm']} seed {r['seed']}: {_complete(r)} of {args.trials} trials "
                "finished every fold (an unequal budget)"
            )
    for r in results:
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
        )
        lines.append(
            f"- {r['arm']} seed {r['seed']}: CV {r['cv_mean']:.4f} ± {r['cv_std']:.4f}; test "
            f"macro-F1 {r['test']['macro_f1']:.4f}; {params}"
        )
    return "\n".join(lines) + "\n"


def _complete(r: dict) -> int:
    """Trials of the pair's search that finished every fold (read from its sweep when not
    stored)."""
    if "trials_complete" not in r:
        trials = json.loads((ROOT / r["sweep_dir"] / "trials.json").read_text())
        r["trials_complete"] = sum(t["status"] == "COMPLETE" for t in trials)
    return r["trials_complete"]


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else []
    done = {(r["arm"], r["seed"]) for r in results}
    # --report-only recounts from each pair's sweep folder (the counting rules may have changed)
    if args.report_only:
        for r in results:
            r["consumed"] = examples_read(args, ROOT / r["sweep_dir"], r["params"])
        store.write_text(json.dumps(results, indent=2, default=str))
        write_report(args, results)
        print(args.report.read_text())
        return 0
    import ray

    # Each trial holds its one worker's CPU (it trains in its Tune actor): room for --concurrent of
    # them.
    logical = max(args.num_cpus or os.cpu_count() or 1, args.concurrent)
    ray.init(
        num_cpus=logical, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False
    )
    try:
        for seed in args.seeds:  # seed-major: every arm of a seed before the next seed (paired)
            for arm in args.arms:
                if (arm, seed) in done:
                    continue
                print(f"== {arm} seed {seed}", flush=True)
                results.append(run_one(args, arm, seed))
                store.write_text(json.dumps(results, indent=2, default=str))
                write_report(args, results)
                r = results[-1]
                print(
                    f"   test macro-F1 {r['test']['macro_f1']:.4f} (CV {r['cv_mean']:.4f}) in "
                    f"{r['minutes']:.1f} min",
                    flush=True,
                )
    finally:
        ray.shutdown()
    write_report(args, results)
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
