"""Sequence classification (sentiment, topic): one label per text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification

from sft_tune.config import DataConfig
from sft_tune.core.batches import pad
from sft_tune.core.data import tokenize
from sft_tune.tasks.base import Task
from sft_tune.tasks.classification.files import ClassificationFiles, LabelledTexts


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
    files_class = ClassificationFiles
    auto_model = AutoModelForSequenceClassification

    def encode(
        self, labelled: LabelledTexts, tokenizer, names: Sequence[str], data: DataConfig
    ) -> EncodedLabelled:
        ids = tokenize(labelled.texts, tokenizer, data.max_length, data.cache_dir).input_ids
        label_id = {name: i for i, name in enumerate(names)}
        return EncodedLabelled(ids, [label_id[label] for label in labelled.labels])

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
        return {
            "loss": total_loss / max(len(truth), 1),
            "accuracy": float(accuracy_score(truth, predictions)),
            # scikit-learn's default label set: the classes present in the truth or the
            # predictions (a class absent from both, in a small test file or holdout fold, would
            # score F1 0 and drag the mean down though nothing was wrong with it).
            "macro_f1": float(f1_score(truth, predictions, average="macro", zero_division=0)),
        }

    def model_kwargs(self, names: Sequence[str]) -> dict:
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "single_label_classification",
        }

    def predict(
        self, model, tokenizer, texts: list[str], data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"text", "label", "probabilities"}` per text (`read_input`'s texts)."""
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
