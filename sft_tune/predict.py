"""`sft-tune predict`: run an exported model over a file (one JSON line per input row).

The task (classification, ner, qa, ...) and the data settings it was trained with (columns,
max_length, windows) come from the model folder's run.json; the task's `predict` does the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from sft_tune.config import DataConfig
from sft_tune.core.export import RUN_FILE
from sft_tune.errors import fail
from sft_tune.tasks import TASKS, get_task

# Which task an exported folder without run.json holds, from its architecture's name.
ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "classification",
    "ForTokenClassification": "ner",
    "ForQuestionAnswering": "qa",
}


def predict(
    model_dir: Path, input_path: Path, columns: dict[str, str] | None = None, batch_size: int = 32
) -> Iterator[dict[str, Any]]:
    """Yield the task's prediction record for each row of `input_path`, in order.

    `columns` overrides data settings of the run, e.g. {"text_column": "body",
    "qa.question_column": "q"}. Bad input is reported before the first record is produced."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise fail(
            "--model",
            str(model_dir),
            "must be a model folder with config.json (as written by `sft-tune train`)",
            "pass the `model` folder inside the run's output_dir",
        )
    if batch_size < 1:
        raise fail("--batch-size", batch_size, "must be at least 1", "pass a positive number")
    input_path = Path(input_path)
    if not input_path.exists():
        raise fail(
            "--input",
            str(input_path),
            "must be a CSV, JSONL or Parquet file (or a saved `datasets` folder)",
            "check the path (relative to the current folder)",
        )
    run_config = _run_config(model_dir)
    task = get_task(_task_name(model_dir, run_config))
    raw = dict(run_config.get("data") or {"train": "-"})
    for key, value in (columns or {}).items():
        if value is not None:
            section, _, name = key.rpartition(".")
            target = raw.setdefault(section, {}) if section else raw
            target[name] = value
    data = DataConfig.model_validate(raw)
    rows = task.read_input(input_path, data)  # checked before the model loads
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **task.tokenizer_kwargs())
    model = task.auto_model.from_pretrained(model_dir).eval()
    return task.predict(model, tokenizer, rows, data, batch_size)


def _run_config(model_dir: Path) -> dict[str, Any]:
    run = model_dir / RUN_FILE
    return json.loads(run.read_text()).get("config", {}) if run.is_file() else {}


def _task_name(model_dir: Path, run_config: dict[str, Any]) -> str:
    name = run_config.get("model", {}).get("task")
    if name in TASKS:
        return name
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    for architecture in architectures:
        for suffix, task in ARCHITECTURE_TASKS.items():
            if architecture.endswith(suffix) and task in TASKS:
                return task
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
