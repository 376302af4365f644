"""Batches: dynamic padding, shuffled (and length-grouped) index batches sharded across DDP
ranks, and the masking collator that turns LM token ids into a masked-LM or next-token batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from sft_tune.core.losses import mask_tokens


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding); returns (input_ids,
    attention_mask)."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.as_tensor(
            np.asarray(seq, dtype=np.int64)
        )  # copies: views stay read-only
        mask[row, span] = 1
    return ids, mask


def batch_indices(
    size: int,
    batch_size: int,
    generator: torch.Generator | None,
    rank: int = 0,
    world_size: int = 1,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """One epoch of index batches, shuffled when a generator is given, sharded across DDP ranks.

    Every rank gets the same number of batches (the order is padded by wrapping around) so that
    no rank waits for a gradient all-reduce that never comes. With `lengths`, the shuffled order
    is sorted by length inside windows of 50 batches (like transformers' LengthGroupedSampler),
    so a batch holds examples of similar length and padding does not dominate its cost.
    """
    order = (
        torch.randperm(size, generator=generator).tolist()
        if generator is not None
        else list(range(size))
    )
    if lengths is not None and generator is not None:
        span = 50 * batch_size * world_size
        order = [
            i
            for start in range(0, size, span)
            for i in sorted(order[start : start + span], key=lambda j: -lengths[j])
        ]
    per_rank = -(-size // world_size)
    order = (order * (world_size + 1))[: per_rank * world_size] if world_size > 1 else order
    mine = order[rank::world_size]
    return [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]


def endless_batches(
    size: int,
    batch_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    lengths: Sequence[int] | None = None,
    what: str = "the data",
) -> Iterator[list[int]]:
    """Shuffled index batches forever (phase 1 draws a fixed number of steps, not epochs); an
    empty set is an error naming `what` is empty (drawing from it would never yield a batch)."""
    if size <= 0:
        raise ValueError(f"{what} is empty: there is nothing to draw batches from")
    while True:
        yield from batch_indices(size, batch_size, generator, rank, world_size, lengths)


class MaskingCollator:
    """Turns token-id lists into a padded LM batch (masked for MLM), with its own seeded RNG."""

    def __init__(self, tokenizer, objective: str, probability: float, seed: int) -> None:
        self.objective = objective
        self.probability = probability
        self.pad_id = tokenizer.pad_token_id
        self.side = tokenizer.padding_side
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad(sequences, self.pad_id, self.side)
        if self.objective != "masked":
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": None}
        special = torch.isin(input_ids, self.special_ids) | (attention_mask == 0)
        masked, labels = mask_tokens(
            input_ids, special, self.mask_id, self.vocab_size, self.probability, self.generator
        )
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
