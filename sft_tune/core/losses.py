"""The phase-1 objective: real language-model losses and their mix with the task loss.

`phase_loss` is the one place the objective is composed (with the alpha schedule, `alpha_at`,
and the alpha = 0 rule, `task_trains`); its `LossParts` feed both `backward()` and the logs. The LM
losses take the backbone's hidden states and project to the vocabulary only where a target exists
(selected MLM positions, non-padding next tokens): over all positions the vocabulary projection
dominates the cost of a phase-1 step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossParts:
    """The phase loss and its parts; `lm` and `task` are None where not computed."""

    total: torch.Tensor
    lm: torch.Tensor | None
    task: torch.Tensor | None

    def as_floats(self) -> dict[str, float]:
        """Detached values for logging (NaN for a part that was not computed)."""
        nan = float("nan")
        return {
            "loss": self.total.item(),
            "lm_loss": self.lm.item() if self.lm is not None else nan,
            "task_loss": self.task.item() if self.task is not None else nan,
        }


def phase_loss(lm: torch.Tensor | None, task: torch.Tensor | None, alpha: float) -> LossParts:
    """The objective: L_pre = L_lm + alpha * L_task in phase 1, L = L_task in phase 2 (`lm` None).
    With alpha 0 (`task_trains`), phase 1 is the LM loss alone: L_task is logged, not trained."""
    if lm is None and task is None:
        raise ValueError("phase_loss needs at least one of lm and task")
    if lm is None:
        return LossParts(total=task, lm=None, task=task)
    if task is None or not task_trains(alpha):
        return LossParts(total=lm, lm=lm, task=task)
    return LossParts(total=lm + alpha * task, lm=lm, task=task)


def task_trains(alpha: float) -> bool:
    """The one alpha = 0 rule: with alpha 0 phase 1 is task-adaptive pre-training, the task loss
    is computed for the logs but trains nothing (the model computes it without a graph)."""
    return alpha != 0


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking recipe: select `probability` of the ordinary tokens, then 80% mask / 10%
    random / 10% kept.

    `special_tokens_mask` is 1 for special tokens and padding, which are never selected.
    Returns (masked input ids, labels) where labels are IGNORE_INDEX outside the selected positions.
    """
    device = input_ids.device
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    selected = (draw < probability) & ~special_tokens_mask.bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def masked_lm_loss(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy at the selected positions only (labels != IGNORE_INDEX)."""
    selected = labels != IGNORE_INDEX
    if not selected.any():
        # Keep the graph connected so DDP sees every parameter used.
        return hidden.sum() * 0.0
    logits = head(hidden[selected])
    return F.cross_entropy(logits.float(), labels[selected])


def causal_lm_loss(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Next-token cross-entropy; positions whose next token is padding are ignored."""
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if not valid.any():
        return hidden.sum() * 0.0
    logits = head(hidden[:, :-1][valid])
    return F.cross_entropy(logits.float(), targets[valid])


def alpha_at(step: int, steps: int, alpha: float, schedule: str) -> float:
    """The task-loss weight at phase-1 step `step` (1-based) of `steps`: constant, increasing
    from 0 to alpha (LM first), or decreasing from alpha to 0."""
    if schedule == "increase":
        return alpha * step / steps
    if schedule == "decrease":
        return alpha * (steps - step + 1) / steps
    return alpha
