"""One `sft-tune train` run: prepare the data, train both phases, test, export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core.export import export_model
from sft_tune.core.files import RawData
from sft_tune.core.loop import Report, evaluate, fit, runtime_for, seed_everything
from sft_tune.core.model import check_adapter, exported_model, load_model, load_tokenizer
from sft_tune.core.prepare import prepare_data
from sft_tune.tasks import get_task

log = logging.getLogger(__name__)


def train(
    config: RunConfig,
    report: Report | None = None,
    progress: bool = True,
    model_dir: Path | None = None,
    extra_files: dict[str, dict] | None = None,
    raw: RawData | None = None,
) -> dict[str, Any]:
    """Train both phases, evaluate on the test file, export to `model_dir` (default
    `output_dir/model`) with `extra_files` (name -> JSON, given the metrics as "test"); returns
    the metrics. `raw`: the data files already read and checked (`runconfig.check_train`)."""
    task = get_task(config.model.task)
    # The device and precision first: bf16 on a GPU without it is refused before any work.
    rt = runtime_for(config, **({"report": report} if report else {}), progress=progress)
    check_adapter(config.model, task)  # LoRA target modules, before the data and the weights
    prepared = prepare_data(config, task, with_test=True, raw=raw)
    data = prepared.fit_data(0, config, evaluate_held_out=True)
    log.info(
        "data: %d labelled for training, %d for validation, %d LM texts",
        len(data.train),
        len(data.eval) if data.eval is not None else 0,
        len(data.lm_ids),
    )
    tokenizer = load_tokenizer(config.model, task)

    seed_everything(config.seed)
    model = load_model(
        config.model,
        task,
        prepared.label_names,
        tokenizer,
        lm_head=config.phase1.steps > 0,
        seed=config.seed,
    )
    model.to(rt.device)
    result = fit(model, task, data, config, tokenizer, rt)

    metrics: dict[str, Any] = {"validation": result.last_eval}
    if prepared.test is not None:
        metrics["test"] = evaluate(model, task, prepared.test, tokenizer, rt)
    target = model_dir or config.output_dir / "model"
    info = {
        "config": config.model_dump(mode="json"),
        "labels": prepared.label_names,
        "unknown_token_share": prepared.coverage,
        "lm_data": prepared.lm_summary("validation"),
        "metrics": metrics,
        "evaluations": result.evaluations,
        "parameters": {
            **model.parameter_counts(),
            "adapter": config.model.adapter.model_dump(mode="json"),
        },
    }
    extra = {
        name: {**content, "test": metrics.get("test")}
        for name, content in (extra_files or {}).items()
    }
    export_model(
        exported_model(model, config.export.adapter_only, config.model.name_or_path),
        tokenizer,
        target,
        info,
        result.history,
        extra,
    )
    metrics["model_dir"] = str(target)
    return metrics
