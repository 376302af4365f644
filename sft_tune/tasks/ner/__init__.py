"""Token classification (NER): CoNLL text or sentence tables, entity-level scores (seqeval). `files.py` is its input side (light imports), `model.py` its model side."""
