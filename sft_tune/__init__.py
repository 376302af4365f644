"""sft-tune: two-phase supervised fine-tuning (L_lm + alpha * L_task, then L_task), searched on
Ray."""

__version__ = "0.1.0"
