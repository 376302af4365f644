"""Sequence classification (sentiment, topic): a table with a text and a label column. `files.py` is
its input side (light imports), `model.py` its model side."""

from sft_tune.checkpoint import Head
from sft_tune.tasks.base import TaskSpec
from sft_tune.tasks.classification.files import ClassificationFiles

SPEC = TaskSpec(
    name="classification",
    files=ClassificationFiles,
    model="sft_tune.tasks.classification.model:ClassificationTask",
    head=Head("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "sequence-classification"),
    architecture="ForSequenceClassification",
    predict_flags={},
)
