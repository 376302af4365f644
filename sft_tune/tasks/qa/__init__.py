"""Extractive question answering: SQuAD v1.1/v2.0 JSON or tables, SQuAD scores. `files.py` is its
input side (light imports), `model.py` its model side."""

from sft_tune.checkpoint import Head
from sft_tune.tasks.base import TaskSpec
from sft_tune.tasks.qa.files import QaFiles

SPEC = TaskSpec(
    name="qa",
    files=QaFiles,
    model="sft_tune.tasks.qa.model:QaTask",
    head=Head("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "question-answering"),
    architecture="ForQuestionAnswering",
    predict_flags={
        "data.qa.question_column": "--question-column",
        "data.qa.context_column": "--context-column",
    },
)
