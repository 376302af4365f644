"""The search-space file: a base run config, the parameters to search, and the search settings.

Parameters are addressed by dotted run-config paths (`phase1.alpha`) in Optuna's short form
(`type: float|int|categorical`, `low`, `high`, `log`, `step`, `choices`). Here: the file's schema,
the checked `Sweep`, and what a trial honours of each searched field. `checks.py` reads and checks
a file whole (`check_space`, `load_space`), before Ray starts; `strategy.py` translates the
parameters to Optuna and holds the sampler and scheduler registries.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from sft_tune.config import RunConfig
from sft_tune.errors import Problem
from sft_tune.runconfig import parse_config, with_params
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
                f"an int parameter needs whole-number bounds, but got (low={self.low}, "
                f"high={self.high})"
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
        description="Task metric averaged over folds; default: the task's own (classification "
        "macro_f1, ner f1, qa f1).",
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
        description="Optuna sampler: tpe, random, grid, cmaes, qmc, gp, or any optuna.samplers "
        "class name.",
    )
    scheduler: Literal["asha", "racing", "median", "none"] = Field(
        "asha",
        description="Early stopping between folds: asha, racing (a trial behind the incumbent "
        "beyond doubt on the folds both completed, or behind it by more than the ROPE on 2 or "
        "more of them, is stopped), median, or none.",
    )
    folds: int = Field(
        3,
        ge=1,
        le=20,
        description="k of stratified k-fold cross-validation; 1 = one holdout split of the base "
        "config's data.validation_fraction.",
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
        description="Folder (relative to this file) or URI (s3://, gs://) for results and "
        "checkpoints.",
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
_OTHER_DATA = (
    "the data is what cross-validation scores: trials on other data, or another "
    "reading of the same files, cannot be compared"
)
_NO_SCORE = "it changes nothing a fold scores"
NOT_SEARCHABLE = {
    "model.task": "the task decides how the files are read, the head and the metric: one sweep "
    "searches one task",
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


def searchable_problems(
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
                    "set one value for the whole sweep in the base config or `overrides` (see "
                    "docs/search.md, Searchable fields)",
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
                "with no data.unlabelled file, a two-phase trial that samples false has no LM "
                "text for phase 1",
                "add data.unlabelled files, or drop false from the choices",
            )
        )
    return problems
