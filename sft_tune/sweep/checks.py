"""A sweep's input checked whole before Ray, torch or transformers import: the space (or the
snapshot of a sweep to resume), the base config's files and data, the sweep folder, and either
the cluster address (probed) or whether one trial fits this machine. Every problem of every stage
is reported at once; nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sft_tune.addresses import probe_address, refuse_ray_client
from sft_tune.config import RunConfig
from sft_tune.core.files import RawData, data_names, data_problems, table_problems
from sft_tune.errors import InputError, Problem, fail, problems_from_validation
from sft_tune.runconfig import BaseCheck, check_base, in_base, read_yaml
from sft_tune.sweep.cluster import check_local_resources
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.space import (
    Param,
    SearchSettings,
    SearchSpace,
    Sweep,
    searchable_problems,
)
from sft_tune.sweep.storage import storage_problem
from sft_tune.sweep.strategy import SAMPLERS, sampler_class
from sft_tune.tasks import task_files

# What Ray Tune saves in an experiment folder that `Tuner.restore` can resume (what
# `Tuner.can_restore` looks for); checked here for a local folder, by Ray for URI storage.
TUNER_STATE = "tuner.pkl"


@dataclass
class CheckedSweep:
    """What `run_search` starts from: the sweep, its folder, its data read and checked."""

    sweep: Sweep
    folder: SweepFolder
    data: RawData
    resume: bool
    address: str | None


def check_search(
    space_path: Path | None = None,
    resume: str | Path | None = None,
    address: str | None = None,
    data_dir: Path | None = None,
) -> CheckedSweep:
    """Check a new sweep (`space_path`) or one to resume (`resume`: its folder, or its home on
    URI storage, brought down first; `data_dir`: where its data files are now) and where it
    will run."""
    if (space_path is None) == (resume is None):
        raise fail(
            "--space / --resume",
            {"space": space_path and str(space_path), "resume": resume and str(resume)},
            "give exactly one of --space FILE (new sweep) and --resume DIR (continue one)",
            "e.g. sft-tune search --space search_spaces/alpha.yaml",
        )
    if resume is not None:
        sweep, folder, data, problems = _resumed(resume, data_dir)
        search = sweep.search
    else:
        found = check_space(Path(space_path), new=True)
        sweep, data, search, problems = found.sweep, found.data, found.search, found.problems
        folder = found.folder
    if data_dir is not None and (resume is None or not Path(data_dir).is_dir()):
        problems.append(
            Problem(
                "--data-dir",
                str(data_dir),
                "re-points the data files of a sweep to resume: needs --resume and an existing "
                "folder",
                "drop --data-dir with --space (the space's config names its data), or pass the "
                "folder that holds the data now",
            )
        )
    target = address or os.environ.get("RAY_ADDRESS")
    try:
        if target and target not in ("auto", "local"):
            refuse_ray_client("--address" if address else "RAY_ADDRESS", target)
            probe_address("--address" if address else "RAY_ADDRESS", target)
        elif not target and search is not None:
            check_local_resources(search.resources)
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(problems, title=f"{space_path or resume}: invalid input")
    return CheckedSweep(sweep, folder, data, resume is not None, address)


def _taken(folder: SweepFolder) -> list[Problem]:
    """The problem of a new sweep whose folder (or home on URI storage, or that home's local
    cache) already holds a sweep, or whose URI storage cannot be read."""
    where = folder.location
    try:
        taken = folder.home.exists(SweepFolder.SNAPSHOT) if folder.remote else False
    except OSError as err:
        return storage_problem("search.storage_path", folder.storage_path, err).problems
    if taken or folder.holds_sweep():
        where = where if taken else str(folder.path)
        return [
            Problem(
                "search.name",
                folder.name,
                f"the sweep folder {where} already holds a sweep",
                f"resume it with `sft-tune search --resume {where}`, or pick another search.name",
            )
        ]
    return []


def _resumed(
    path: str | Path, data_dir: Path | None
) -> tuple[Sweep | None, SweepFolder | None, RawData | None, list[Problem]]:
    folder = SweepFolder.open(path, "--resume")
    if not folder.holds_sweep():
        raise fail(
            "--resume",
            str(path),
            f"must be a sweep folder holding {SweepFolder.SNAPSHOT}",
            "pass the folder printed by the interrupted `sft-tune search`",
        )
    sweep = folder.load_sweep(data_dir)
    if not folder.remote:  # where a moved local folder is now (a URI sweep's cache stays put)
        folder = SweepFolder.of(sweep.search)
    problems = []
    if not folder.remote and not (folder.path / TUNER_STATE).is_file():
        problems.append(
            Problem(
                "--resume",
                str(path),
                "the sweep never got as far as saving Ray Tune state, so there is nothing to "
                "resume",
                f"delete {path} and start the sweep again with --space",
            )
        )
    config, lm = sweep.base_config, "two-phase" in sweep.arms()
    data, found = data_problems(config, task_files(config.model.task), sweep.search.folds, lm)
    return sweep, folder, data, problems + found


# -- the search-space file -------------------------------------------------------------------------


def load_space(path: str | Path, check_inputs: bool = False) -> Sweep:
    """Read and check a search-space file; raise `InputError` listing every problem (with
    `check_inputs`, also the base config's data files, model folder and output path)."""
    found = check_space(Path(path), check_inputs, read=False)
    if found.problems:
        raise InputError(found.problems, title=f"{path}: invalid search space")
    return found.sweep


@dataclass
class SpaceCheck:
    """A space file checked: the sweep and its data when all is well, the search settings when
    they are valid on their own (so a command can check more with them), every problem, and a
    new sweep's folder (checked to hold no sweep yet) when the sweep is valid."""

    sweep: Sweep | None
    data: RawData | None
    search: SearchSettings | None
    problems: list[Problem]
    folder: SweepFolder | None = None


def check_space(
    path: Path, check_inputs: bool = True, read: bool = True, new: bool = False
) -> SpaceCheck:
    """Every problem of a space file at once, in stages that each take their module once: its
    schema; the base config in one pass (`runconfig.check_base`: with `check_inputs` the paths
    it names and its model folder, then every searched value and checkpoint against it); the
    settings and what may be searched; for a `new` sweep, that its folder holds no sweep yet;
    then (with `read`) the base config's data files: the unlabelled ones when some trial can run
    phase 1 (`Sweep.arms`), each file read as a plain table when the space or its base config
    has a problem. An unreadable YAML file raises `InputError` at once."""
    raw = read_yaml(path, "search-space file")
    problems: list[Problem] = []
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        space = None
        problems += problems_from_validation(err, SearchSpace)
    fields = (
        (space.base, space.config, space.overrides)
        if space is not None
        else (raw.get("base"), raw.get("config"), raw.get("overrides"))
    )
    candidates = {d: p.candidates() for d, p in space.params.items()} if space is not None else {}
    base = check_base(
        *fields, path, strict=space is not None, check_inputs=check_inputs, candidates=candidates
    )
    problems += base.problems
    search = space.search if space is not None else _valid(SearchSettings, raw.get("search", {}))
    if base.config is not None and space is not None:
        space = space.model_copy(update={"search": with_defaults(space.search, base.config)})
        search = space.search
        problems += _check_settings(space, base.config)
        problems += searchable_problems(space.params, base.config, search)
    sweep = None if problems else _sweep(space, base, path)
    folder = SweepFolder.of(sweep.search) if sweep is not None and new else None
    if folder is not None:
        problems += _taken(folder)
    if not read:
        return SpaceCheck(None if problems else sweep, None, search, problems)
    names = data_names(base.mapping, base.folder) if base.mapping is not None else {}
    if sweep is None:
        return SpaceCheck(None, None, search, problems + in_base(table_problems(names)))
    task, lm = task_files(sweep.base_config.model.task), "two-phase" in sweep.arms()
    data, found = data_problems(base.config, task, search.folds, lm, names)
    if found:
        problems += in_base(found)
    else:  # a metric the data cannot score (QA's no-answer split on SQuAD v1 data)
        problems += task.metric_problems(search.metric, data.train)
    if problems:
        return SpaceCheck(None, None, search, problems)
    return SpaceCheck(sweep, data, search, [], folder)


def _sweep(space: SearchSpace, base: BaseCheck, path: Path) -> Sweep:
    """The sweep of a space file with no problem: its storage path absolute (relative to the
    space file) and its searched local checkpoints absolute (relative to the base config)."""
    search = space.search
    if "://" not in search.storage_path and not Path(search.storage_path).is_absolute():
        search = search.model_copy(
            update={"storage_path": str((path.parent / search.storage_path).resolve())}
        )
    params, search = _resolved_checkpoints(space.params, search, base.folder)
    return Sweep(
        base=base.config.model_dump(mode="json"),
        base_config=base.config,
        params=params,
        search=search,
        source=str(path),
    )


def _valid(schema: type[BaseModel], raw: Any) -> Any:
    """`raw` validated by `schema`, or None (its problems are reported with the whole file's)."""
    try:
        return schema.model_validate(raw)
    except ValidationError:
        return None


def _resolved_checkpoints(
    params: dict[str, Param], search: SearchSettings, base_dir: Path
) -> tuple[dict[str, Param], SearchSettings]:
    """Searched local checkpoints (choices and initial points) as absolute folders, relative to
    the base config's folder (as `config.resolve_paths` does for the base config's own model),
    so that every trial and `select` find them wherever they run from."""
    searched = params.get("model.name_or_path")
    if searched is None or searched.type != "categorical":
        return params, search

    def resolved(value: Any) -> Any:
        local = base_dir / value if isinstance(value, str) else None
        return str(local.resolve()) if local is not None and local.exists() else value

    choices = [resolved(c) for c in searched.choices]
    points = [
        {k: resolved(v) if k == "model.name_or_path" else v for k, v in point.items()}
        for point in search.initial_points
    ]
    return (
        {**params, "model.name_or_path": searched.model_copy(update={"choices": choices})},
        search.model_copy(update={"initial_points": points}),
    )


def with_defaults(search: SearchSettings, base_config: RunConfig) -> SearchSettings:
    """The settings' defaults that depend on the base config, resolved in one explicit step: a
    search that names no metric is scored by its task's own (macro_f1, entity f1, squad f1, ...).
    A missing mode stays missing until the mode check has run; `Sweep` then takes the metric's
    own direction."""
    if "metric" in search.model_fields_set:
        return search
    return search.model_copy(update={"metric": task_files(base_config.model.task).metric})


def _check_settings(space: SearchSpace, base_config: RunConfig) -> list[Problem]:
    search, problems = space.search, []
    task = task_files(base_config.model.task)
    if search.metric not in task.metrics:
        problems.append(
            Problem(
                "search.metric",
                search.metric,
                f"must be a metric of the {task.name} task: {sorted(task.metrics)}",
                "pick one of those",
            )
        )
    else:
        # A missing mode is the metric's own direction (`Sweep` fills it in).
        direction = task.metric_mode(search.metric)
        if search.mode is not None and search.mode != direction:
            better = "lower" if direction == "min" else "higher"
            problems.append(
                Problem(
                    "search.mode",
                    search.mode,
                    f"must agree with search.metric: a {better} {search.metric} is better, so "
                    f"the mode is {direction} (each fold's early stopping, the scheduler, Optuna "
                    "and the ranking all follow it)",
                    f"set search.mode: {direction}, or leave it out",
                )
            )
    try:
        sampler_class(search.sampler)
    except KeyError:
        problems.append(
            Problem(
                "search.sampler",
                search.sampler,
                f"must be one of {sorted(SAMPLERS)} or an optuna.samplers class name",
                "pick a listed sampler",
            )
        )
    if search.sampler in ("grid", "GridSampler", "bruteforce", "BruteForceSampler"):
        for dotted, param in space.params.items():
            if param.type == "float" and param.step is None:
                problems.append(
                    Problem(
                        f"params.{dotted}",
                        param.model_dump(exclude_none=True),
                        f"the {search.sampler} sampler needs a finite grid",
                        "give float parameters a `step`, or use categorical choices",
                    )
                )
    if search.folds == 1 and base_config.data.validation_fraction == 0:
        problems.append(
            Problem(
                "search.folds",
                1,
                "one fold is a holdout split of data.validation_fraction of the labelled file, "
                "and the base config sets it to 0",
                "set data.validation_fraction (e.g. overrides: {data.validation_fraction: 0.2}), "
                "or use folds >= 2",
            )
        )
    for i, point in enumerate(search.initial_points):
        unknown = sorted(set(point) - set(space.params))
        if unknown:
            problems.append(
                Problem(
                    f"search.initial_points[{i}]",
                    unknown,
                    "every key must be a searched parameter",
                    f"use keys from {sorted(space.params)}",
                )
            )
    return problems
