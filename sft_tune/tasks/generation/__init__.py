"""Prompt -> response supervised fine-tuning of decoders: tables or chat messages. `files.py` is its
input side (light imports), `model.py` its model side."""

from sft_tune.checkpoint import Head
from sft_tune.tasks.base import TaskSpec
from sft_tune.tasks.generation.files import GenerationFiles

SPEC = TaskSpec(
    name="generation",
    files=GenerationFiles,
    model="sft_tune.tasks.generation.model:GenerationTask",
    head=Head("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal-LM", decoder_only=True),
    architecture=None,
    predict_flags={},
)
