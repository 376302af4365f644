"""Extractive question answering: SQuAD v1.1/v2.0 JSON or tables, SQuAD scores. `files.py` is its input side (light imports), `model.py` its model side."""
