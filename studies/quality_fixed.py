"""Quality study, round 2: does phase 1 pay off where the LM loss is meaningful from step one?

    python studies/quality_fixed.py --pilot                  # choose E, learning rates, S (seed 0)
    python studies/quality_fixed.py --seeds 0 1 2            # the study -> studies/QUALITY.md
    python studies/quality_fixed.py --report-only            # rewrite the report from kept rows

What it does, how, and where its results go: studies/README.md, section `quality_fixed.py`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from harness import ROOT, machine, markdown_table, mean_std, paired_test  # noqa: E402  (bench/harness.py)
from harness import parser as options_parser  # noqa: E402

EXAMPLES = ROOT / "examples"
LABELLED = 300  # tweets in examples/data/tweets/train.csv
MODELS: dict[str, dict[str, Any]] = {
    "smollm2": {
        "model": {
            "name_or_path": str(EXAMPLES / "data" / "smollm2"),
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "task": "classification",
        },
        "max_length": 64,
        "warmup": 0,  # SmolLM2 ships its LM head (tied to the embeddings)
        "lm_batch": 8,
        "task_batch": 5,  # x S steps: a whole number of epochs of the 300 tweets for `matched`
        "batch": 16,
        "pilot": {
            "phase2_lr": [3e-5, 1e-4],
            "epochs": 4,
            "phase1_lr": [2e-5, 6e-5],
            "steps": [60, 120],
        },
    },
    "minilm": {
        "model": {"name_or_path": str(EXAMPLES / "data" / "minilm"), "task": "classification"},
        "max_length": 64,
        "warmup": 100,  # MiniLM ships no MLM head: train a fresh one first, backbone frozen
        "lm_batch": 16,
        "task_batch": 3,
        "batch": 16,
        "pilot": {
            "phase2_lr": [1e-4, 3e-4],
            "epochs": 6,
            "phase1_lr": [3e-5, 1e-4],
            "steps": [300, 500],
        },
    },
}
ARMS = ("plain", "matched", "sft-a1", "sft-a025", "tapt")
ALPHA = {"sft-a1": 1.0, "sft-a025": 0.25, "tapt": 0.0}
SECTION = "<!-- quality study 2 (studies/quality_fixed.py) -->"
SECTION_END = "<!-- end of quality study 2 -->"


def config_of(
    model: str, chosen: dict[str, Any], arm: str, seed: int, out: Path, pilot: bool, name: str
) -> dict:
    """The run config of one (model, arm, seed) with the pilot's choices (`chosen`), exported to
    OUT/runs/NAME."""
    spec = MODELS[model]
    base = yaml.safe_load((EXAMPLES / "tweets.yaml").read_text())
    data = {
        **base["data"],
        "train": str(EXAMPLES / base["data"]["train"]),
        "test": None if pilot else str(EXAMPLES / base["data"]["test"]),
        "unlabelled": [str(EXAMPLES / p) for p in base["data"]["unlabelled"]],
        "max_length": spec["max_length"],
        "validation_fraction": 0.25 if pilot else 0.0,  # the pilot never sees the test file
    }
    steps = chosen["steps"] if arm in ALPHA else 0
    extra = chosen["steps"] * spec["task_batch"] // LABELLED if arm == "matched" else 0
    return {
        "model": spec["model"],
        "data": {k: v for k, v in data.items() if v is not None},
        "phase1": {
            "steps": steps,
            "learning_rate": chosen["phase1_lr"],
            "alpha": ALPHA.get(arm, 1.0),
            "lm_batch_size": spec["lm_batch"],
            "task_batch_size": spec["task_batch"],
            "head_warmup_steps": spec["warmup"] if steps else 0,
        },
        "phase2": {
            "epochs": chosen["epochs"] + extra,
            "learning_rate": chosen["phase2_lr"],
            "batch_size": spec["batch"],
        },
        "seed": seed,
        "output_dir": str(out / "runs" / name),
        "log_every": 50,
    }


def examples_learned(config: dict) -> dict[str, int]:
    """Labelled and unlabelled examples a run learns from (an alpha 0 phase 1 scores its labelled
    batches for the log without a gradient: not counted)."""
    p1, p2 = config["phase1"], config["phase2"]
    task = p1["task_batch_size"] if p1["alpha"] > 0 else 0
    warmup = p1["head_warmup_steps"] if p1["steps"] else 0
    return {
        "labelled": p1["steps"] * task + p2["epochs"] * LABELLED,
        "unlabelled": (p1["steps"] + warmup) * p1["lm_batch_size"],
    }


LM_STEPS = 10  # steps averaged at each end of a phase for the L_lm figures


def lm_losses(history: Path, steps: int = LM_STEPS) -> dict[str, list[float]]:
    """The LM loss at the start and the end of the LM-head warm-up (phase 0) and of phase 1: the
    mean over the first and the last `steps` logged steps of each, from the run's history.jsonl."""
    rows = (
        [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else []
    )
    found = {}
    for phase, key in ((0, "warmup"), (1, "phase1")):
        lm = [r["lm_loss"] for r in rows if r.get("phase") == phase]
        if lm:
            found[key] = [statistics.fmean(lm[:steps]), statistics.fmean(lm[-steps:])]
    return found


def train(name: str, config: dict, out: Path) -> dict[str, Any]:
    """One `sft-tune train` in a fresh process (skipped when its run.json exists): its run.json
    and wall time."""
    run_json = Path(config["output_dir"]) / "model" / "run.json"
    timing = out / "minutes.json"
    minutes = json.loads(timing.read_text()) if timing.is_file() else {}
    if not run_json.is_file():
        path = out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {name}", flush=True)
        start = time.time()
        with open(log, "w") as handle:
            command = [
                sys.executable,
                "-m",
                "sft_tune",
                "train",
                "--config",
                str(path),
                "--no-progress",
            ]
            done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed (exit {done.returncode}); see {log}")
        minutes[name] = (time.time() - start) / 60
        timing.write_text(json.dumps(minutes, indent=2))
        print(f"   {minutes[name]:.1f} min", flush=True)
    return {**json.loads(run_json.read_text()), "minutes": minutes.get(name)}


def pilot(model: str, out: Path) -> dict[str, Any]:
    """Seed 0, validation split 25%, no test file. First the plain arm's phase-2 learning rate
    and epochs E: the best per-epoch validation macro-F1 of one run per rate. Then, with those,
    sft-a1's phase-1 learning rate at the shortest phase 1, and at that rate the longer phase-1
    lengths: the best validation macro-F1 after phase 2 picks the rate and the length S."""
    grid, seen = MODELS[model]["pilot"], []
    for lr in grid["phase2_lr"]:
        chosen = {"phase2_lr": lr, "epochs": grid["epochs"], "phase1_lr": 5e-5, "steps": 0}
        name = f"pilot-{model}-plain-lr{lr:g}"
        run = train(name, config_of(model, chosen, "plain", 0, out, True, name), out)
        for ev in run["evaluations"]:  # after each phase-2 epoch, on the 75 held-out tweets
            seen.append(
                {"arm": "plain", "phase2_lr": lr, "epochs": ev["epoch"], "macro_f1": ev["macro_f1"]}
            )
    best = max(seen, key=lambda s: (s["macro_f1"], -s["epochs"]))
    choice = {"phase2_lr": best["phase2_lr"], "epochs": best["epochs"]}

    def two_phase(lr: float, steps: int) -> dict[str, Any]:
        name = f"pilot-{model}-sft-a1-lr{lr:g}-s{steps}"
        chosen = {**choice, "phase1_lr": lr, "steps": steps}
        final = train(name, config_of(model, chosen, "sft-a1", 0, out, True, name), out)[
            "evaluations"
        ][-1]
        found = {"arm": "sft-a1", "phase1_lr": lr, "steps": steps, "macro_f1": final["macro_f1"]}
        seen.append(found)
        return found

    shortest = min(grid["steps"])
    rate = max((two_phase(lr, shortest) for lr in grid["phase1_lr"]), key=lambda s: s["macro_f1"])
    longer = [two_phase(rate["phase1_lr"], steps) for steps in sorted(grid["steps"])[1:]]
    two = max([rate, *longer], key=lambda s: (s["macro_f1"], -s["steps"]))
    return {**choice, "phase1_lr": two["phase1_lr"], "steps": two["steps"], "pilot_runs": seen}


def paired(
    results: list[dict], model: str, arm: str, metric: str, base_arm: str = "plain"
) -> dict[str, Any]:
    """Per-seed differences of `arm` against `base_arm`, with a paired t-test and a Wilcoxon
    test."""
    base = {
        r["seed"]: r["test"][metric] for r in results if (r["model"], r["arm"]) == (model, base_arm)
    }
    mine = {r["seed"]: r["test"][metric] for r in results if (r["model"], r["arm"]) == (model, arm)}
    return paired_test(mine, base)


def report(results: list[dict], pilots: dict[str, dict], seeds: list[int]) -> str:
    """The study's section of studies/QUALITY.md."""
    lines = [
        SECTION,
        "",
        "### Round 2: the runs kept in `studies/QUALITY_FIXED.json`",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python "
        f"studies/quality_fixed.py` (seeds {' '.join(map(str, seeds))}) from {len(results)} runs "
        f"on {' and '.join(sorted({r.get('machine', '?') for r in results}))}; one run at a time.",
        "Every run: `sft-tune train` on all 300 labelled tweets, tested once on 1,500. Arms per "
        "model: `plain` (E epochs), `matched` (plain with the labelled examples the α > 0 arms "
        "add), `sft-a1` / `sft-a025` (phase 1 of S steps with α = 1 / 0.25, then the same E "
        "epochs), `tapt` (α = 0).",
        "",
    ]
    for model, choice in pilots.items():
        if not any(r["model"] == model for r in results):
            continue
        grid = MODELS[model]["pilot"]
        tried = ", ".join(
            f"{r['arm']} {r.get('phase2_lr', r.get('phase1_lr')):g}"
            + (f" E={r['epochs']}" if r["arm"] == "plain" else f" S={r['steps']}")
            + f": {r['macro_f1']:.3f}"
            for r in choice.get("pilot_runs", [])
        )
        lines.append(
            f"Pilot ({model}, seed 0, 225 tweets to train and 75 to validate, no test file): "
            f"phase-2 learning rate {choice['phase2_lr']:g} and E = {choice['epochs']} epochs "
            f"(the best per-epoch validation macro-F1 of plain runs of {grid['epochs']} epochs "
            f"at rates {grid['phase2_lr']}), phase-1 learning rate {choice['phase1_lr']:g} "
            f"(sft-a1 at rates {grid['phase1_lr']} with the shortest S) and S = "
            f"{choice['steps']} steps (of {grid['steps']} at that rate). Validation macro-F1: "
            f"{tried}."
        )
    lines.append("")
    header = [
        "model",
        "arm",
        "seeds",
        "test macro-F1",
        "test accuracy",
        "Δ macro-F1 vs plain, per seed (mean; paired t p, Wilcoxon p)",
        "Δ macro-F1 vs matched, per seed (mean; p, p)",
        "labelled / unlabelled examples",
        "minutes per run",
    ]
    rows = []
    for model in pilots:
        for arm in ARMS:
            runs = [r for r in results if (r["model"], r["arm"]) == (model, arm)]
            if not runs:
                continue
            f1 = [100 * r["test"]["macro_f1"] for r in runs]
            acc = [100 * r["test"]["accuracy"] for r in runs]
            vs_plain = _diffs(paired(results, model, arm, "macro_f1")) if arm != "plain" else "-"
            vs_matched = (
                _diffs(paired(results, model, arm, "macro_f1", "matched")) if arm in ALPHA else "-"
            )
            used = runs[0]["examples"]
            rows.append(
                [
                    model,
                    arm,
                    len(runs),
                    mean_std(f1, ".1f"),
                    mean_std(acc, ".1f"),
                    vs_plain,
                    vs_matched,
                    f"{used['labelled']:,} / {used['unlabelled']:,}",
                    f"{statistics.fmean(r['minutes'] for r in runs if r['minutes']):.1f}",
                ]
            )
    lines += markdown_table(header, rows)
    lm = lm_lines(results, list(pilots))
    lines += ["", *lm] if lm else []
    lines += [
        "",
        "Both p-values are two-sided over the per-seed pairs (with n pairs the Wilcoxon test "
        f"cannot go below 2/2^n: {2 / 2 ** max(len(seeds), 1):.3f} at {len(seeds)} seeds).",
        "",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def lm_lines(results: list[dict], models: list[str]) -> list[str]:
    """One line per model: how far L_lm starts above where phase 1 leaves it (runs with phase 1)."""
    lines = []
    for model in models:
        runs = [r for r in results if r["model"] == model and r.get("lm_loss", {}).get("phase1")]
        if not runs:
            continue
        parts = []
        for key, what in (
            ("warmup", "the LM-head warm-up (backbone frozen)"),
            ("phase1", "phase 1"),
        ):
            pairs = [r["lm_loss"][key] for r in runs if key in r["lm_loss"]]
            if pairs:
                start, end = (statistics.fmean(p[i] for p in pairs) for i in (0, 1))
                parts.append(f"{what} {start:.2f} → {end:.2f}")
        lines.append(
            f"L_lm of {model} (nats per token, the mean of the first and of the last {LM_STEPS} "
            f"steps, over its {len(runs)} run{'' if len(runs) == 1 else 's'} with phase 1): "
            f"{'; '.join(parts)}."
        )
    return lines


def write_section(path: Path, text: str) -> None:
    """Put the study's section in studies/QUALITY.md: in place of the old one (what is written
    around it, such as the hand-written reading below it, stays), else at the end (below the first
    study's hand-written part, which studies/quality.py keeps)."""
    old = path.read_text() if path.is_file() else ""
    if SECTION in old and SECTION_END in old:
        after = old[old.index(SECTION_END) + len(SECTION_END) + 1 :]
        path.write_text(old[: old.index(SECTION)] + text + after)
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + text)


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["model"], row["arm"], row["seed"]


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _diffs(stat: dict[str, Any]) -> str:
    """'+2.7 +1.0 -0.5 (+1.1; 0.301, 0.500)': the per-seed differences in points, their mean and
    both p-values (- for a p-value where there are fewer than two pairs)."""
    diffs = [100 * d for d in stat["diffs"]]
    if not diffs:
        return "-"
    text = " ".join(f"{d:+.1f}" for d in diffs)
    return (
        f"{text} ({statistics.fmean(diffs):+.1f}; {_p(stat.get('t_p'))}, "
        f"{_p(stat.get('wilcoxon_p'))})"
    )


OPTIONS = [
    ("--models", list(MODELS), "models to run (default: both)", {"choices": list(MODELS)}),
    ("--arms", list(ARMS), "arms to run (default: all five)", {"choices": list(ARMS)}),
    ("--seeds", [0, 1, 2], "seeds (default: 0-2)"),
    ("--pilot", False, "choose E, learning rates and S (seed 0)"),
    ("--report-only", False, "rewrite the report; train nothing"),
    ("--out", ROOT / "runs" / "quality-fixed", "folder for the run folders"),
    ("--report", ROOT / "studies" / "QUALITY.md", "the report to write (its second section)"),
    ("--results", ROOT / "studies" / "QUALITY_FIXED.json", "every finished run's row (kept)"),
]


def main(argv: list[str] | None = None) -> int:
    parser = options_parser(__doc__, OPTIONS)
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    pilots_file = ROOT / "studies" / "PILOT.json"
    pilots = json.loads(pilots_file.read_text()) if pilots_file.is_file() else {}
    if args.pilot:
        for model in args.models:
            pilots[model] = pilot(model, args.out)
            pilots_file.write_text(json.dumps(pilots, indent=2) + "\n")
            print(
                f"{model}: {json.dumps({k: v for k, v in pilots[model].items() if k != 'pilot_runs'})}"
            )
        return 0
    missing = [m for m in args.models if m not in pilots]
    if missing:
        parser.error(f"no pilot for {missing} in {pilots_file}: run with --pilot first")
    kept = (
        {_key(r): r for r in json.loads(args.results.read_text())} if args.results.is_file() else {}
    )
    chosen = {m: pilots[m] for m in args.models}

    def section() -> str:  # every kept run of these models and seeds, whatever --arms ran now
        rows = [
            r
            for r in sorted(kept.values(), key=_key)
            if r["model"] in chosen and r["seed"] in args.seeds
        ]
        return report(rows, chosen, args.seeds)

    for seed in args.seeds:  # seed-major: every arm of a seed before the next (paired)
        for model in args.models:
            for arm in args.arms:
                name = f"{model}-{arm}-s{seed}"
                config = config_of(model, pilots[model], arm, seed, args.out, False, name)
                run_json = Path(config["output_dir"]) / "model" / "run.json"
                if not run_json.is_file() and ((model, arm, seed) in kept or args.report_only):
                    continue  # kept (finished, folder gone), or not run and not to be run now
                run = train(name, config, args.out)
                row = {
                    "model": model,
                    "arm": arm,
                    "seed": seed,
                    "test": run["metrics"]["test"],
                    "examples": examples_learned(config),
                    "minutes": run["minutes"],
                    "unknown_token_share": run.get("unknown_token_share"),
                    "lm_loss": lm_losses(run_json.parent / "history.jsonl"),
                    "machine": kept.get((model, arm, seed), {}).get("machine") or machine(),
                }
                kept[model, arm, seed] = row
                args.results.write_text(
                    json.dumps(sorted(kept.values(), key=_key), indent=2) + "\n"
                )
                write_section(args.report, section())
    text = section()
    write_section(args.report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
