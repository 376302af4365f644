import math

import pytest
import torch
import torch.nn.functional as F

from sft_tune.core.losses import (
    IGNORE_INDEX,
    causal_lm_loss,
    mask_tokens,
    masked_lm_loss,
    phase_loss,
)


def _masking_input(rows=400, cols=64, pad_from=48):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (rows, cols), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    ids[:, 0], ids[:, pad_from - 1] = 2, 3  # CLS ... SEP
    special[:, 0] = special[:, pad_from - 1] = True
    ids[:, pad_from:] = 0  # padding
    special[:, pad_from:] = True
    return ids, special


def test_masking_selects_fifteen_percent_with_80_10_10_split():
    ids, special = _masking_input()
    masked, labels = mask_tokens(
        ids,
        special,
        mask_token_id=4,
        vocab_size=1000,
        probability=0.15,
        generator=torch.Generator().manual_seed(1),
    )
    selected = labels != IGNORE_INDEX
    ordinary = (~special).sum().item()
    assert selected.sum().item() / ordinary == pytest.approx(0.15, abs=0.01)
    chosen = selected.sum().item()
    to_mask = (masked == 4) & selected
    unchanged = (masked == ids) & selected
    randomised = selected & ~to_mask & ~unchanged
    assert to_mask.sum().item() / chosen == pytest.approx(0.8, abs=0.02)
    # A random draw can hit the original token, so "unchanged" is a little over 10%.
    assert unchanged.sum().item() / chosen == pytest.approx(0.1, abs=0.02)
    assert randomised.sum().item() / chosen == pytest.approx(0.1, abs=0.02)
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])


def test_masking_never_selects_special_tokens_or_padding():
    ids, special = _masking_input()
    masked, labels = mask_tokens(
        ids, special, 4, 1000, probability=0.9, generator=torch.Generator().manual_seed(2)
    )
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])


def test_masked_lm_loss_projects_only_selected_positions():
    hidden = torch.randn(2, 5, 8)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3] = 4, 7
    head = torch.nn.Linear(8, 10)
    seen = []
    loss = masked_lm_loss(hidden, labels, lambda h: (seen.append(h.shape), head(h))[1])
    assert seen == [torch.Size([2, 8])]
    expected = F.cross_entropy(
        head(torch.stack([hidden[0, 1], hidden[1, 3]])), torch.tensor([4, 7])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_causal_lm_loss_matches_hand_computed_value_and_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(1, 4, 3)
    head = torch.nn.Linear(3, 5)
    ids = torch.tensor([[1, 2, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = causal_lm_loss(hidden, ids, mask, head)
    logits = head(hidden[0])
    by_hand = -(logits[0].log_softmax(-1)[2] + logits[1].log_softmax(-1)[3]) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_phase_loss_composes_lm_plus_alpha_task():
    lm, task = torch.tensor(2.0), torch.tensor(3.0)
    assert phase_loss(lm, task, 0.5).total.item() == 3.5
    assert phase_loss(lm, task, 0.0).total.item() == 2.0
    phase2 = phase_loss(None, task, 0.5)
    assert phase2.total.item() == 3.0 and phase2.lm is None
    assert math.isnan(phase2.as_floats()["lm_loss"])
    with pytest.raises(ValueError):
        phase_loss(None, None, 1.0)
