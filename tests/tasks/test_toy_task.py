"""A task defined here, in a test file, registers and runs `sft-tune train` and `predict` without
touching any other module: the task registry is the one place that knows the tasks.

The toy task labels a text by whether it has more words than `SHORT` ("long" or "short"), read
from a JSONL file with its own field names; it scores by accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import toy_rows, write_jsonl
from pydantic import Field
from transformers import AutoModelForSequenceClassification

from sft_tune import tasks
from sft_tune.checkpoint import Head
from sft_tune.cli import main
from sft_tune.config import DataConfig, TaskOptions
from sft_tune.core.batches import pad
from sft_tune.core.data import tokenize
from sft_tune.core.files import read_table, require_columns, text_column
from sft_tune.errors import fail
from sft_tune.tasks.base import Task, TaskFiles, TaskSpec

SHORT = 6
NAMES = ["long", "short"]


@dataclass
class Texts:
    texts: list[str]
    labels: list[str]


class LengthOptions(TaskOptions):
    """The toy task's own section of `data`."""

    section = "length"

    sentence_column: str = Field("sentence", description="Column with the sentence.")


class LengthFiles(TaskFiles):
    """The input side: a JSONL file of {"sentence", "size"} rows."""

    name = "length"
    metric = "accuracy"
    metrics = ("accuracy", "loss")
    options = LengthOptions

    def read(self, path: Path, data: DataConfig, what: str) -> Texts:
        column = LengthOptions.of(data).sentence_column
        table = read_table(path, what)
        require_columns(table, {"data.length.sentence_column": column, "size": "size"}, path, what)
        texts = text_column(table, column, path, what, "data.length.sentence_column")
        return Texts(texts, [str(size) for size in table["size"]])

    def label_names(self, train: Texts, data: DataConfig) -> list[str]:
        return NAMES

    def check_labels(self, labelled: Texts, names: Sequence[str], path: Path) -> None:
        bad = sorted(set(labelled.labels) - set(names))
        if bad:
            raise fail(str(path), bad, f"size must be one of {names}", "fix those rows")

    def read_input(self, path: Path, data: DataConfig) -> list[str]:
        return self.read(path, data, "input file").texts

    def texts(self, labelled: Texts) -> list[str]:
        return labelled.texts

    def strata(self, labelled: Texts) -> list[Any]:
        return labelled.labels


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Encoded:
        return Encoded([self.input_ids[i] for i in indices], [self.labels[i] for i in indices])


class LengthTask(Task):
    """The model side: a sequence-classification head, accuracy."""

    files_class = LengthFiles
    auto_model = AutoModelForSequenceClassification

    def encode(self, labelled: Texts, tokenizer, names: Sequence[str], data: DataConfig) -> Encoded:
        ids = tokenize(labelled.texts, tokenizer, data.max_length, data.cache_dir).input_ids
        return Encoded(ids, [names.index(label) for label in labelled.labels])

    def collate(self, examples: Encoded, indices, pad_id: int, side: str) -> dict:
        input_ids, attention_mask = pad([examples.input_ids[i] for i in indices], pad_id, side)
        labels = torch.tensor([examples.labels[i] for i in indices], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def evaluate(self, model, examples: Encoded, batches, pad_id, side, device) -> dict:
        right = total = 0
        loss = 0.0
        for indices in batches:
            batch = {
                k: v.to(device) for k, v in self.collate(examples, indices, pad_id, side).items()
            }
            outputs = model(**batch)
            loss += outputs.loss.item() * len(indices)
            right += int((outputs.logits.argmax(-1) == batch["labels"]).sum())
            total += len(indices)
        return {"accuracy": right / max(total, 1), "loss": loss / max(total, 1)}

    def model_kwargs(self, names: Sequence[str]) -> dict:
        return {"num_labels": len(names), "id2label": dict(enumerate(names))}

    def predict(self, model, tokenizer, texts, data: DataConfig, batch_size: int) -> Iterator[dict]:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = tokenizer(chunk, truncation=True, padding=True, return_tensors="pt")
            with torch.no_grad():
                best = model(**batch).logits.argmax(-1).tolist()
            for text, label in zip(chunk, best):
                yield {"line": text, "size": model.config.id2label[label]}


SPEC = TaskSpec(
    name="length",
    files=LengthFiles,
    model=f"{__name__}:LengthTask",
    head=Head("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "sequence-classification"),
)


@pytest.fixture
def registered(monkeypatch):
    """The toy task registered for this test only (its section of `data` too)."""
    from sft_tune import config

    # monkeypatch remembers each registry entry's absence, so the registration is undone after
    monkeypatch.setitem(tasks.SPECS, SPEC.name, SPEC)
    monkeypatch.setitem(tasks.TASKS, SPEC.name, SPEC.files)
    monkeypatch.setitem(config.TASK_SECTIONS, "length", SPEC.name)
    tasks.register(SPEC)


def _rows(n: int, seed: int) -> list[dict]:
    return [
        {"line": row["text"], "size": "long" if len(row["text"].split()) > SHORT else "short"}
        for row in toy_rows(n, seed)
    ]


def test_a_task_registered_from_a_test_file_trains_and_predicts(
    registered, tiny_bert, tmp_path, capsys
):
    train = write_jsonl(tmp_path / "train.jsonl", _rows(40, 1))
    test = write_jsonl(tmp_path / "test.jsonl", _rows(16, 2))
    config = {
        "model": {"name_or_path": str(tiny_bert), "task": "length"},
        "data": {
            "train": str(train),
            "test": str(test),
            "max_length": 32,
            "length": {"sentence_column": "line"},
        },
        "phase1": {"steps": 0},
        "phase2": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "length.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert run["config"]["model"]["task"] == "length"
    assert run["config"]["data"]["length"] == {"sentence_column": "line"}
    assert set(run["metrics"]["test"]) >= {"accuracy", "loss"}

    capsys.readouterr()
    model = tmp_path / "out" / "model"
    assert main(["predict", "--model", str(model), "--input", str(test)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 16 and {r["size"] for r in records} <= set(NAMES)

    config["data"]["length"] = {"sentence_colum": "line"}  # a typo in the task's own section
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 2
    assert "data.length.sentence_colum" in capsys.readouterr().err


def test_an_unregistered_task_is_refused_naming_the_registered_ones(tiny_bert, tmp_path, capsys):
    path = tmp_path / "length.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": {"name_or_path": str(tiny_bert), "task": "length"}, "data": {"train": "x"}}
        )
    )
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.task" in err and "length" in err and "classification" in err
