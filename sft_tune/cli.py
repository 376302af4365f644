"""The `sft-tune` command line: each subcommand parses its arguments and calls one public
function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sft_tune.arguments import build_parser
from sft_tune.errors import InputError, fail
from sft_tune.jobenv import check_job
from sft_tune.sweep.folder import SweepFolder

EXIT_INPUT = 2


def _train(args: argparse.Namespace) -> int:
    from sft_tune.runconfig import check_train

    checked = check_train(args.config, args.output_dir)
    from sft_tune.run import train  # heavy imports only once the whole input is known good

    metrics = train(checked.config, progress=not args.no_progress, raw=checked.data)
    print(json.dumps(metrics, indent=2, default=str))
    print(f"{scores_on_test(metrics.get('test'))}  (model: {metrics['model_dir']})")
    return 0


def scores_on_test(test: dict | None) -> str:
    """The test metrics in one line (the per-type ones left to the JSON), or that there was no
    test file to score."""
    if not test:
        return "no test file (data.test is not set), so no test metrics"
    scores = "  ".join(
        f"{key} {value:.4f}"
        for key, value in test.items()
        if isinstance(value, float) and "/" not in key
    )
    return f"test {scores}"


def _predict(args: argparse.Namespace) -> int:
    from sft_tune.predict import check_predict, flags, predictions, write_jsonl

    columns = {
        setting.removeprefix("data."): getattr(args, flag.removeprefix("--").replace("-", "_"))
        for setting, flag in flags().items()
    }
    checked = check_predict(args.model, args.input, columns, args.batch_size, args.output)
    records = predictions(checked, args.batch_size)  # the model loads only now
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
    from sft_tune.sweep.checks import check_search

    checked = check_search(args.space, args.resume, args.address, args.data_dir)
    from sft_tune.sweep.ranking import choice_text  # heavy: only once the input is known good
    from sft_tune.sweep.records import format_table
    from sft_tune.sweep.run import run_search

    try:
        result = run_search(use_wandb=not args.no_wandb, verbose=args.verbose, checked=checked)
    except KeyboardInterrupt:
        print(
            "\nsweep interrupted; resume it with: sft-tune search --resume "
            f"{checked.folder.location}",
            file=sys.stderr,
        )
        return 130
    print(format_table(result))
    where = checked.folder.location
    print(
        f"\nsweep folder: {where}  (trials.csv, trials.json, best.json, best_config.yaml, "
        "summary.json, study.db, sweep.log)"
        + (f"; cached in {result.sweep_dir}" if checked.folder.remote else "")
    )
    print(
        f"tokenization passes in this sweep: {result.tokenization_passes}; Optuna trial states: "
        f"{result.optuna_states}"
    )
    if result.best:
        best = result.best
        print(
            f"best: {best['trial_id']}  {best['metric']} {best['cv_mean']:.4f} ± "
            f"{best['cv_std']:.4f}  params {best['params']}"
        )
        print(f"choice: {choice_text(best['choice'], best['metric'])}")
    print(f"phase 1: {result.verdict['statement']}")
    if not result.complete:
        print(
            f"sweep incomplete; resume it with: sft-tune search --resume {where}",
            file=sys.stderr,
        )
        return 0
    if result.best and not args.no_select:
        print(
            "\nretraining the best configuration on all labelled data (sft-tune select) ...",
            flush=True,
        )
        # On a cluster, a GPU sweep on URI storage retrains on a GPU node, not on the head.
        on_ray = bool(
            checked.folder.remote
            and checked.sweep.search.resources.gpus_per_worker
            and (args.address or os.environ.get("RAY_ADDRESS"))
        )
        _run_select(checked.folder, None, on_ray, not args.no_wandb, True, args.address)
    from sft_tune.report import build_report

    path, _ = build_report(checked.folder)
    print(f"report: {path}" + (f" (and {where}/{path.name})" if checked.folder.remote else ""))
    return 0


def _select(args: argparse.Namespace) -> int:
    return _run_select(
        args.sweep_dir,
        args.data_dir,
        args.on_ray,
        not args.no_wandb,
        not args.no_progress,
        args.address,
    )


def _run_select(
    sweep_dir, data_dir: Path | None, on_ray: bool, use_wandb: bool, progress: bool, address
) -> int:
    """`sft-tune select`, or the selection a finished search runs."""
    from sft_tune.select import check_selection, select_best

    checked = check_selection(sweep_dir, data_dir, on_ray)  # before torch loads
    summary = select_best(
        sweep_dir,
        use_wandb=use_wandb,
        progress=progress,
        checked=checked,
        on_ray=on_ray,
        address=address,
    )
    print(json.dumps(summary, indent=2, default=str))
    print(
        f"best trial {summary['trial_id']}: CV {summary['metric']} {summary['cv_mean']:.4f} ± "
        f"{summary['cv_std']:.4f}; {scores_on_test(summary.get('test'))}"
        + f"\nmodel: {summary['model_dir']}"
        + (f" (uploaded to {summary['model_uri']})" if summary.get("model_uri") else "")
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    folder = SweepFolder.open(args.sweep_dir, "SWEEP_DIR", model_files=SweepFolder.REPORT_READS)
    folder.require_results("report")  # before plotly and optuna import
    if args.output is not None and not args.output.parent.is_dir():
        raise fail(
            "--output",
            str(args.output),
            f"its folder {args.output.parent} must exist",
            f"create it (mkdir -p {args.output.parent}) or write elsewhere",
        )
    from sft_tune.report import build_report

    path, summary = build_report(folder, args.output)
    print(summary)
    print(
        f"report: {path}"
        + (
            f" (and {folder.experiment}/{path.name})"
            if folder.remote and args.output is None
            else ""
        )
        + f"\nOptuna dashboard: optuna-dashboard sqlite:///{folder.file(folder.STUDY)}"
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
        working_dir=args.working_dir,
        cluster_sft_tune=args.cluster_sft_tune,
    )


def _jobs(args: argparse.Namespace) -> int:
    from sft_tune.submit import jobs_command

    return jobs_command(args.action, args.job_id, args.address, args.token_file, args.follow)


HANDLERS = {
    "train": _train,
    "predict": _predict,
    "search": _search,
    "select": _select,
    "report": _report,
    "submit": _submit,
    "jobs": _jobs,
}


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
        running = check_job()  # inside a submitted job: the submitted sft-tune, its dependencies
        if running:
            print(running, file=sys.stderr, flush=True)
        return HANDLERS[args.command](args)
    except InputError as err:
        print(f"sft-tune {args.command}: {err.render()}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"sft-tune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
