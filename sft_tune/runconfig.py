"""A run config checked whole: the schema (`config.py`), the task name, each task's own section
of `data` (e.g. `data.ner`, defined in the task's module) and the task's rules; every problem at
once (see `errors.InputError`).

`config.py` knows no task: the task registry is consulted here, after the schema has parsed, so
the schema and the tasks import in one direction only (tasks -> config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_tune.config import RunConfig, check_schema, problems_from_validation
from sft_tune.errors import InputError, Problem, fail, undecodable
from sft_tune.tasks import TASKS


def load_config(path: str | Path, check_inputs: bool = False) -> RunConfig:
    """Read and validate a run config file; raise `InputError` listing every problem (with
    `check_inputs`, also every data file, model folder and output path that is not there)."""
    raw = read_yaml(path, "config file")
    return parse_config(raw, Path(path).resolve().parent, str(path), check_inputs)


def parse_config(
    raw: dict[str, Any],
    base_dir: Path | None = None,
    source: str = "config",
    check_inputs: bool = False,
) -> RunConfig:
    """Validate a config mapping; relative paths are resolved against `base_dir`. Each task
    section comes back complete (defaults filled in), as the task's options validated it.
    `check_inputs`: the files and folders it names are checked too, with the rest (a command
    about to run on this machine; `submit` checks what the job will read on the cluster)."""
    config, problems = check_schema(raw, base_dir)
    if check_inputs:
        problems += input_problems(raw, base_dir or Path.cwd())
    task_name = _get(raw, "model", "task", default="classification")
    if task_name not in TASKS:
        problems.append(
            Problem(
                "model.task",
                task_name,
                f"must be one of {sorted(TASKS)}",
                f"set model.task to one of: {', '.join(sorted(TASKS))}",
            )
        )
    sections, section_problems = task_sections(raw)
    problems += section_problems
    if config is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update=sections)})
        if task_name in TASKS and not section_problems:
            problems += TASKS[task_name]().check(config)
    if problems:
        raise InputError(problems, title=f"{source}: invalid config")
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (first on line {seen[key].line + 1})",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing file, text that is not UTF-8, syntax errors and
    keys given twice into `InputError` (naming the line and showing its text)."""
    path = Path(path)
    if not path.is_file():
        raise fail(
            str(path),
            str(path),
            f"the {what} must exist",
            "check the path (relative to the current folder)",
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, found = undecodable(data, err)
        raise fail(
            str(path),
            f"{found} (line {line})",
            f"the {what} must be UTF-8 text",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        if mark is None:
            raise fail(
                str(path),
                text[:80],
                f"the {what} must be valid YAML ({problem})",
                "fix the YAML syntax",
            ) from None
        lines = text.splitlines()
        shown = lines[mark.line] if mark.line < len(lines) else ""
        raise fail(
            f"{path} line {mark.line + 1}, column {mark.column + 1}",
            shown,
            f"the {what} must be valid YAML: {problem}",
            "fix that line (a key given twice: keep one)"
            if "twice" in problem
            else "fix the YAML syntax on that line",
        ) from None
    if not isinstance(raw, dict):
        raise fail(
            str(path), raw, f"the {what} must be a YAML mapping of keys", "write `key: value` lines"
        )
    return raw


def task_sections(raw: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Every task's section of `data` validated by its options (all of them, whichever the task:
    a typo in an unused section is still a typo); returns (section -> complete mapping, problems)."""
    sections: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for task in TASKS.values():
        if task.options is None:
            continue
        section = task.options.section
        given = _get(raw, "data", section, default={})
        if not isinstance(given, dict):
            continue  # the schema reported it
        try:
            sections[section] = task.options.model_validate(given).model_dump(mode="json")
        except ValidationError as err:
            problems += problems_from_validation(err, task.options, prefix=f"data.{section}.")
    return sections, problems


def input_problems(raw: dict[str, Any], base_dir: Path) -> list[Problem]:
    """What the config's paths name but this machine lacks, all at once, from the mapping as
    written (so a schema problem elsewhere does not hide them): the data files, a local model
    folder (its config.json, its GGUF file) and an output_dir that is an existing file."""
    problems: list[Problem] = []
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    named = [(f"data.{key}", data.get(key)) for key in ("train", "test")]
    unlabelled = data.get("unlabelled") if isinstance(data.get("unlabelled"), list) else []
    named += [(f"data.unlabelled[{i}]", value) for i, value in enumerate(unlabelled)]
    for key, value in named:
        if isinstance(value, str) and not (base_dir / value).exists():
            problems.append(
                Problem(
                    f"{key} ({value})",
                    value,
                    f"the file must exist ({(base_dir / value).resolve()} does not)",
                    "check the path: relative paths are relative to the config file's folder",
                )
            )
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    name, gguf = model.get("name_or_path"), model.get("gguf_file")
    local = base_dir / name if isinstance(name, str) else None
    if local is not None and (local.exists() or name.startswith((".", "/", "~"))):
        if not local.is_dir():
            problems.append(
                Problem(
                    "model.name_or_path",
                    name,
                    f"a local model must be a folder ({local.resolve()} is not one)",
                    "point to the folder holding config.json and the tokenizer files",
                )
            )
        elif isinstance(gguf, str) and not (local / gguf).is_file():
            there = sorted(p.name for p in local.iterdir() if p.suffix == ".gguf")
            problems.append(
                Problem(
                    "model.gguf_file",
                    gguf,
                    f"must be a file in {local.resolve()} (GGUF files there: {there or 'none'})",
                    f"set model.gguf_file to one of {there}" if there else "check the file name",
                )
            )
        elif not isinstance(gguf, str) and (local / "config.json").is_file():
            problems += architecture_problems(local / "config.json", raw)
        elif not isinstance(gguf, str) and not (local / "config.json").is_file():
            problems.append(
                Problem(
                    "model.name_or_path",
                    name,
                    f"a local model folder must hold config.json ({local.resolve()} has none)",
                    "point to a folder saved by save_pretrained (config.json, weights, tokenizer)",
                )
            )
    output = raw.get("output_dir")
    if isinstance(output, str) and (base_dir / output).is_file():
        problems.append(
            Problem(
                "output_dir",
                output,
                f"must be a folder, and {(base_dir / output).resolve()} is an existing file",
                "pick another output_dir",
            )
        )
    return problems


def architecture_problems(config_json: Path, raw: dict[str, Any]) -> list[Problem]:
    """What the checkpoint's config.json already rules out, before any weight loads: a masked-LM
    objective on a model without a masked-LM head class, a causal one on a model without a
    causal-LM class, the generation task on an encoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    try:
        checkpoint = json.loads(config_json.read_text())
    except (OSError, ValueError) as err:
        return [Problem(str(config_json), str(err), "the model's config.json must be JSON", "re-save the model with save_pretrained")]  # fmt: skip
    kind = checkpoint.get("model_type")
    if not isinstance(kind, str):
        return []
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    objective, task = model.get("lm_objective", "auto"), model.get("task", "classification")
    encoder = kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not checkpoint.get("is_decoder")
    problems = []
    if objective == "masked" and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        problems.append(Problem("model.lm_objective", objective, f"a masked-LM loss needs an encoder with a masked-LM head; {config_json} is a {kind!r} model", "set model.lm_objective to causal or auto"))  # fmt: skip
    if objective == "causal" and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        problems.append(Problem("model.lm_objective", objective, f"a next-token loss needs a causal-LM head; {config_json} is a {kind!r} model", "set model.lm_objective to masked or auto"))  # fmt: skip
    if task == "generation" and encoder:
        problems.append(Problem("model.task", task, f"prompt->response generation needs a decoder (GPT/Llama-like); {config_json} is the encoder {kind!r}", "use a decoder checkpoint, or another task"))  # fmt: skip
    return problems


def _get(raw: Any, *keys: str, default: Any) -> Any:
    for key in keys:
        if not isinstance(raw, dict) or key not in raw:
            return default
        raw = raw[key]
    return raw
