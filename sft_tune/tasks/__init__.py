"""Task registry: one file per task for its input (`<task>_files.py`: options, rules, reading; light
imports) and one for the rest (`<task>.py`: encoding, batches, scores, predictions; torch and
transformers).

`TASKS` holds the input sides, so a config and its files are checked before torch loads;
`get_task` imports the whole task. Adding a task is adding its two files and a line to each dict.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from sft_tune.tasks.base import TaskFiles
from sft_tune.tasks.classification.files import ClassificationFiles
from sft_tune.tasks.generation.files import GenerationFiles
from sft_tune.tasks.ner.files import NerFiles
from sft_tune.tasks.qa.files import QaFiles

if TYPE_CHECKING:
    from sft_tune.tasks.base import Task

TASKS: dict[str, type[TaskFiles]] = {
    "classification": ClassificationFiles,
    "ner": NerFiles,
    "qa": QaFiles,
    "generation": GenerationFiles,
}

# The whole task of each name: module and class, imported by `get_task` only.
IMPLEMENTATIONS = {
    "classification": ("sft_tune.tasks.classification.model", "ClassificationTask"),
    "ner": ("sft_tune.tasks.ner.model", "NerTask"),
    "qa": ("sft_tune.tasks.qa.model", "QaTask"),
    "generation": ("sft_tune.tasks.generation.model", "GenerationTask"),
}


def task_files(name: str) -> TaskFiles:
    """The input side of the task registered under `name` (config validation checked the name)."""
    return TASKS[name]()


def get_task(name: str) -> Task:
    """The whole task registered under `name` (imports torch and transformers)."""
    module, cls = IMPLEMENTATIONS[name]
    return getattr(import_module(module), cls)()
