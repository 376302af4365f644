"""Task registry: one file per task, each a `Task` (see `base.py`).

Adding a task (token classification, extractive QA, generation) is adding a file here and a line
to `TASKS`.
"""

from __future__ import annotations

from sft_tune.tasks.base import Task
from sft_tune.tasks.classification import ClassificationTask
from sft_tune.tasks.generation import GenerationTask
from sft_tune.tasks.ner import NerTask
from sft_tune.tasks.qa import QaTask

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "ner": NerTask,
    "qa": QaTask,
    "generation": GenerationTask,
}


def get_task(name: str) -> Task:
    """The task registered under `name` (config validation already checked the name)."""
    return TASKS[name]()
