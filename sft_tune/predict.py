"""`sft-tune predict`: run an exported model over a file (one JSON line per input row).

The task (classification, ner, qa, ...) and the data settings it was trained with (columns,
max_length, windows) come from the model folder's run.json; the task's `predict` does the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sft_tune.config import DataConfig
from sft_tune.core.export import RUN_FILE
from sft_tune.errors import InputError, Problem, fail
from sft_tune.tasks import SPECS, TASKS, get_task, task_files


def flags() -> dict[str, str]:
    """The command-line flag of each data setting that `sft-tune predict` can override: the text
    column's, and each registered task's own (`TaskSpec.predict_flags`)."""
    return {"data.text_column": "--text-column"} | {
        setting: flag for spec in SPECS.values() for setting, flag in spec.predict_flags.items()
    }


@dataclass
class CheckedPredict:
    """What `predict` runs on, read and checked before any model loads."""

    model_dir: Path
    task: str
    data: DataConfig
    rows: Any  # the task's `read_input`


def check_predict(
    model_dir: Path,
    input_path: Path,
    columns: dict[str, str] | None = None,
    batch_size: int = 32,
    output: Path | None = None,
) -> CheckedPredict:
    """Every problem of a predict command at once, before the model loads: the model folder,
    the batch size, the input file (read whole and checked by the task) and the output folder.

    `columns` overrides data settings of the run, e.g. {"text_column": "body",
    "qa.question_column": "q"}."""
    model_dir, input_path, problems = Path(model_dir), Path(input_path), []
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        problems.append(
            Problem(
                "--model",
                str(model_dir),
                "is an adapter-only export (export.adapter_only: LoRA adapters and head, no "
                "merged weights); predict reads a merged model folder",
                "load it with peft's AutoPeftModelFor... (see docs/tasks.md, Adapters), or train "
                "with export.adapter_only: false",
            )
        )
    elif not (model_dir / "config.json").is_file():
        problems.append(
            Problem(
                "--model",
                str(model_dir),
                "must be a model folder with config.json (as written by `sft-tune train`)",
                "pass the `model` folder inside the run's output_dir",
            )
        )
    if batch_size < 1:
        problems.append(
            Problem(
                "--batch-size",
                batch_size,
                "must be at least 1",
                "pass a positive number, e.g. --batch-size 32",
            )
        )
    if not input_path.exists():
        problems.append(
            Problem(
                "--input",
                str(input_path),
                "must be a CSV, TSV, JSONL, JSON or Parquet file (or a saved `datasets` folder)",
                "check the path (relative to the current folder)",
            )
        )
    if output is not None and not output.parent.is_dir():
        problems.append(
            Problem(
                "--output",
                str(output),
                f"its folder {output.parent} must exist",
                f"create it (mkdir -p {output.parent}) or write elsewhere",
            )
        )
    if problems:
        raise InputError(problems, title="invalid arguments")
    run_config = _run_config(model_dir)
    task = _task_name(model_dir, run_config)
    raw = dict(run_config.get("data") or {"train": "-"})
    for key, value in (columns or {}).items():
        if value is not None:
            section, _, name = key.rpartition(".")
            target = raw.setdefault(section, {}) if section else raw
            target[name] = value
    data = DataConfig.model_validate(raw)
    try:
        rows = task_files(task).read_input(input_path, data)
    except InputError as err:
        raise InputError([_in_flags(p) for p in err.problems], title=err.title) from None
    return CheckedPredict(model_dir, task, data, rows)


def predict(
    model_dir: Path, input_path: Path, columns: dict[str, str] | None = None, batch_size: int = 32
) -> Iterator[dict[str, Any]]:
    """Yield the task's prediction record for each row of `input_path`, in order. Bad input is
    reported before the model loads (`check_predict`)."""
    return predictions(check_predict(model_dir, input_path, columns, batch_size), batch_size)


def predictions(checked: CheckedPredict, batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """Load the model and run it over the checked input."""
    from transformers import AutoTokenizer

    task = get_task(checked.task)
    tokenizer = AutoTokenizer.from_pretrained(checked.model_dir, **task.tokenizer_kwargs())
    model = task.auto_model.from_pretrained(checked.model_dir).eval()
    return task.predict(model, tokenizer, checked.rows, checked.data, batch_size)


def _in_flags(problem: Problem) -> Problem:
    """An input problem's fix in predict's terms: the flag where a run config's setting is named."""
    fix = problem.fix
    for setting, flag in flags().items():
        fix = fix.replace(f"set {setting} to", f"pass {flag} with")
    return replace(problem, fix=fix)


def _run_config(model_dir: Path) -> dict[str, Any]:
    run = model_dir / RUN_FILE
    return json.loads(run.read_text()).get("config", {}) if run.is_file() else {}


def _task_name(model_dir: Path, run_config: dict[str, Any]) -> str:
    name = run_config.get("model", {}).get("task")
    if name in TASKS:
        return name
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    for architecture in architectures:
        for spec in SPECS.values():
            if spec.architecture and architecture.endswith(spec.architecture):
                return spec.name
    raise fail(
        f"{model_dir}/config.json",
        architectures,
        f"must be a model of one of the tasks {sorted(TASKS)}",
        "export the model with `sft-tune train` or `sft-tune select`",
    )


def write_jsonl(records: Iterator[dict[str, Any]], handle) -> int:
    """Write records as JSON lines; returns how many."""
    count = 0
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
