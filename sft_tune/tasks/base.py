"""What a task provides: its input side (`TaskFiles`: its options, rules and files, read and
checked with light imports), its model side (`Task`: encoding, batches, scores, predictions, with
its input side composed in) and what the registry knows of it (`TaskSpec`).

The input side runs before any model loads (`sft-tune` checks every input first); the two-phase
loop (`sft_tune.core.loop`) knows nothing task-specific beyond `Task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_tune.checkpoint import Head
from sft_tune.config import DataConfig, RunConfig, TaskOptions
from sft_tune.errors import Problem

if TYPE_CHECKING:
    import torch


class TaskFiles(ABC):
    """A task's input: its section of `data`, its config rules, its labelled files and the input
    of `predict`. Imports nothing heavy (no torch, transformers or datasets at import time)."""

    name: str
    metric: str  # the default score a search maximizes, e.g. "macro_f1"
    metrics: tuple[str, ...]  # every key `evaluate` returns
    options: type[TaskOptions] | None = None  # the task's section of `data` (e.g. data.ner), if any

    def check(self, config: RunConfig) -> list[Problem]:
        """The task's own rules on a schema-valid config (`runconfig.parse_config` reports them
        with every other problem); none by default."""
        return []

    @abstractmethod
    def read(self, path: Path, data: DataConfig, what: str) -> Any:
        """Read and check one labelled file (texts and raw labels)."""

    @abstractmethod
    def label_names(self, train: Any, data: DataConfig) -> list[str]:
        """The label set: the configured one, or inferred from the training data."""

    @abstractmethod
    def check_labels(self, labelled: Any, names: Sequence[str], path: Path) -> None:
        """Raise `InputError` when a label is outside the label set."""

    @abstractmethod
    def read_input(self, path: Path, data: DataConfig) -> Any:
        """Read and check the input file of `sft-tune predict` (before any model loads)."""

    @abstractmethod
    def texts(self, labelled: Any) -> list[str]:
        """The labelled texts, e.g. to feed the LM loss."""

    def held_out_texts(self, labelled: Any) -> list[list[str]]:
        """Per example, every text of it that LM data must not hold when the example is held out
        (a fold's validation part, the test file): compared in `data.normalized` form. By
        default its LM text alone."""
        return [[text] for text in self.texts(labelled)]

    @abstractmethod
    def strata(self, labelled: Any) -> list[Any]:
        """One stratification key per example (folds and validation splits keep their shares)."""

    def groups(self, labelled: Any) -> list[Any] | None:
        """One group key per example where examples come in groups that must stay on one side of
        a split (sentences of a document, questions on a context); None = independent examples."""
        return None

    def metric_problems(self, metric: str, train: Any) -> list[Problem]:
        """Whether the training data lets `metric` be scored in every fold (a search checks it
        before Ray starts); no rule by default."""
        return []

    def metric_mode(self, metric: str) -> str:
        """ "max" when a higher `metric` is better, "min" for losses."""
        return "min" if metric in ("loss", "perplexity") else "max"


class Task(ABC):
    """A whole task: its model side, with its input side composed in (`files`, an instance of
    `files_class`). The run reads the input side through the whole task: the delegating methods
    below, one line each. `auto_model` is the transformers Auto class of the exported model."""

    files_class: type[TaskFiles]
    auto_model: Any

    def __init__(self) -> None:
        self.files = self.files_class()

    # -- the input side, composed ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def metric(self) -> str:
        return self.files.metric

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.files.metrics

    @property
    def options(self) -> type[TaskOptions] | None:
        return self.files.options

    def check(self, config: RunConfig) -> list[Problem]:
        return self.files.check(config)

    def read(self, path: Path, data: DataConfig, what: str) -> Any:
        return self.files.read(path, data, what)

    def label_names(self, train: Any, data: DataConfig) -> list[str]:
        return self.files.label_names(train, data)

    def check_labels(self, labelled: Any, names: Sequence[str], path: Path) -> None:
        return self.files.check_labels(labelled, names, path)

    def read_input(self, path: Path, data: DataConfig) -> Any:
        return self.files.read_input(path, data)

    def texts(self, labelled: Any) -> list[str]:
        return self.files.texts(labelled)

    def held_out_texts(self, labelled: Any) -> list[list[str]]:
        return self.files.held_out_texts(labelled)

    def strata(self, labelled: Any) -> list[Any]:
        return self.files.strata(labelled)

    def groups(self, labelled: Any) -> list[Any] | None:
        return self.files.groups(labelled)

    def metric_problems(self, metric: str, train: Any) -> list[Problem]:
        return self.files.metric_problems(metric, train)

    def metric_mode(self, metric: str) -> str:
        return self.files.metric_mode(metric)

    # -- the model side ----------------------------------------------------------------------

    @abstractmethod
    def encode(self, labelled: Any, tokenizer, names: Sequence[str], data: DataConfig) -> Any:
        """Tokenize (cached) and map labels to ids; returns an object with `subset(indices)`."""

    @abstractmethod
    def collate(
        self, examples: Any, indices: Sequence[int], pad_id: int, side: str
    ) -> dict[str, torch.Tensor]:
        """A padded batch with `labels`, ready for `auto_model(**batch)`."""

    @abstractmethod
    def evaluate(
        self,
        model: torch.nn.Module,
        examples: Any,
        batches: list[list[int]],
        pad_id: int,
        side: str,
        device: torch.device,
    ) -> dict[str, float]:
        """Metrics of `model` on `examples` (including `self.metric`); `loop.evaluate` calls it in
        eval mode without gradients."""

    def lengths(self, examples: Any) -> list[int] | None:
        """Token length of each training unit, for length-grouped batches; None = plain
        shuffling."""
        return None

    def model_kwargs(self, names: Sequence[str]) -> dict[str, Any]:
        """Extra `from_pretrained` arguments for the task head."""
        return {}

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """Extra `AutoTokenizer.from_pretrained` arguments the task needs."""
        return {}

    @abstractmethod
    def predict(
        self, model: torch.nn.Module, tokenizer, rows: Any, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """One JSON-able record per input row, in order (`sft-tune predict`); `rows` is what
        `read_input` read.

        `data` is the run's data config (from the model's run.json) with the command line's
        column overrides applied."""


def window_problems(data: DataConfig) -> list[Problem]:
    """The rule of tasks that split a long input into overlapping windows (NER sentences, QA
    contexts): consecutive windows share `data.stride` tokens, less than half a window."""
    if data.stride >= data.max_length // 2:
        return [
            Problem(
                "data.stride",
                data.stride,
                f"windows must overlap by less than half of data.max_length ({data.max_length})",
                f"set data.stride below {data.max_length // 2}",
            )
        ]
    return []


@dataclass(frozen=True)
class TaskSpec:
    """A task as the registry (`tasks.register`) knows it, with light imports: its name, its
    input side, where its whole task is (imported only when a model is about to load), the head
    it puts on the backbone (for the checks of a local checkpoint before anything loads) and
    what `sft-tune predict` knows of it."""

    name: str
    files: type[TaskFiles]
    # "module:Class" of the whole `Task` (torch and transformers import with it)
    model: str
    # the head it puts on the backbone, checked against a local checkpoint's config.json before
    # anything loads (None: no check)
    head: Head | None = None
    # the suffix of an exported architecture's name that means this task (a folder without run.json)
    architecture: str | None = None
    # data setting -> the `sft-tune predict` flag that overrides it (with `data.text_column`'s)
    predict_flags: dict[str, str] = field(default_factory=dict)
