"""The search-space file: a base run config, the parameters to search, and the search settings.

Parameters are addressed by dotted run-config paths (`phase1.alpha`) in Optuna's short form
(`type: float|int|categorical`, `low`, `high`, `log`, `step`, `choices`). Everything is parsed
and checked here, before Ray starts; `to_optuna` is the one translation to Optuna distributions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sft_tune.config import RunConfig, problems_from_validation, resolve_paths
from sft_tune.core.files import RawData, data_names, data_problems
from sft_tune.errors import InputError, Problem
from sft_tune.runconfig import input_problems, parse_config, read_yaml, table_problems
from sft_tune.tasks import TASKS, task_files


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no inf/nan bounds


class Param(_Strict):
    """One searched parameter, Optuna's short form."""

    type: Literal["float", "int", "categorical"] = Field(description="Distribution kind.")
    low: float | None = Field(None, description="Lower bound (float, int).")
    high: float | None = Field(None, description="Upper bound (float, int).")
    log: bool = Field(False, description="Sample on a log scale (float, int; low > 0).")
    step: float | None = Field(None, description="Discretization step (float, int; not with log).")
    choices: list[Any] | None = Field(None, description="Values to choose from (categorical).")

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes `choices`, not `low`/`high`")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"`low > 0` must hold with log: true, but got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log: true` cannot be used together")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(
                f"an int parameter needs whole-number bounds, but got (low={self.low}, high={self.high})"
            )
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes `low`/`high`, not `choices`")
        return self

    def candidates(self) -> list[Any]:
        """The values that bound the distribution (checked against the run config's rules)."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class Resources(_Strict):
    """What each trial's Ray Train run asks for."""

    workers: int = Field(1, ge=1, description="DDP workers per trial.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(
        0.0,
        ge=0,
        description="GPUs per worker (> 0 trains on GPU with NCCL). A fraction packs several "
        "1-worker trials on one GPU (0.25: four); DDP ranks (workers > 1) need whole GPUs.",
    )

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self) -> Resources:
        if self.workers > 1 and self.gpus_per_worker % 1:
            raise ValueError(
                f"gpus_per_worker {self.gpus_per_worker:g} with workers {self.workers}: DDP ranks "
                "need whole GPUs (two ranks on one GPU are refused by NCCL); fractions are for "
                "1-worker trials, which may share a GPU"
            )
        return self


class SearchSettings(_Strict):
    """How the search runs."""

    name: str = Field(
        "sweep",
        description="Sweep name: folder under storage_path and Optuna study name; one path "
        "component of letters, digits, `_`, `.` and `-` (not `.` or `..`).",
    )

    @field_validator("name")
    @classmethod
    def _one_safe_component(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
            raise ValueError(
                "must be one safe path component: letters, digits, `_`, `.` and `-`, not `.` or "
                "`..` (the sweep folder is storage_path/NAME)"
            )
        return name

    metric: str = Field(
        "macro_f1",
        description="Task metric averaged over folds; default: the task's own (classification macro_f1, ner f1, qa f1).",
    )
    mode: Literal["max", "min"] | None = Field(
        None,
        description="Whether a higher (max) or lower (min) metric is better; default: the "
        "metric's own direction (min for loss and perplexity, max for the scores), and a mode "
        "against it is refused.",
    )
    num_trials: int = Field(8, ge=1, description="Trials to run.")
    max_concurrent: int = Field(1, ge=1, description="Trials running at once.")
    sampler: str = Field(
        "tpe",
        description="Optuna sampler: tpe, random, grid, cmaes, qmc, gp, or any optuna.samplers class name.",
    )
    scheduler: Literal["asha", "racing", "median", "none"] = Field(
        "asha",
        description="Early stopping between folds: asha, racing (a trial behind the incumbent "
        "beyond doubt on the folds both completed, or unlikely to beat it by more than the "
        "ROPE, is stopped), median, or none.",
    )
    folds: int = Field(
        3,
        ge=1,
        le=20,
        description="k of stratified k-fold cross-validation; 1 = one holdout split of the base config's data.validation_fraction.",
    )
    repeats: int = Field(
        1,
        ge=1,
        le=20,
        description="Repeated k-fold: every trial runs repeats x folds folds, each repeat split "
        "with its own seed (for fewer than ~1,000 labelled examples, or a verdict of can't tell).",
    )
    rope: float = Field(
        0.01,
        ge=0,
        description="Region of practical equivalence: the smallest difference of the metric (in "
        "its units) that matters, for the phase-1 verdict and the choice of the best trial.",
    )
    select: Literal["best", "simplest"] = Field(
        "best",
        description="Which trial is chosen: best (the highest CV mean) or simplest (the "
        "cheapest of the trials the best cannot be told apart from: fewest phase-1 steps, then "
        "fewest seconds per fold).",
    )
    seed: int = Field(0, ge=0, description="Seed of the sampler and the fold split.")
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0, description="Retries of a crashing trial.")
    storage_path: str = Field(
        "runs/sweeps",
        description="Folder (relative to this file) or URI (s3://, gs://) for results and checkpoints.",
    )
    optuna_storage: str | None = Field(
        None, description="Optuna storage URL (default: sqlite file in the sweep folder)."
    )
    wandb_project: str = Field(
        "sft-tune", description="W&B project of the trial runs (grouped by sweep name)."
    )
    initial_points: list[dict[str, Any]] = Field(
        default_factory=list, description="Configurations to try first (param -> value)."
    )

    @property
    def cv_folds(self) -> int:
        """The folds every trial runs: folds x repeats."""
        return self.folds * self.repeats


class SearchSpace(_Strict):
    """The whole search-space file."""

    base: str | None = Field(
        None, description="Path of the base run config (relative to this file)."
    )
    config: dict[str, Any] | None = Field(None, description="The base run config, inline.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Fixed values for this search, by dotted config path."
    )
    params: dict[str, Param] = Field(description="Searched parameters by dotted config path.")
    search: SearchSettings = Field(default_factory=SearchSettings)


SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
    "bruteforce": "BruteForceSampler",
}


class Sweep(BaseModel):
    """A checked search: base config as a dict and as a typed config, params and settings."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base: dict[str, Any]
    base_config: RunConfig
    params: dict[str, Param]
    search: SearchSettings
    source: str

    @model_validator(mode="after")
    def _mode_of_metric(self) -> Sweep:
        """A sweep always knows its direction: the metric's own unless the space gave one."""
        if self.search.mode is None:
            task = task_files(self.base_config.model.task)
            self.search = self.search.model_copy(
                update={"mode": task.metric_mode(self.search.metric)}
            )
        return self

    def steps_of(self, params: dict[str, Any]) -> int:
        """phase1.steps of a trial with these searched parameters."""
        return int(with_params(self.base, params).get("phase1", {}).get("steps", 0))

    def arms(self) -> set[str]:
        """Which arms this space's trials can fall in: "plain" (phase1.steps 0) and "two-phase"."""
        values = (
            self.params["phase1.steps"].candidates()
            if "phase1.steps" in self.params
            else [self.steps_of({})]
        )
        low, high = min(values), max(values)
        return {arm for arm, present in (("plain", low <= 0), ("two-phase", high > 0)) if present}

    def reencoding_params(self) -> list[str]:
        """The searched fields whose values change the encoded data (another checkpoint, length
        or encoding option): the sweep encodes once per distinct value."""
        task = self.base_config.model.task
        return [
            dotted
            for dotted in self.params
            if searched_by(dotted, task)[0] in (ENCODING, CHECKPOINT)
        ]

    def reencodes(self) -> bool:
        return bool(self.reencoding_params())

    def checkpoint_configs(self) -> list[RunConfig]:
        """The base config with each searched checkpoint (every combination of the choices of
        model.name_or_path and model.gguf_file), the other fields as in the base config."""
        from itertools import product

        from sft_tune.runconfig import parse_config

        searched = {
            dotted: self.params[dotted].candidates()
            for dotted in ("model.name_or_path", "model.gguf_file")
            if dotted in self.params
        }
        return (
            [
                parse_config(with_params(self.base, dict(zip(searched, values))))
                for values in product(*searched.values())
            ]
            if searched
            else []
        )

    def arm_point(self, arm: str) -> dict[str, Any]:
        """A value of phase1.steps that puts a trial in `arm` (the middle positive one for
        two-phase), as an initial point; the other parameters are left to the sampler."""
        if arm == "plain":
            return {"phase1.steps": 0}
        param = self.params["phase1.steps"]
        if param.type == "categorical":
            positive = sorted(v for v in param.choices if v > 0)
        else:
            step = int(param.step or 1)
            positive = [v for v in range(int(param.low), int(param.high) + 1, step) if v > 0]
        return {"phase1.steps": positive[(len(positive) - 1) // 2]}


# Parameters that only act in phase 1: sampled only for trials that run it (phase1.steps > 0).
PHASE1_ONLY = ("data.labelled_text_for_lm", "model.lm_objective")

# How a trial honours a searched run-config field (by dotted path, or a section ending in "."),
# and so what each distinct value costs. Every field of the run config is in one of the tables
# below (tests/test_space.py checks it): a field a trial would silently ignore is refused.
LOOP = "loop"  # read by each trial's training loop: nothing extra
ENCODING = "encoding"  # the data is encoded again for each distinct value (once per sweep)
MODEL = "model"  # the model is loaded again for each distinct value in each trial process
CHECKPOINT = "checkpoint"  # another checkpoint: its tokenizer, an encoding and a model load
ADAPTER = "adapter"  # other adapters on the loaded base model: no model load
SEARCHED_BY = {
    "phase1.": LOOP,
    "phase2.": LOOP,
    "optimizer.": LOOP,
    "seed": LOOP,
    "precision": LOOP,
    "data.labelled_text_for_lm": LOOP,
    "data.validation_fraction": LOOP,
    "data.max_length": ENCODING,
    "data.stride": ENCODING,
    "model.lm_objective": MODEL,
    "model.gradient_checkpointing": MODEL,
    "model.adapter.": ADAPTER,
    "model.name_or_path": CHECKPOINT,
    "model.gguf_file": CHECKPOINT,
}
_OTHER_DATA = "the data is what cross-validation scores: trials on other data, or another reading of the same files, cannot be compared"
_NO_SCORE = "it changes nothing a fold scores"
NOT_SEARCHABLE = {
    "model.task": "the task decides how the files are read, the head and the metric: one sweep searches one task",
    "data.train": _OTHER_DATA,
    "data.test": "the test file is scored once, by select, after the search",
    "data.unlabelled": _OTHER_DATA,
    "data.text_column": _OTHER_DATA,
    "data.label_column": _OTHER_DATA,
    "data.unlabelled_text_column": _OTHER_DATA,
    "data.labels": _OTHER_DATA,
    "data.max_unknown_fraction": f"{_NO_SCORE}: it only decides whether a run may start",
    "data.cache_dir": f"{_NO_SCORE}: it is where encodings are cached",
    "output_dir": f"{_NO_SCORE}: a sweep writes to its own folder",
    "log_every": f"{_NO_SCORE}: it is how often losses are logged",
    "device": "where trials run is search.resources (gpus_per_worker)",
    "export.adapter_only": f"{_NO_SCORE}: it is how select writes the final model",
}


def searched_by(dotted: str, task: str) -> tuple[str | None, str | None]:
    """How a trial honours a searched field: (kind, None), or (None, why it cannot be searched)."""
    section = task_files(task).options
    if section is not None and dotted.startswith(f"data.{section.section}."):
        field = dotted.split(".", 2)[2]
        if field in section.encoding_fields:
            return ENCODING, None
        return None, f"data.{section.section}.{field} decides how the files are read: {_OTHER_DATA}"
    other_sections = tuple(
        f"data.{files.options.section}." for files in TASKS.values() if files.options is not None
    )
    if dotted.startswith(other_sections):
        return None, f"{_NO_SCORE}: it is an option of another task than {task}"
    for key, kind in SEARCHED_BY.items():
        if dotted == key or (key.endswith(".") and dotted.startswith(key)):
            return kind, None
    return None, NOT_SEARCHABLE.get(dotted, "sft-tune does not know how a trial would honour it")


def phase1_only(dotted: str) -> bool:
    """Whether a searched parameter changes nothing when phase 1 is skipped."""
    return (dotted.startswith("phase1.") and dotted != "phase1.steps") or dotted in PHASE1_ONLY


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
    they are valid on their own (so a command can check more with them), and every problem."""

    sweep: Sweep | None
    data: RawData | None
    search: SearchSettings | None
    problems: list[Problem]


def check_space(path: Path, check_inputs: bool = True, read: bool = True) -> SpaceCheck:
    """Every problem of a space file at once: its schema, the base config (with `check_inputs`
    the paths it names and its model folder), the params against the config, the settings, and
    (with `read`) the base config's data files: the unlabelled ones when some trial can run
    phase 1 (`Sweep.arms`). An unreadable YAML file raises `InputError` at once."""
    raw = read_yaml(path, "search-space file")
    problems: list[Problem] = []
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        space = None
        problems += problems_from_validation(err, SearchSpace)
    base, base_dir = _base_dict(raw, space, path, problems)
    base_config = None
    if base is not None and check_inputs:  # reported with the schema's problems, not after them
        problems += _in_base(input_problems(base, base_dir))
    if base is not None:
        try:
            base_config = parse_config(base, source=f"{path} base config")
        except InputError as err:
            problems += _in_base(err.problems)
    if base_config is not None and space is not None:
        problems += _searchable_problems(space.params, base_config, space.search)
        problems += _check_params(base, space.params)
        problems += _check_settings(space, base_config)
        if check_inputs:
            problems += _checkpoint_problems(base, base_dir, space.params)
    search = space.search if space is not None else _valid(SearchSettings, raw.get("search", {}))
    names = data_names(base, base_dir) if base is not None else {}
    if problems:
        problems += _in_base(table_problems(names)) if read else []
        return SpaceCheck(None, None, search, problems)
    resolved = resolve_paths(base_config, base_dir)
    if "://" not in search.storage_path and not Path(search.storage_path).is_absolute():
        search = search.model_copy(
            update={"storage_path": str((path.parent / search.storage_path).resolve())}
        )
    params, search = _resolved_checkpoints(space.params, search, base_dir)
    sweep = Sweep(
        base=resolved.model_dump(mode="json"),
        base_config=resolved,
        params=params,
        search=search,
        source=str(path),
    )
    if not read:
        return SpaceCheck(sweep, None, search, [])
    task, lm = task_files(resolved.model.task), "two-phase" in sweep.arms()
    data, found = data_problems(resolved, task, search.folds, lm, names)
    if found:
        return SpaceCheck(None, None, search, _in_base(found))
    found = task.metric_problems(search.metric, data.train)
    if found:
        return SpaceCheck(None, None, search, found)
    return SpaceCheck(sweep, data, search, [])


def _valid(schema: type[BaseModel], raw: Any) -> Any:
    """`raw` validated by `schema`, or None (its problems are reported with the whole file's)."""
    try:
        return schema.model_validate(raw)
    except ValidationError:
        return None


def _in_base(problems: list[Problem]) -> list[Problem]:
    return [Problem(f"base config {p.where}", p.value, p.rule, p.fix) for p in problems]


def _base_dict(
    raw: dict[str, Any], space: SearchSpace | None, path: Path, problems: list[Problem]
) -> tuple[dict[str, Any] | None, Path]:
    """The base config mapping with the overrides applied, and the folder its paths are relative
    to; read from the raw file when the space schema failed elsewhere, so that the base config's
    problems are reported too."""
    given_base, config = raw.get("base"), raw.get("config")
    overrides = raw.get("overrides") if isinstance(raw.get("overrides"), dict) else {}
    if space is not None:
        given_base, config, overrides = space.base, space.config, space.overrides
    base_dir = path.resolve().parent
    if isinstance(given_base, str):
        base_dir = (path.parent / given_base).resolve().parent
    if (given_base is None) == (config is None):
        if space is not None:
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


def _searchable_problems(
    params: dict[str, Param], base_config: RunConfig, search: SearchSettings
) -> list[Problem]:
    """Every searched field must be one a trial honours (`searched_by`), and no searched value
    may leave a two-phase trial without LM text (phase 1 would have nothing to read)."""
    problems = []
    for dotted, param in params.items():
        kind, refused = searched_by(dotted, base_config.model.task)
        if refused is None and dotted == "data.validation_fraction" and search.folds == 1:
            refused = "with search.folds 1 it is the holdout split every trial is scored on"
        if refused is not None:
            problems.append(
                Problem(
                    f"params.{dotted}",
                    param.model_dump(exclude_none=True, exclude_defaults=True),
                    f"{dotted} cannot be searched: {refused}",
                    "set one value for the whole sweep in the base config or `overrides` (see README, Searchable fields)",
                )
            )
    lm_text = params.get("data.labelled_text_for_lm")
    two_phase = max(
        params["phase1.steps"].candidates()
        if "phase1.steps" in params
        else [base_config.phase1.steps]
    )
    if (
        lm_text is not None
        and False in lm_text.candidates()
        and two_phase > 0
        and not base_config.data.unlabelled
    ):
        problems.append(
            Problem(
                "params.data.labelled_text_for_lm",
                lm_text.candidates(),
                "with no data.unlabelled file, a two-phase trial that samples false has no LM text for phase 1",
                "add data.unlabelled files, or drop false from the choices",
            )
        )
    return problems


def _checkpoint_problems(
    base: dict[str, Any], base_dir: Path, params: dict[str, Param]
) -> list[Problem]:
    """Each searched checkpoint judged like the base config's (its folder, or an offline hub id's
    cache, and what its config.json rules out), named by the param and the choice."""
    problems = []
    for dotted in ("model.name_or_path", "model.gguf_file"):
        for value in params[dotted].candidates() if dotted in params else []:
            found = input_problems(with_params(base, {dotted: value}), base_dir)
            problems += [
                Problem(f"params.{dotted} choice {value!r}: {p.where}", p.value, p.rule, p.fix)
                for p in found
                if p.where.startswith("model.")
            ]
    return problems


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


def _check_params(base: dict[str, Any], params: dict[str, Param]) -> list[Problem]:
    """Every path must name a config field, and every bound or choice must be valid there."""
    problems = []
    for dotted, param in params.items():
        for value in param.candidates():
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
                                f"each bound/choice must fit the rest of the config: with {dotted} = {value!r}, {p.where}: {p.rule}",
                                f"narrow the range, or set {p.where} (in overrides) so that every value fits",
                            )
                        )
                break
    return problems


def _check_settings(space: SearchSpace, base_config: RunConfig) -> list[Problem]:
    search, problems = space.search, []
    task = task_files(base_config.model.task)
    if "metric" not in search.model_fields_set:
        search.metric = task.metric  # the task's own score (macro_f1, entity f1, squad f1, ...)
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
                    f"must agree with search.metric: a {better} {search.metric} is better, so the mode is {direction} (each fold's early stopping, the scheduler, Optuna and the ranking all follow it)",
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
                "one fold is a holdout split of data.validation_fraction of the labelled file, and the base config sets it to 0",
                "set data.validation_fraction (e.g. overrides: {data.validation_fraction: 0.2}), or use folds >= 2",
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


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    """The Optuna sampler class for a short name or class name (KeyError when unknown)."""
    cls_name = SAMPLERS.get(name.lower(), name)
    cls = getattr(optuna.samplers, cls_name, None)
    if (
        not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler))
        or cls is optuna.samplers.BaseSampler
    ):
        raise KeyError(name)
    return cls


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """Instantiate the sampler, seeded (GridSampler gets the grid of the params)."""
    cls = sampler_class(sweep.search.sampler)
    if cls is optuna.samplers.GridSampler:
        return cls(_grid(sweep.params), seed=sweep.search.seed)
    try:
        return cls(seed=sweep.search.seed)
    except TypeError:
        return cls()


def _grid(params: dict[str, Param]) -> dict[str, list[Any]]:
    grid = {}
    for dotted, param in params.items():
        if param.type == "categorical":
            grid[dotted] = list(param.choices)
            continue
        step = param.step or 1
        count = int(round((param.high - param.low) / step)) + 1
        cast = int if param.type == "int" else float
        grid[dotted] = [cast(param.low + i * step) for i in range(count)]
    return grid


def to_optuna(params: dict[str, Param]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The one translation of the short form into Optuna distributions."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for dotted, param in params.items():
        if param.type == "categorical":
            dists[dotted] = optuna.distributions.CategoricalDistribution(param.choices)
        elif param.type == "int":
            dists[dotted] = optuna.distributions.IntDistribution(
                int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
            )
        else:
            dists[dotted] = optuna.distributions.FloatDistribution(
                param.low, param.high, log=param.log, step=param.step
            )
    return dists
