import copy
import json

import pytest
import torch
from conftest import run_config_dict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sft_tune.core import data as data_module
from sft_tune.core.batches import endless_batches
from sft_tune.core.data import text_hashes
from sft_tune.core.loop import (
    FitData,
    Runtime,
    fit,
    run_head_warmup,
    run_phase1,
    run_phase2,
    seed_everything,
)
from sft_tune.core.model import load_model, load_tokenizer
from sft_tune.core.prepare import prepare_data
from sft_tune.errors import InputError
from sft_tune.run import train
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task


def _config(model, files, out, **overrides):
    return parse_config(run_config_dict(model, files, out, **overrides))


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_gpt2"])
def test_both_phases_train_report_and_export(model_fixture, request, toy_files, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    reports = []
    config = _config(
        model_dir, toy_files, tmp_path / "out", phase1={"steps": 40}, phase2={"epochs": 12}
    )
    metrics = train(config, report=lambda m, c: reports.append(m), progress=False)

    # Ray receives one report after phase 1 and one per phase-2 epoch, with the metric keys.
    assert [(r["phase"], r["epoch"]) for r in reports] == [(1, 0)] + [(2, e) for e in range(1, 13)]
    assert {"loss", "accuracy", "macro_f1"} <= set(reports[-1])

    exported = tmp_path / "out" / "model"
    history = [json.loads(line) for line in (exported / "history.jsonl").read_text().splitlines()]
    phase1 = [h for h in history if h["phase"] == 1]
    phase2 = [h for h in history if h["phase"] == 2]
    assert len(phase1) == 40 and all(
        {"loss", "lm_loss", "task_loss", "lr"} <= set(h) for h in history
    )
    assert all(
        torch.isfinite(torch.tensor([h["loss"], h["lm_loss"], h["task_loss"]])).all()
        for h in phase1
    )
    assert _mean([h["lm_loss"] for h in phase1[-10:]]) < _mean([h["lm_loss"] for h in phase1[:10]])
    assert _mean([h["task_loss"] for h in phase2[-10:]]) < _mean(
        [h["task_loss"] for h in phase2[:10]]
    )
    for h in phase1:
        assert h["loss"] == pytest.approx(
            h["lm_loss"] + config.phase1.alpha * h["task_loss"], rel=1e-5
        )
    assert metrics["test"]["accuracy"] >= 0.9  # the toy task is learnable

    run = json.loads((exported / "run.json").read_text())
    assert run["labels"] == ["negative", "positive"] and run["metrics"]["test"] == metrics["test"]
    assert run["config"]["phase1"]["alpha"] == 1.0 and "torch" in run["versions"]
    assert not [
        p for p in exported.parent.iterdir() if p.name.startswith(".")
    ]  # no temp folders left


def test_exported_model_loads_with_plain_transformers_and_reproduces_logits(
    tiny_bert, toy_files, tmp_path
):
    config = _config(
        tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 4}, phase2={"epochs": 1}
    )
    train(config, progress=False)
    folder = tmp_path / "out" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    batch = tokenizer(["the car was good", "awful road"], padding=True, return_tensors="pt")
    with torch.no_grad():
        first, second = (
            model(**batch).logits,
            AutoModelForSequenceClassification.from_pretrained(folder).eval()(**batch).logits,
        )
    torch.testing.assert_close(first, second)
    # The logits of the trained in-memory model are what the folder holds: retrain with the same
    # seed.
    from sft_tune.core.loop import seed_everything
    from sft_tune.core.model import load_model, load_tokenizer
    from sft_tune.tasks import get_task

    seed_everything(0)
    fresh = load_model(
        config.model,
        get_task("classification"),
        ["negative", "positive"],
        load_tokenizer(config.model),
    ).task_model.eval()
    with torch.no_grad():
        assert not torch.allclose(
            fresh(**batch).logits, first
        )  # training changed the weights that were saved


def test_same_seed_gives_the_same_result(tiny_bert, toy_files, tmp_path):
    results = []
    for run in ("a", "b"):
        config = _config(
            tiny_bert, toy_files, tmp_path / run, phase1={"steps": 8}, phase2={"epochs": 2}
        )
        metrics = train(config, progress=False)
        history = (tmp_path / run / "model" / "history.jsonl").read_text()
        weights = AutoModelForSequenceClassification.from_pretrained(
            tmp_path / run / "model"
        ).state_dict()
        results.append((metrics["test"], history, weights))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    for key, value in results[0][2].items():
        assert torch.equal(value, results[1][2][key]), key
    other = train(
        _config(
            tiny_bert, toy_files, tmp_path / "c", phase1={"steps": 8}, phase2={"epochs": 2}, seed=8
        ),
        progress=False,
    )
    assert (tmp_path / "c" / "model" / "history.jsonl").read_text() != results[0][1] or other[
        "test"
    ] != results[0][0]


def test_phase_two_never_computes_an_lm_loss(tiny_bert, toy_files, tmp_path):
    from sft_tune.core.files import read_data
    from sft_tune.core.model import load_model, load_tokenizer
    from sft_tune.tasks import get_task

    config = _config(tiny_bert, toy_files, tmp_path / "out", phase2={"epochs": 1})
    task = get_task("classification")
    raw = read_data(config, task)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, task, raw.label_names, tokenizer)
    calls = []
    model.lm_head.register_forward_hook(lambda *args: calls.append("lm_head"))
    original = model.lm_loss
    model.lm_loss = lambda *a, **k: calls.append("lm_loss") or original(*a, **k)
    encoded = task.encode(raw.train, tokenizer, raw.label_names, config.data)
    history = run_phase2(
        model,
        task,
        FitData(encoded, lm_ids=[]),
        config,
        tokenizer,
        Runtime(progress=False),
        on_epoch=lambda e: None,
    )
    assert history and calls == []
    assert all(h["lm_loss"] != h["lm_loss"] for h in history)  # NaN: not computed


def test_second_run_reuses_the_tokenized_data(tiny_bert, toy_files, tmp_path):
    config = _config(
        tiny_bert, toy_files, tmp_path / "a", phase1={"steps": 2}, phase2={"epochs": 1}
    )
    before = data_module.TOKENIZATION_PASSES
    train(config, progress=False)
    first = data_module.TOKENIZATION_PASSES - before
    assert first == 3  # labelled train, unlabelled pool, test
    train(config.model_copy(update={"output_dir": tmp_path / "b"}), progress=False)
    assert data_module.TOKENIZATION_PASSES - before == first


def test_lm_data_never_contains_validation_texts(tiny_bert, toy_files, tmp_path):
    from sft_tune.core.prepare import lm_selection

    # The pool holds a copy of the held-out text v0: it is dropped; the training texts t1, t2 join.
    keep, chosen = lm_selection(
        text_hashes(["u1", "v0"]),
        text_hashes(["v0", "t1", "t2"]),
        [1, 2],
        [0],
        include_labelled=True,
    )
    assert keep.tolist() == [0] and chosen == [1, 2]
    keep, chosen = lm_selection(
        text_hashes(["u1"]), text_hashes(["a", "b"]), [0], [1], include_labelled=False
    )
    assert keep.tolist() == [0] and chosen == []


def test_lm_data_holds_no_held_out_text_written_another_way():
    """NER joins words with spaces, users write sentences naturally, a pool may hold full-width
    or upper-case copies: compared in normalized form (NFKC, case-folded, no whitespace)."""
    from sft_tune.core.prepare import HeldForms, lm_selection

    pool = ["New York.", "ＮＥＷ  ＹＯＲＫ .", "new yorker", "Paris", "a review: good car"]
    labelled = ["New York .", "Paris is big", "a review: good car\npositive"]
    keep, chosen = lm_selection(text_hashes(pool), text_hashes(labelled), [1], [0], True)
    assert [pool[i] for i in keep] == ["new yorker", "Paris", "a review: good car"]
    assert chosen == [1]
    # A generation example's prompt alone is one of its forms: held out, the pool loses it too.
    forms = HeldForms.of_examples(
        [[t] for t in labelled[:2]] + [["a review: good car", labelled[2]]]
    )
    keep, _ = lm_selection(text_hashes(pool), text_hashes(labelled), [0, 1], [2], False, forms)
    assert [pool[i] for i in keep] == pool[:4]


def test_test_texts_never_reach_the_lm_data_and_run_json_counts_what_was_left_out(
    tiny_bert, toy_files, tmp_path
):
    """The pool holds a copy of a test text (written another way), of a validation text and of
    a training text: the test copy is left out of every split, the validation copy out of the
    run's split; the training copy stays. run.json says how many were left out."""
    import csv

    from conftest import write_jsonl

    test_text = next(csv.DictReader(open(toy_files["test"])))["text"]
    config = _config(tiny_bert, toy_files, tmp_path / "out", phase2={"epochs": 1})
    task = get_task("classification")
    split = prepare_data(config, task)
    train_part, held = split.splits[0]
    rows = list(csv.DictReader(open(toy_files["train"])))
    validation_text, training_text = rows[held[0]]["text"], rows[train_part[0]]["text"]
    pool = [json.loads(line)["text"] for line in toy_files["unlabelled"].read_text().splitlines()]
    pool += [test_text.upper() + "  ", validation_text.replace(" ", "  "), training_text]
    write_jsonl(toy_files["unlabelled"], [{"text": t} for t in pool])

    prepared = prepare_data(config, task, folds=3)
    assert prepared.lm_counts["unlabelled_texts"] == len(pool)
    assert prepared.lm_counts["dropped_as_copies_of_test_texts"] >= 1
    test_ids = prepared_ids(config, task, test_text)
    for fold in range(3):
        lm = prepared.lm_ids(fold, include_labelled=False)
        assert not any(list(lm[i]) == test_ids for i in range(len(lm)))

    train(config, progress=False)
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert run["lm_data"]["unlabelled_texts"] == len(pool)
    assert run["lm_data"]["dropped_as_copies_of_test_texts"] >= 1
    assert run["lm_data"]["dropped_as_copies_of_validation_texts"] >= 1


def prepared_ids(config, task, text):
    return load_tokenizer(config.model, task)(text, truncation=True, max_length=32)["input_ids"]


def test_a_plain_run_builds_no_lm_head_and_reads_no_lm_text(
    tiny_bert, toy_files, tmp_path, monkeypatch, caplog
):
    # phase1.steps 0: the unlabelled file is never opened and no LM head is built or reported.
    import sft_tune.core.files as files_module
    import sft_tune.core.model as model_module

    def never(*args, **kwargs):
        raise AssertionError("a plain run read the unlabelled files")

    monkeypatch.setattr(files_module, "read_unlabelled", never)
    built = []
    real_load = model_module.load_model
    monkeypatch.setattr(
        "sft_tune.run.load_model", lambda *a, **k: built.append(real_load(*a, **k)) or built[-1]
    )
    caplog.set_level("INFO")
    metrics = train(
        _config(tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 0}, phase2={"epochs": 1}),
        progress=False,
    )
    assert built[0].lm_head is None and "LM head" not in caplog.text
    assert "0 LM texts" in caplog.text and metrics["test"]["macro_f1"] >= 0
    assert not any(p.startswith("lm_head") for p, _ in built[0].named_parameters())
    # With phase 1 the same config reads them (and fails here, on purpose).
    with pytest.raises(AssertionError, match="read the unlabelled"):
        train(
            _config(
                tiny_bert, toy_files, tmp_path / "out2", phase1={"steps": 1}, phase2={"epochs": 1}
            ),
            progress=False,
        )


def test_phase1_starts_with_no_gradient_left_by_the_lm_head_warmup(tiny_bert, toy_files, tmp_path):
    """The MLM head's decoder is tied to the word embeddings: the warm-up trains the head's own
    weights only and must leave no gradient anywhere, so phase 1's first update equals the one
    computed from a copy of the warmed model with clean gradients."""
    config = _config(
        tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 1, "head_warmup_steps": 3}
    )
    task = get_task("classification")
    prepared = prepare_data(config, task)
    data = prepared.fit_data(0, config, evaluate_held_out=True)
    tokenizer = load_tokenizer(config.model, task)
    seed_everything(0)
    model = load_model(config.model, task, prepared.label_names, tokenizer)
    rt = Runtime(progress=False)
    embeddings = model.task_model.get_input_embeddings().weight
    assert (
        model.lm_head.predictions.decoder.weight is embeddings
    )  # the tie that leaked the gradient
    warmed = {k: v.clone() for k, v in model.state_dict().items()}
    run_head_warmup(model, data, config, tokenizer, rt)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(embeddings, warmed["task_model.bert.embeddings.word_embeddings.weight"])
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again

    clean = copy.deepcopy(model)
    for p in clean.parameters():
        p.grad = None
    for each in (model, clean):
        torch.manual_seed(1)
        run_phase1(each, task, data, config, tokenizer, rt)
    for (name, trained), reference in zip(model.named_parameters(), clean.parameters()):
        torch.testing.assert_close(trained, reference, msg=name)


@pytest.mark.timeout(120)  # today's failure mode was an endless loop
def test_phase1_with_no_lm_text_stops_naming_what_is_empty(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 2})
    task = get_task("classification")
    prepared = prepare_data(config, task)
    data = prepared.fit_data(0, config, evaluate_held_out=True)
    empty = FitData(data.train, [], data.eval)
    tokenizer = load_tokenizer(config.model, task)
    model = load_model(config.model, task, prepared.label_names, tokenizer)
    with pytest.raises(InputError) as caught:
        fit(model, task, empty, config, tokenizer, Runtime(progress=False))
    assert "LM data is empty" in str(caught.value) and "phase1.steps" in str(caught.value)
    with pytest.raises(ValueError, match="phase 1's LM data is empty"):
        next(endless_batches(0, 8, torch.Generator(), what="phase 1's LM data"))
