"""Sequence classification (sentiment, topic): one label per text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification

from sft_tune.config import DataConfig
from sft_tune.core.batches import pad
from sft_tune.core.data import read_table, require_columns, text_column, tokenize
from sft_tune.errors import fail
from sft_tune.tasks.base import Task


@dataclass
class LabelledTexts:
    """Texts and their labels as written in the file (labels kept as strings)."""

    texts: list[str]
    labels: list[str]
    path: Path


@dataclass
class EncodedLabelled:
    """Token ids and label ids of a labelled set."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> EncodedLabelled:
        return EncodedLabelled(
            [self.input_ids[i] for i in indices], [self.labels[i] for i in indices]
        )


class ClassificationTask(Task):
    name = "classification"
    auto_model = AutoModelForSequenceClassification
    metric = "macro_f1"
    metrics = ("accuracy", "macro_f1", "loss")

    def read(self, path: Path, data: DataConfig, what: str) -> LabelledTexts:
        table = read_table(path, what)
        require_columns(table, [data.text_column, data.label_column], path, what)
        texts = text_column(table, data.text_column, path, what)
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

    def encode(
        self, labelled: LabelledTexts, tokenizer, names: Sequence[str], data: DataConfig
    ) -> EncodedLabelled:
        ids = tokenize(labelled.texts, tokenizer, data.max_length, data.cache_dir).input_ids
        label_id = {name: i for i, name in enumerate(names)}
        return EncodedLabelled(ids, [label_id[label] for label in labelled.labels])

    def texts(self, labelled: LabelledTexts) -> list[str]:
        return labelled.texts

    def strata(self, labelled: LabelledTexts) -> list[str]:
        return labelled.labels

    def collate(
        self, examples: EncodedLabelled, indices: Sequence[int], pad_id: int, side: str
    ) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad([examples.input_ids[i] for i in indices], pad_id, side)
        labels = torch.tensor([examples.labels[i] for i in indices], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def evaluate(
        self, model, examples: EncodedLabelled, batches, pad_id: int, side: str, device
    ) -> dict[str, float]:
        predictions, total_loss = [], 0.0
        for indices in batches:
            batch = {
                k: v.to(device) for k, v in self.collate(examples, indices, pad_id, side).items()
            }
            outputs = model(**batch)
            total_loss += outputs.loss.item() * len(indices)
            predictions.extend(outputs.logits.argmax(-1).tolist())
        truth = [examples.labels[i] for indices in batches for i in indices]
        num_labels = model.config.num_labels
        return {
            "loss": total_loss / max(len(truth), 1),
            "accuracy": float(accuracy_score(truth, predictions)),
            "macro_f1": float(
                f1_score(
                    truth,
                    predictions,
                    average="macro",
                    labels=list(range(num_labels)),
                    zero_division=0,
                )
            ),
        }

    def model_kwargs(self, names: Sequence[str]) -> dict:
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "single_label_classification",
        }

    def predict(
        self, model, tokenizer, input_path: Path, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"text", "label", "probabilities"}` per row; the input is read and checked here, before
        the first record is produced."""
        table = read_table(input_path, "input file")
        require_columns(table, [data.text_column], input_path, "input file")
        texts = text_column(table, data.text_column, input_path, "input file")
        names = model.config.id2label

        def records() -> Iterator[dict[str, Any]]:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                batch = tokenizer(
                    chunk,
                    truncation=True,
                    max_length=data.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                with torch.no_grad():
                    probs = model(**batch).logits.softmax(-1)
                for text, row in zip(chunk, probs.tolist()):
                    best = max(range(len(row)), key=row.__getitem__)
                    yield {
                        "text": text,
                        "label": names[best],
                        "probabilities": {names[i]: p for i, p in enumerate(row)},
                    }

        return records()
