"""`sft-tune predict`: label new texts with an exported model (labels and probabilities as JSONL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sft_tune.data import read_table, require_columns, text_column
from sft_tune.errors import fail
from sft_tune.export import RUN_FILE


def predict(model_dir: Path, input_path: Path, text_column_name: str = "text", batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """Yield one `{"text", "label", "probabilities"}` record per input row, in order."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise fail("--model", str(model_dir), "must be a model folder with config.json (as written by `sft-tune train`)", "pass the `model` folder inside the run's output_dir")
    table = read_table(Path(input_path), "input file")
    require_columns(table, [text_column_name], Path(input_path), "input file")
    texts = text_column(table, text_column_name, Path(input_path), "input file")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    names = model.config.id2label
    max_length = _trained_max_length(model_dir)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**batch).logits.softmax(-1)
        for text, row in zip(chunk, probs.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            yield {"text": text, "label": names[best], "probabilities": {names[i]: p for i, p in enumerate(row)}}


def _trained_max_length(model_dir: Path) -> int | None:
    """The max_length the model was trained with (from run.json), so inputs are cut the same way."""
    run = model_dir / RUN_FILE
    if not run.is_file():
        return None
    return json.loads(run.read_text()).get("config", {}).get("data", {}).get("max_length")


def write_jsonl(records: Iterator[dict[str, Any]], handle) -> int:
    """Write records as JSON lines; returns how many."""
    count = 0
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
