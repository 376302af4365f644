"""The `sft-tune` command line: each subcommand parses its arguments and calls one public function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sft_tune.errors import InputError, Problem

EXIT_INPUT = 2


def _train(args: argparse.Namespace) -> int:
    from sft_tune.runconfig import load_config

    config = load_config(args.config)
    if args.output_dir is not None:
        config = config.model_copy(update={"output_dir": args.output_dir.resolve()})
    from sft_tune.run import train  # heavy imports only after the config is known to be valid

    metrics = train(config, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2, default=str))
    test = metrics.get("test")
    if test:
        scores = "  ".join(
            f"{key} {value:.4f}"
            for key, value in test.items()
            if isinstance(value, float) and "/" not in key
        )
        print(f"test {scores}  (model: {metrics['model_dir']})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from sft_tune.predict import predict, write_jsonl

    columns = {
        "text_column": args.text_column,
        "ner.tokens_column": args.tokens_column,
        "qa.question_column": args.question_column,
        "qa.context_column": args.context_column,
    }
    records = predict(args.model, args.input, columns, args.batch_size)
    if args.output is None:
        write_jsonl(records, sys.stdout)
        return 0
    tmp = args.output.with_name(args.output.name + ".tmp")
    try:
        with open(tmp, "w") as handle:
            count = write_jsonl(records, handle)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, args.output)
    print(f"wrote {count} predictions to {args.output}", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    if (args.space is None) == (args.resume is None):
        raise InputError(
            [
                Problem(
                    "--space / --resume",
                    {"space": args.space, "resume": args.resume},
                    "give exactly one of --space FILE (new sweep) and --resume DIR (continue one)",
                    "e.g. sft-tune search --space search_spaces/alpha.yaml",
                )
            ]
        )
    from sft_tune.sweep.results import format_table
    from sft_tune.sweep.run import prepare, run_search

    _, folder = prepare(args.space, args.resume)
    try:
        result = run_search(
            args.space, args.resume, args.address, use_wandb=not args.no_wandb, verbose=args.verbose
        )
    except KeyboardInterrupt:
        print(
            f"\nsweep interrupted; resume it with: sft-tune search --resume {folder.path}",
            file=sys.stderr,
        )
        return 130
    print(format_table(result))
    print(
        f"\nsweep folder: {result.sweep_dir}  (trials.csv, trials.json, best.json, best_config.yaml, summary.json, study.db, sweep.log)"
    )
    print(
        f"tokenization passes in this sweep: {result.tokenization_passes}; Optuna trial states: {result.optuna_states}"
    )
    if result.best:
        best = result.best
        print(
            f"best: {best['trial_id']}  {best['metric']} {best['cv_mean']:.4f} ± {best['cv_std']:.4f}  params {best['params']}"
        )
    print(f"phase 1: {result.verdict['statement']}")
    if not result.complete:
        print(
            f"sweep incomplete; resume it with: sft-tune search --resume {result.sweep_dir}",
            file=sys.stderr,
        )
        return 0
    if result.best and not args.no_select:
        print(
            "\nretraining the best configuration on all labelled data (sft-tune select) ...",
            flush=True,
        )
        args.sweep_dir, args.no_progress = result.sweep_dir, False
        _select(args)
    from sft_tune.report import build_report

    path, _ = build_report(result.sweep_dir)
    print(f"report: {path}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from sft_tune.select import select_best

    summary = select_best(
        args.sweep_dir, use_wandb=not args.no_wandb, progress=not args.no_progress
    )
    print(json.dumps(summary, indent=2, default=str))
    test = summary.get("test") or {}
    print(
        f"best trial {summary['trial_id']}: CV {summary['metric']} {summary['cv_mean']:.4f} ± {summary['cv_std']:.4f}; test "
        + "  ".join(f"{k} {v:.4f}" for k, v in test.items())
        + f"\nmodel: {summary['model_dir']}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from sft_tune.report import build_report

    path, summary = build_report(args.sweep_dir, args.output)
    print(summary)
    print(
        f"report: {path}\nOptuna dashboard: optuna-dashboard sqlite:///{Path(args.sweep_dir).resolve() / 'study.db'}"
    )
    return 0


def _submit(args: argparse.Namespace) -> int:
    from sft_tune.submit import submit

    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    return submit(
        args.address,
        command,
        follow=args.follow,
        token_file=args.token_file,
        pip=args.pip,
        env=args.env,
    )


def _jobs(args: argparse.Namespace) -> int:
    from sft_tune.submit import jobs_command

    return jobs_command(args.action, args.job_id, args.address, args.token_file, args.follow)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-tune",
        description="Two-phase supervised fine-tuning: phase 1 minimizes L_lm + alpha * L_task on "
        "unlabelled and labelled data through one backbone, phase 2 minimizes L_task.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train both phases from a run config, test, export",
        description="Train both phases from a run config (YAML; see README 'Config reference'), evaluate on the test file, and export a Hugging Face model folder to OUTPUT_DIR/model.",
    )
    train.add_argument("--config", type=Path, required=True, help="run config YAML file")
    train.add_argument(
        "--output-dir", type=Path, default=None, help="override the config's output_dir"
    )
    train.add_argument(
        "--no-progress", action="store_true", help="no progress bars (log lines only)"
    )
    train.set_defaults(func=_train)

    predict = sub.add_parser(
        "predict",
        help="run an exported model over a file (JSONL out)",
        description="Run an exported model over each row of INPUT (CSV, JSONL, Parquet or dataset folder); writes one JSON line per row: classification: the label and every label's probability; ner: the entities with type, character offsets and score; qa: the answer with its score and character offsets. Columns default to the ones the model was trained with (its run.json).",
    )
    predict.add_argument(
        "--model", type=Path, required=True, help="exported model folder (OUTPUT_DIR/model)"
    )
    predict.add_argument("--input", type=Path, required=True, help="file of texts to label")
    predict.add_argument(
        "--text-column",
        default=None,
        help="column holding the text (classification, ner; default: as in training)",
    )
    predict.add_argument(
        "--tokens-column",
        default=None,
        help="column holding lists of words (ner; default: as in training)",
    )
    predict.add_argument(
        "--question-column",
        default=None,
        help="column holding the question (qa; default: as in training)",
    )
    predict.add_argument(
        "--context-column",
        default=None,
        help="column holding the context (qa; default: as in training)",
    )
    predict.add_argument(
        "--output", type=Path, default=None, help="JSONL file to write (default: stdout)"
    )
    predict.add_argument(
        "--batch-size", type=int, default=32, help="texts per forward pass (default: 32)"
    )
    predict.set_defaults(func=_predict)
    search = sub.add_parser(
        "search",
        help="search hyperparameters with Ray Tune + Optuna, scored by k-fold CV",
        description="Search the two-phase hyperparameters (alpha, learning rates, phase lengths, any config field) with Ray Tune and Optuna; each trial is scored by stratified k-fold cross-validation (a 1-worker trial in its own reused Tune actor, a multi-worker one as a Ray Train DDP run). Stopped trials whose partial CV mean reaches the best complete one are finished before the best is chosen, retrained on all labelled data, tested and exported. The terminal shows one progress line per trial event; Ray's own output goes to STORAGE_PATH/NAME/sweep.log. Results go to STORAGE_PATH/NAME (see README 'sft-tune search').",
    )
    search.add_argument(
        "--space", type=Path, default=None, help="search-space YAML (see search_spaces/)"
    )
    search.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="resume the interrupted sweep in DIR (no rerun of finished trials; DIR may have been moved, not renamed)",
    )
    search.add_argument(
        "--address",
        default=None,
        help="Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray with the dashboard on 127.0.0.1)",
    )
    search.add_argument(
        "--no-wandb",
        action="store_true",
        help="no W&B runs (default: one offline W&B run per trial, unless WANDB_MODE says otherwise)",
    )
    search.add_argument(
        "--no-select",
        action="store_true",
        help="skip retraining and exporting the best configuration at the end",
    )
    search.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also show Ray's, Tune's and Train's own output (status tables, INFO logs), which otherwise goes only to SWEEP_DIR/sweep.log",
    )
    search.set_defaults(func=_search)

    select = sub.add_parser(
        "select",
        help="retrain the best trial of a sweep on all data, test, export",
        description="Take the best COMPLETE trial of SWEEP_DIR by CV mean (ties: lower std, then lower trial id), retrain both phases on all labelled training data, evaluate the test file, and export SWEEP_DIR/best_model (Hugging Face folder + best.json), logged to W&B as an Artifact of type model with alias best.",
    )
    select.add_argument(
        "sweep_dir", type=Path, metavar="SWEEP_DIR", help="the sweep folder (storage_path/name)"
    )
    select.add_argument("--no-wandb", action="store_true", help="do not log the best model to W&B")
    select.add_argument("--no-progress", action="store_true", help="no progress bars")
    select.set_defaults(func=_select)

    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a sweep",
        description="Write SWEEP_DIR/report.html (optimization history, parallel coordinates, alpha against CV score, fold spread per trial, loss curves of the best configuration) and print a short summary.",
    )
    report.add_argument(
        "sweep_dir", type=Path, metavar="SWEEP_DIR", help="the sweep folder (storage_path/name)"
    )
    report.add_argument(
        "--output",
        type=Path,
        default=None,
        help="HTML file to write (default: SWEEP_DIR/report.html)",
    )
    report.set_defaults(func=_report)
    submit = sub.add_parser(
        "submit",
        help="run a command (search, train, select, report) on a Ray cluster as a Ray Job",
        description="Submit `sft-tune COMMAND ...` to a Ray cluster through the Job Submission API, with this project folder as the job's working directory (minus .gitignore/.rayignore). The command is checked locally first. The Ray token comes from --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and is never printed or sent anywhere but the Authorization header.",
        epilog="example: sft-tune submit --address http://HEAD:8265 --follow -- search --space search_spaces/alpha.yaml",
    )
    submit.add_argument(
        "--address", required=True, help="the head's dashboard address, e.g. http://HEAD:8265"
    )
    submit.add_argument(
        "--follow",
        action="store_true",
        help="stream the job's logs and exit with its outcome (0 = SUCCEEDED)",
    )
    submit.add_argument(
        "--token-file", type=Path, default=None, help="file holding the cluster's Ray token"
    )
    submit.add_argument(
        "--pip",
        action="append",
        default=None,
        metavar="REQ",
        help="pip requirement to install for the job (repeatable)",
    )
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable; secrets are refused). WANDB_MODE (default offline) and HF_HUB_OFFLINE are forwarded when set",
    )
    submit.add_argument(
        "command_args",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the sft-tune command to run on the cluster",
    )
    submit.set_defaults(func=_submit)

    jobs = sub.add_parser(
        "jobs",
        help="status, logs or stop of a submitted job",
        description="Look after a job submitted with `sft-tune submit`.",
    )
    jobs.add_argument("action", choices=["status", "logs", "stop"], help="what to do")
    jobs.add_argument("job_id", metavar="JOB_ID", help="the id printed by `sft-tune submit`")
    jobs.add_argument(
        "--address", required=True, help="the head's dashboard address, e.g. http://HEAD:8265"
    )
    jobs.add_argument(
        "--token-file", type=Path, default=None, help="file holding the cluster's Ray token"
    )
    jobs.add_argument(
        "--follow",
        action="store_true",
        help="with logs: stream until the job ends and exit with its outcome",
    )
    jobs.set_defaults(func=_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except InputError as err:
        print(f"sft-tune {args.command}: {err.render()}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"sft-tune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
