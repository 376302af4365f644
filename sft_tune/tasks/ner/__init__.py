"""Token classification (NER): CoNLL text or sentence tables, entity-level scores (seqeval).
`files.py` is its input side (light imports), `model.py` its model side."""

from sft_tune.checkpoint import Head
from sft_tune.tasks.base import TaskSpec
from sft_tune.tasks.ner.files import NerFiles

SPEC = TaskSpec(
    name="ner",
    files=NerFiles,
    model="sft_tune.tasks.ner.model:NerTask",
    head=Head("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    architecture="ForTokenClassification",
    predict_flags={"data.ner.tokens_column": "--tokens-column"},
)
