"""The `sft-tune` command line's arguments: one parser for the CLI (`cli.py` runs each command)
and for `submit`, which checks a forwarded command the way the job will parse it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from sft_tune import __version__
from sft_tune.tasks import SPECS

# Variables of this shell that `submit` forwards to the job when they are set (WANDB_MODE
# defaults to offline); any other goes with --env.
FORWARDED_ENV = (
    "WANDB_MODE",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "TOKENIZERS_PARALLELISM",
)
# An --env name holding one of these parts (any case) is taken for a secret and refused.
SECRET_ENV_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "NETRC", "AUTH")


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors also say where the arguments are described (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`\n")


SWEEP_DIR_HELP = (
    "the sweep folder (storage_path/name), or with URI storage the sweep's home "
    "(s3://bucket/sweeps/NAME): its files are brought down to ./runs/sweeps/NAME, and what the "
    "command writes goes back up"
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sft-tune",
        description="Two-phase supervised fine-tuning: phase 1 minimizes L_lm + alpha * L_task on "
        "unlabelled and labelled data through one backbone, phase 2 minimizes L_task.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train both phases from a run config, test, export",
        description="Train both phases from a run config (YAML; every key in docs/config.md), "
        "evaluate on the test file, and export a Hugging Face model folder to "
        "OUTPUT_DIR/model.",
    )
    train.add_argument("--config", type=Path, required=True, help="run config YAML file")
    train.add_argument(
        "--output-dir", type=Path, default=None, help="override the config's output_dir"
    )
    train.add_argument(
        "--no-progress", action="store_true", help="no progress bars (log lines only)"
    )

    predict = sub.add_parser(
        "predict",
        help="run an exported model over a file (JSONL out)",
        description="Run an exported model over each row of INPUT (CSV, TSV, JSONL, JSON, "
        "Parquet or a saved dataset folder) and write one JSON line per row. The record of "
        "each task: "
        'classification: {"text", "label", "probabilities": {label: p}}; '
        'ner: {"text", "entities": [{"type", "start", "end", "text", "score"}]} (character '
        "offsets into text; raw text is split into words at spaces and punctuation, and per "
        "character in Chinese, Japanese, Thai and other scripts written without spaces); "
        'qa: {"id" (when the input has one), "question", "answer" ("" = no answer), "score", '
        '"start", "end" (character offsets into the context), "n_best": the top 5 candidates}; '
        'generation: {"prompt", "response"} (a greedy generation of at most '
        "data.generation.max_new_tokens tokens). "
        "Columns default to the ones the model was trained with (its run.json). The model "
        "folder, the input (read whole and checked) and the output folder are checked before the "
        "model loads.",
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
    for spec in SPECS.values():  # each task's own columns
        for setting, flag in spec.predict_flags.items():
            field = spec.files.options.model_fields[setting.rsplit(".", 1)[-1]]
            about = field.description.rstrip(".")
            predict.add_argument(
                flag, default=None, help=f"{about} ({spec.name}; default: as in training)"
            )
    predict.add_argument(
        "--output", type=Path, default=None, help="JSONL file to write (default: stdout)"
    )
    predict.add_argument(
        "--batch-size", type=int, default=32, help="texts per forward pass (default: 32)"
    )
    search = sub.add_parser(
        "search",
        help="search hyperparameters with Ray Tune + Optuna, scored by k-fold CV",
        description="Search the two-phase hyperparameters (alpha, learning rates, phase lengths, "
        "any config field) with Ray Tune and Optuna; each trial is scored by stratified "
        "k-fold cross-validation (a 1-worker trial in its own reused Tune actor, a "
        "multi-worker one as a Ray Train DDP run). Stopped trials whose partial CV mean "
        "reaches the best complete one are finished before the best is chosen, retrained on "
        "all labelled data, tested and exported. The terminal shows one progress line per "
        "trial event; Ray's own output goes to STORAGE_PATH/NAME/sweep.log. Results go to "
        "STORAGE_PATH/NAME (see docs/search.md).",
    )
    search.add_argument(
        "--space", type=Path, default=None, help="search-space YAML (see search_spaces/)"
    )
    search.add_argument(
        "--resume",
        type=str,
        default=None,
        metavar="DIR",
        help="resume the interrupted sweep in DIR (no rerun of finished trials; DIR may have "
        "been moved, not renamed), or in its home on URI storage (STORAGE_URI/NAME, e.g. "
        "s3://bucket/sweeps/NAME) from any machine",
    )
    search.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="with --resume: read the sweep's data files from this folder instead of where the "
        "sweep started (each at its path relative to the deepest folder that held them all)",
    )
    search.add_argument(
        "--address",
        default=None,
        help="Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray with the "
        "dashboard on 127.0.0.1)",
    )
    search.add_argument(
        "--no-wandb",
        action="store_true",
        help="no W&B runs (default: one offline W&B run per trial, unless WANDB_MODE says "
        "otherwise)",
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
        help="also show Ray's, Tune's and Train's own output (status tables, INFO logs), which "
        "otherwise goes only to SWEEP_DIR/sweep.log",
    )

    select = sub.add_parser(
        "select",
        help="retrain the best trial of a sweep on all data, test, export",
        description="Take the COMPLETE trial of SWEEP_DIR that search.select chooses (best: the "
        "highest CV mean, ties: lower std, then lower trial id; simplest: the cheapest trial "
        "the best cannot be told apart from), retrain both phases on all labelled training "
        "data, evaluate the test file, and export SWEEP_DIR/best_model (Hugging Face folder "
        "+ best.json), logged to W&B as an Artifact of type model with alias best. With a "
        "sweep on URI storage, best_model is then uploaded whole to the sweep's home (its "
        "MANIFEST.json last) with the W&B run.",
    )
    select.add_argument("sweep_dir", type=str, metavar="SWEEP_DIR", help=SWEEP_DIR_HELP)
    select.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="read the sweep's data files from this folder instead of where the sweep ran (each "
        "at its path relative to the deepest folder that held them all), e.g. on another "
        "machine than the cluster's",
    )
    select.add_argument(
        "--on-ray",
        action="store_true",
        help="retrain as a Ray task holding one trial worker's CPUs and GPUs (on a GPU node of "
        "the cluster), which uploads the model to the sweep's URI storage; the model is then "
        "brought down here",
    )
    select.add_argument(
        "--address",
        default=None,
        help="with --on-ray: the Ray cluster (default: $RAY_ADDRESS, a running local cluster, "
        "else a new local Ray)",
    )
    select.add_argument("--no-wandb", action="store_true", help="do not log the best model to W&B")
    select.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a sweep",
        description="Write SWEEP_DIR/report.html (optimization history, parallel coordinates, "
        "alpha against CV score, fold spread per trial, loss curves of the best "
        "configuration) and print a short summary. With a sweep on URI storage, the report "
        "is also uploaded to the sweep's home.",
    )
    report.add_argument("sweep_dir", type=str, metavar="SWEEP_DIR", help=SWEEP_DIR_HELP)
    report.add_argument(
        "--output",
        type=Path,
        default=None,
        help="HTML file to write (default: SWEEP_DIR/report.html)",
    )
    submit = sub.add_parser(
        "submit",
        help="run a command (search, train, select, report) on a Ray cluster as a Ray Job",
        description="Submit `sft-tune COMMAND ...` to a Ray cluster through the Job Submission "
        "API, with a copy of your project folder (the current folder, or --working-dir) as "
        "the job's working directory and the local sft-tune package shipped with it (or, "
        "with --cluster-sft-tune, the cluster image's, checked to be the same version): the "
        "files git tracks (minus .rayignore) plus the files the command reads inside the "
        "project, never secret-looking files (.env*, *token*, *credential*, *secret*, *.pem, "
        "*.key, .netrc, .ray-token/); the upload's count, size and largest files are printed "
        "first. The command is checked locally first, its paths read relative to the project "
        "folder as the job will. The Ray token comes from --token-file, $RAY_AUTH_TOKEN, "
        "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and is never printed or sent anywhere but "
        "the Authorization header.",
        epilog="example: sft-tune submit --address http://HEAD:8265 --follow -- search --space "
        "search_spaces/alpha.yaml",
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
        "--working-dir",
        type=Path,
        default=None,
        help="the project folder the job runs from (default: the current folder); the command's "
        "paths are relative to it",
    )
    submit.add_argument(
        "--cluster-sft-tune",
        action="store_true",
        help="use the sft-tune installed in the cluster image instead of shipping the local one "
        "with the job (the job checks that the versions match)",
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
        help="environment variable for the job (repeatable; names holding "
        + ", ".join(SECRET_ENV_PARTS)
        + " in any case are refused as secrets). Forwarded from this shell when set: "
        + ", ".join(FORWARDED_ENV)
        + " (WANDB_MODE defaults to offline)",
    )
    submit.add_argument(
        "command_args",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the sft-tune command to run on the cluster",
    )

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
    return parser
