"""Sequence classification's input: a table with a text and a label column, one label per text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sft_tune.config import DataConfig
from sft_tune.core.files import read_table, require_columns, text_column
from sft_tune.errors import fail
from sft_tune.tasks.base import TaskFiles


@dataclass
class LabelledTexts:
    """Texts and their labels as written in the file (labels kept as strings)."""

    texts: list[str]
    labels: list[str]
    path: Path


class ClassificationFiles(TaskFiles):
    name = "classification"
    metric = "macro_f1"
    metrics = ("accuracy", "macro_f1", "loss")

    def read(self, path: Path, data: DataConfig, what: str) -> LabelledTexts:
        table = read_table(path, what)
        require_columns(
            table,
            {"data.text_column": data.text_column, "data.label_column": data.label_column},
            path,
            what,
        )
        texts = text_column(table, data.text_column, path, what, "data.text_column")
        raw = table[data.label_column]
        missing = [
            row for row, label in enumerate(raw) if label is None or str(label).strip() == ""
        ]
        if missing:
            raise fail(
                f"{path} column {data.label_column!r} row {missing[0] + 1}",
                raw[missing[0]],
                f"every example needs a label ({len(missing)} rows have none)",
                "fill or remove the unlabelled rows (unlabelled text belongs in `data.unlabelled`)",
            )
        return LabelledTexts(texts, [str(label) for label in raw], Path(path))

    def label_names(self, train: LabelledTexts, data: DataConfig) -> list[str]:
        names = list(data.labels) if data.labels is not None else sorted(set(train.labels))
        if len(names) < 2:
            raise fail(
                "data.labels"
                if data.labels is not None
                else f"{train.path} column {data.label_column!r}",
                names,
                "classification needs at least 2 labels",
                "list every class in `data.labels`, or use a training file with 2 or more classes",
            )
        return names

    def check_labels(self, labelled: LabelledTexts, names: Sequence[str], path: Path) -> None:
        known = set(names)
        unknown = Counter(label for label in labelled.labels if label not in known)
        if unknown:
            raise fail(
                f"{path} labels",
                dict(unknown),
                f"labels must be in the label set {list(names)}",
                "fix those labels, or add them to `data.labels`",
            )

    def texts(self, labelled: LabelledTexts) -> list[str]:
        return labelled.texts

    def strata(self, labelled: LabelledTexts) -> list[str]:
        return labelled.labels

    def read_input(self, path: Path, data: DataConfig) -> list[str]:
        """The texts of `data.text_column`, every one non-empty."""
        table = read_table(path, "input file")
        require_columns(table, {"data.text_column": data.text_column}, path, "input file")
        return text_column(table, data.text_column, path, "input file", "data.text_column")
