"""Sequence classification (sentiment, topic): a table with a text and a label column. `files.py` is its input side (light imports), `model.py` its model side."""
