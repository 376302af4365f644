"""Atomic export of a trained task model as a plain Hugging Face folder.

Everything is written to a temporary folder beside the target and renamed into place, so a crash
never leaves a half-written model folder that looks complete.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries that decide how a model trains and loads (plus `extra` ones);
    packages that are not installed are left out."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "sft-tune",
        "torch",
        "transformers",
        "datasets",
        "ray",
        "optuna",
        "wandb",
        "scikit-learn",
        *extra,
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_folder)`, then swap the finished folder into `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def export_model(
    task_model,
    tokenizer,
    target: Path,
    info: dict[str, Any],
    history: list[dict] | None = None,
    extra_files: dict[str, dict] | None = None,
) -> Path:
    """Save model (safetensors), tokenizer, `run.json` (config, metrics, versions), the step log, and
    `extra_files` (name -> JSON content), all in one atomic rename."""

    model = plain_model(task_model)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        payload = {**info, "versions": library_versions()}
        (folder / RUN_FILE).write_text(json.dumps(payload, indent=2, default=str))
        for name, content in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(content, indent=2, default=str))
        if history is not None:
            with open(folder / "history.jsonl", "w") as handle:
                for record in history:
                    handle.write(json.dumps(record) + "\n")

    return write_atomically(target, write)


def plain_model(model):
    """The model itself, or for one loaded from a quantized checkpoint (GGUF) the same weights in a
    plain model of its class: transformers refuses to save a GGUF-loaded model as such."""
    if (
        getattr(model, "hf_quantizer", None) is None
        and getattr(model.config, "quantization_config", None) is None
    ):
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain.to(next(model.parameters()).dtype)
