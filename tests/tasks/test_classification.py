"""Sequence classification: its scores."""

from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import f1_score

from sft_tune.tasks.classification.model import ClassificationTask, EncodedLabelled


class _Constant(torch.nn.Module):
    """A classifier over 3 classes that always predicts class 0."""

    config = SimpleNamespace(num_labels=3)

    def forward(self, input_ids, attention_mask, labels):
        logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(len(labels), 3)
        return SimpleNamespace(loss=torch.tensor(0.5), logits=logits)


def test_macro_f1_averages_over_the_classes_present_in_truth_or_prediction():
    """Class 2 is in neither the truth nor the predictions (a small holdout fold): it does not
    count as an F1 of 0, as scikit-learn's default label set has it."""
    examples = EncodedLabelled([[5, 6], [5], [6, 6], [7]], [0, 0, 1, 1])
    scores = ClassificationTask().evaluate(
        _Constant(), examples, [[0, 1, 2, 3]], 0, "right", torch.device("cpu")
    )
    truth, predicted = [0, 0, 1, 1], [0, 0, 0, 0]
    assert scores["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, average="macro", zero_division=0)
    )
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert scores["accuracy"] == 0.5
