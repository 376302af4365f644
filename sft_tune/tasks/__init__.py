"""The task registry: each task is one folder, `tasks/<name>/` (`files.py`: its input side, with
light imports; `model.py`: its model side; `__init__.py`: its `TaskSpec`), registered here.

`TASKS` holds the input sides, so a config and its files are checked before torch loads;
`get_task` imports the whole task. A task defined elsewhere (a plugin, a test) calls `register`
with its own `TaskSpec`; nothing else needs to know it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from sft_tune.config import TASK_SECTIONS
from sft_tune.tasks import classification, generation, ner, qa
from sft_tune.tasks.base import TaskFiles, TaskSpec

if TYPE_CHECKING:
    from sft_tune.tasks.base import Task

SPECS: dict[str, TaskSpec] = {}
# The input side of each registered task, by name.
TASKS: dict[str, type[TaskFiles]] = {}


def register(spec: TaskSpec) -> None:
    """Make `spec`'s task known by its name (a later spec of the same name replaces it), and its
    section of `data`, if it has one, a key the config takes."""
    SPECS[spec.name] = spec
    TASKS[spec.name] = spec.files
    if spec.files.options is not None:
        TASK_SECTIONS[spec.files.options.section] = spec.name


for _task in (classification, ner, qa, generation):
    register(_task.SPEC)


def task_files(name: str) -> TaskFiles:
    """The input side of the task registered under `name` (config validation checked the name)."""
    return TASKS[name]()


def get_task(name: str) -> Task:
    """The whole task registered under `name` (imports torch and transformers)."""
    module, cls = SPECS[name].model.split(":")
    return getattr(import_module(module), cls)()
