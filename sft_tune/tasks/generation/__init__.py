"""Prompt -> response supervised fine-tuning of decoders: tables or chat messages. `files.py` is its input side (light imports), `model.py` its model side."""
