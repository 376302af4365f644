"""Options that let two-phase SFT win where it can: LM-head warm-up, head learning-rate scale,
alpha schedules, early stopping, inner validation splits."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config_dict

from sft_tune.core.data import TokenArray, text_hashes
from sft_tune.core.loop import FitData, Runtime, fit, make_optimizer, run_head_warmup
from sft_tune.core.losses import alpha_at
from sft_tune.core.model import load_model, load_tokenizer
from sft_tune.core.prepare import PreparedData
from sft_tune.errors import InputError
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task

LABELS = ["negative", "positive"]


def setup(tiny_bert, toy_files, tmp_path, **overrides):
    config = parse_config(run_config_dict(tiny_bert, toy_files, tmp_path / "out", **overrides))
    task = get_task("classification")
    tokenizer = load_tokenizer(config.model, task)
    raw = task.read(config.data.train, config.data, "train")
    examples = task.encode(raw, tokenizer, LABELS, config.data)
    lm = [ids for ids in examples.input_ids]
    torch.manual_seed(0)
    model = load_model(config.model, task, LABELS, tokenizer)
    return config, task, tokenizer, examples, lm, model


def test_head_warmup_trains_only_the_lm_heads_own_weights(tiny_bert, toy_files, tmp_path):
    config, task, tokenizer, examples, lm, model = setup(
        tiny_bert,
        toy_files,
        tmp_path,
        phase1={"head_warmup_steps": 5, "head_warmup_learning_rate": 1e-2},
    )
    shared = {id(p) for p in model.task_model.parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    history = run_head_warmup(
        model, FitData(examples, lm), config, tokenizer, Runtime(progress=False)
    )
    assert len(history) == 5 and all(h["phase"] == 0 for h in history)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    own_head = {
        name
        for name, p in model.named_parameters()
        if name.startswith("lm_head.") and id(p) not in shared
    }
    assert (
        changed == own_head and own_head
    )  # the transform and bias move; backbone, tied decoder, classifier do not


def test_head_lr_scale_gives_heads_their_own_learning_rate(tiny_bert, toy_files, tmp_path):
    config, task, tokenizer, examples, lm, model = setup(
        tiny_bert, toy_files, tmp_path, optimizer={"head_lr_scale": 10.0}
    )
    optimizer, _ = make_optimizer(model, 1e-3, config.optimizer, 10)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["initial_lr"] == pytest.approx(1e-3 if in_backbone.pop() else 1e-2)
    classifier = model.task_model.classifier.weight
    assert any(
        classifier is p
        for g in optimizer.param_groups
        if g["initial_lr"] == pytest.approx(1e-2)
        for p in g["params"]
    )


def test_alpha_schedules():
    assert [alpha_at(s, 4, 2.0, "constant") for s in (1, 2, 3, 4)] == [2.0] * 4
    assert [alpha_at(s, 4, 2.0, "increase") for s in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 2.0]
    assert [alpha_at(s, 4, 2.0, "decrease") for s in (1, 2, 3, 4)] == [2.0, 1.5, 1.0, 0.5]


def test_alpha_schedule_is_applied_and_logged(tiny_bert, toy_files, tmp_path):
    config, task, tokenizer, examples, lm, model = setup(
        tiny_bert,
        toy_files,
        tmp_path,
        phase1={"steps": 4, "alpha": 2.0, "alpha_schedule": "increase"},
        phase2={"epochs": 0},
    )
    result = fit(model, task, FitData(examples, lm), config, tokenizer, Runtime(progress=False))
    phase1 = [h for h in result.history if h["phase"] == 1]
    assert [h["alpha"] for h in phase1] == [0.5, 1.0, 1.5, 2.0]
    for h in phase1:  # the logged total is the composed objective with that step's alpha
        assert h["loss"] == pytest.approx(h["lm_loss"] + h["alpha"] * h["task_loss"], rel=1e-5)


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(
    tiny_bert, toy_files, tmp_path, monkeypatch
):
    config, task, tokenizer, examples, lm, model = setup(
        tiny_bert,
        toy_files,
        tmp_path,
        phase1={"steps": 0},
        phase2={"epochs": 10, "early_stopping_patience": 2},
    )
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    saved = {}

    def scripted(model_, examples_, batches, pad_id, side, device):
        score = next(scores)
        saved[len(saved) + 1] = {k: v.detach().clone() for k, v in model_.state_dict().items()}
        return {"macro_f1": score, "accuracy": score, "loss": 1 - score}

    monkeypatch.setattr(task, "evaluate", scripted)
    result = fit(
        model,
        task,
        FitData(examples.subset(range(40)), lm, examples.subset(range(40, 60))),
        config,
        tokenizer,
        Runtime(progress=False),
    )
    assert [e["epoch"] for e in result.evaluations] == [
        1,
        2,
        3,
        4,
    ]  # epoch 2 best, no gain in 3 and 4
    assert max(h["step"] for h in result.history) < 10 * 5
    final = model.task_model.state_dict()
    assert all(torch.equal(final[k], saved[2][k]) for k in final)


def test_early_stopping_needs_a_validation_split(tiny_bert, toy_files, tmp_path):
    with pytest.raises(InputError) as err:
        parse_config(
            run_config_dict(
                tiny_bert,
                toy_files,
                tmp_path,
                phase2={"early_stopping_patience": 2},
                data={
                    **run_config_dict(tiny_bert, toy_files, tmp_path)["data"],
                    "validation_fraction": 0.0,
                },
            )
        )
    assert "phase2.early_stopping_patience" in str(err.value) and "validation_fraction" in str(
        err.value
    )


def test_inner_validation_split_of_a_fold_never_touches_the_held_out_fold():
    strata = ["a", "b"] * 20
    texts = [f"text {i}" for i in range(40)]
    folds = [(list(range(0, 30)), list(range(30, 40)))]
    data = PreparedData(
        None,
        text_hashes(texts),
        TokenArray.from_lists([[i] for i in range(40)]),
        TokenArray.from_lists([]),
        text_hashes([]),
        LABELS,
        folds,
        0,
        strata,
        None,
    )
    train, inner = data.inner_split(0, 0.2, 0, "train.csv")
    assert sorted(train + inner) == list(range(30)) and not set(inner) & set(train)
    lm = [
        int(seq[0])
        for seq in (data.lm_ids(0, True, inner)[i] for i in range(len(data.lm_ids(0, True, inner))))
    ]
    assert sorted(lm) == sorted(train)
