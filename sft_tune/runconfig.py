"""A run config checked whole: the schema (`config.py`), the task name, each task's own section
of `data` (e.g. `data.ner`, defined in the task's module) and the task's rules; every problem at
once (see `errors.InputError`). `check_train` checks a `train` run's whole input; `check_base` a
search space's base config with its overrides, every searched value as an override of it and
every searched checkpoint, in one pass (`sweep/checks.py` then checks the space's own settings
and the sweep folder, and reads the data).

`config.py` knows no task: the task registry is consulted here, after the schema has parsed, so
the schema and the tasks import in one direction only (tasks -> config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_tune.checkpoint import architecture_problems, folder_problems, hub_problems
from sft_tune.config import RunConfig, check_schema
from sft_tune.core.files import RawData, data_names, data_problems, table_problems, text_of
from sft_tune.errors import InputError, Problem, fail, problems_from_validation
from sft_tune.tasks import SPECS, TASKS, task_files


def load_config(path: str | Path, check_inputs: bool = False) -> RunConfig:
    """Read and validate a run config file; raise `InputError` listing every problem (with
    `check_inputs`, also every data file, model folder and output path that is not there)."""
    raw = read_yaml(path, "config file")
    return parse_config(raw, Path(path).resolve().parent, str(path), check_inputs)


@dataclass(frozen=True)
class CheckedTrain:
    """What `sft-tune train` runs from: the config, its data files read and checked."""

    config: RunConfig
    data: RawData


def check_train(path: str | Path, output_dir: Path | None = None) -> CheckedTrain:
    """A `train` run's whole input checked at once, before anything heavy is imported: the
    config (schema, task, rules), every path it names, the model folder and its config.json, and
    every data file read and checked (or, when the config itself is broken, each data file that
    is there read as a table). Raises one `InputError` listing every problem."""
    raw = read_yaml(path, "config file")
    base_dir = Path(path).resolve().parent
    names = data_names(raw, base_dir)
    try:
        config = parse_config(raw, base_dir, str(path), check_inputs=True)
    except InputError as err:
        problems = err.problems + table_problems(names)
        if len(problems) == len(err.problems):
            raise
        raise InputError(problems, title=f"{path}: invalid input") from None
    problems = []
    if output_dir is not None:
        if output_dir.is_file():
            problems.append(
                Problem(
                    "--output-dir",
                    str(output_dir),
                    f"must be a folder, and {output_dir.resolve()} is an existing file",
                    "pick another folder",
                )
            )
        config = config.model_copy(update={"output_dir": output_dir.resolve()})
    data, found = data_problems(config, task_files(config.model.task), names=names)
    problems += found
    if problems:
        raise InputError(problems, title=f"{path}: invalid input")
    return CheckedTrain(config, data)


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
        data = config.data.model_copy(update={"task_sections": sections})
        config = config.model_copy(update={"data": data})
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
                None,
                None,
                f"the key {key!r} is given twice (first on line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing file, text that is not UTF-8, syntax errors and
    keys given twice into `InputError` (naming the line and showing its text)."""
    path = Path(path)
    text = text_of(path, what, "check the path (relative to the current folder)")
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
    a typo in an unused section is still a typo); returns (section -> complete mapping,
    problems)."""
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
    gguf = gguf if isinstance(gguf, str) else None
    objective, task = model.get("lm_objective", "auto"), model.get("task", "classification")
    head = SPECS[task].head if isinstance(task, str) and task in SPECS else None
    if local is not None and (local.exists() or name.startswith((".", "/", "~"))):
        found = folder_problems("model.name_or_path", name, local, gguf)
        problems += found
        if not found and gguf is None:
            problems += architecture_problems(local / "config.json", objective, task, head)
    elif isinstance(name, str):
        problems += hub_problems("model.name_or_path", name, gguf, objective, task, head)
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


def _get(raw: Any, *keys: str, default: Any) -> Any:
    for key in keys:
        if not isinstance(raw, dict) or key not in raw:
            return default
        raw = raw[key]
    return raw


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the base config dict with each dotted path set to its value."""
    import copy

    config = copy.deepcopy(base)
    for dotted, value in params.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


# -- a search space's base config ------------------------------------------------------------------


@dataclass(frozen=True)
class BaseCheck:
    """A search space's base config checked whole: the mapping (overrides applied), the folder
    its paths are relative to, the config (paths resolved; None when it has problems), and every
    problem, named as the space file's reader sees them (`base config ...`, `base`,
    `params....`)."""

    mapping: dict[str, Any] | None
    folder: Path
    config: RunConfig | None
    problems: list[Problem]


def check_base(
    given: Any,
    inline: Any,
    overrides: Any,
    space_path: Path,
    *,
    strict: bool,
    check_inputs: bool,
    candidates: dict[str, list[Any]],
) -> BaseCheck:
    """The base config of the space file at `space_path` (`given`: the run-config file `base`
    names, or `inline`: the `config` mapping; `overrides` applied) checked in one pass: the paths
    it names and its model folder (with `check_inputs`), the schema, task and rules, then every
    searched value (`candidates`: dotted path -> the values a trial may take) as an override of
    it, and each searched checkpoint like the base's own. `strict`: the space's schema passed,
    so a missing or doubled `base` / `config` is this check's to report."""
    problems: list[Problem] = []
    mapping, folder = _base_mapping(given, inline, overrides, space_path, strict, problems)
    config = None
    if mapping is not None and check_inputs:  # reported with the schema's problems, not after
        problems += in_base(input_problems(mapping, folder))
    if mapping is not None:
        try:
            config = parse_config(mapping, folder, source=f"{space_path} base config")
        except InputError as err:
            problems += in_base(err.problems)
    if config is not None:
        problems += _override_problems(mapping, candidates)
        if check_inputs:
            problems += _checkpoint_problems(mapping, folder, candidates)
    return BaseCheck(mapping, folder, config, problems)


def in_base(problems: list[Problem]) -> list[Problem]:
    """Problems of a space's base config, named so (`base config data.train ...`)."""
    return [Problem(f"base config {p.where}", p.value, p.rule, p.fix) for p in problems]


def _base_mapping(
    given_base: Any, config: Any, overrides: Any, path: Path, strict: bool, problems: list[Problem]
) -> tuple[dict[str, Any] | None, Path]:
    """The base config mapping with the overrides applied, and the folder its paths are relative
    to; read from the raw file when the space schema failed elsewhere (not `strict`), so that the
    base config's problems are reported too."""
    overrides = overrides if isinstance(overrides, dict) else {}
    base_dir = path.resolve().parent
    if isinstance(given_base, str):
        base_dir = (path.parent / given_base).resolve().parent
    if (given_base is None) == (config is None):
        if strict:
            problems.append(
                Problem(
                    "base / config",
                    {"base": given_base, "config": "..." if config else None},
                    "give exactly one of `base` (a run-config file) and `config` (inline)",
                    "keep one of the two keys",
                )
            )
        return None, base_dir
    if isinstance(config, dict):
        return with_params(config, overrides), base_dir
    if not isinstance(given_base, str):
        return None, base_dir  # the schema reported it
    try:
        return with_params(
            read_yaml(path.parent / given_base, "base run config"), overrides
        ), base_dir
    except InputError as err:
        problems += [Problem("base", given_base, p.rule, p.fix) for p in err.problems]
        return None, base_dir


def _override_problems(base: dict[str, Any], candidates: dict[str, list[Any]]) -> list[Problem]:
    """Every path must name a config field, and every bound or choice must be valid there."""
    problems = []
    for dotted, values in candidates.items():
        for value in values:
            try:
                parse_config(with_params(base, {dotted: value}))
            except InputError as err:
                for p in err.problems:
                    where = f"params.{dotted}"
                    if p.rule == "unknown key":
                        problems.append(
                            Problem(
                                where, dotted, "must be a dotted path of a run-config field", p.fix
                            )
                        )
                    elif p.where == dotted:
                        problems.append(
                            Problem(
                                where,
                                value,
                                f"each bound/choice must be a valid `{dotted}`: {p.rule}",
                                "narrow the range to valid values",
                            )
                        )
                    elif p.where.startswith(f"{dotted}."):
                        problems.append(
                            Problem(
                                where,
                                dotted,
                                f"must be a scalar run-config field ({p.where}: {p.rule})",
                                "address a leaf field, e.g. phase1.alpha",
                            )
                        )
                    else:  # a rule that ties the value to another field
                        problems.append(
                            Problem(
                                where,
                                value,
                                "each bound/choice must fit the rest of the config: with "
                                f"{dotted} = {value!r}, {p.where}: {p.rule}",
                                f"narrow the range, or set {p.where} (in overrides) so that "
                                "every value fits",
                            )
                        )
                break
    return problems


def _checkpoint_problems(
    base: dict[str, Any], base_dir: Path, candidates: dict[str, list[Any]]
) -> list[Problem]:
    """Each searched checkpoint judged like the base config's (its folder, or an offline hub id's
    cache, and what its config.json rules out), named by the param and the choice."""
    problems = []
    for dotted in ("model.name_or_path", "model.gguf_file"):
        for value in candidates.get(dotted, []):
            found = input_problems(with_params(base, {dotted: value}), base_dir)
            problems += [
                Problem(f"params.{dotted} choice {value!r}: {p.where}", p.value, p.rule, p.fix)
                for p in found
                if p.where.startswith("model.")
            ]
    return problems
