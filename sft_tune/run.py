"""One `sft-tune train` run: read and check the data, tokenize, train both phases, test, export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core.data import tokenize
from sft_tune.core.export import export_model
from sft_tune.core.model import load_model, load_tokenizer
from sft_tune.core.splits import split_validation
from sft_tune.tasks import get_task
from sft_tune.core.loop import FitData, Report, evaluate, fit, runtime_for, seed_everything
from sft_tune.core.prepare import lm_sequences, read_data

log = logging.getLogger(__name__)


def train(config: RunConfig, report: Report | None = None, progress: bool = True, model_dir: Path | None = None, extra_files: dict[str, dict] | None = None) -> dict[str, Any]:
    """Train both phases, evaluate on the test file, export to `model_dir` (default
    `output_dir/model`) with `extra_files` (name -> JSON, given the metrics as "test"); returns the metrics."""
    task = get_task(config.model.task)
    raw = read_data(config, task)
    train_idx, held_idx = split_validation(task.strata(raw.train), task.groups(raw.train), config.data.validation_fraction, config.seed, config.data.train)
    tokenizer = load_tokenizer(config.model, task)
    labelled = task.encode(raw.train, tokenizer, raw.label_names, config.data)
    unlabelled_ids = tokenize(raw.unlabelled, tokenizer, config.data.max_length, config.data.cache_dir).input_ids if raw.unlabelled else []
    labelled_texts = task.texts(raw.train)
    labelled_lm_ids = tokenize(labelled_texts, tokenizer, config.data.max_length, config.data.cache_dir).input_ids
    lm_ids = lm_sequences(unlabelled_ids, raw.unlabelled, labelled_lm_ids, labelled_texts, train_idx, held_idx, config.data.labelled_text_for_lm)
    data = FitData(labelled.subset(train_idx), lm_ids, labelled.subset(held_idx) if held_idx else None)
    log.info("data: %d labelled for training, %d for validation, %d LM texts", len(train_idx), len(held_idx), len(lm_ids))

    seed_everything(config.seed)
    model = load_model(config.model, task, raw.label_names, tokenizer)
    rt = runtime_for(config, **({"report": report} if report else {}), progress=progress)
    model.to(rt.device)
    result = fit(model, task, data, config, tokenizer, rt)

    metrics: dict[str, Any] = {"validation": result.last_eval}
    if raw.test is not None:
        test = task.encode(raw.test, tokenizer, raw.label_names, config.data)
        metrics["test"] = evaluate(model, task, test, tokenizer, rt)
    target = model_dir or config.output_dir / "model"
    info = {"config": config.model_dump(mode="json"), "labels": raw.label_names, "metrics": metrics, "evaluations": result.evaluations}
    extra = {name: {**content, "test": metrics.get("test")} for name, content in (extra_files or {}).items()}
    export_model(model.task_model, tokenizer, target, info, result.history, extra)
    metrics["model_dir"] = str(target)
    return metrics
