import json

from conftest import run_config_dict
from transformers import AutoModelForSequenceClassification

from sft_tune.core.export import RUN_FILE
from sft_tune.run import train
from sft_tune.runconfig import parse_config

METRICS = {"loss", "accuracy", "macro_f1"}


def _config(model, files, out, **overrides):
    overrides = {"phase1": {"steps": 0}, "phase2": {"epochs": 1}, **overrides}
    return parse_config(run_config_dict(model, files, out, **overrides))


def test_train_returns_validation_and_test_metrics_and_exports(tiny_bert, toy_files, tmp_path):
    reports = []
    config = _config(tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 2})
    metrics = train(config, report=lambda m, c: reports.append(m), progress=False)

    target = tmp_path / "out" / "model"
    assert set(metrics) == {"validation", "test", "model_dir"}
    assert metrics["model_dir"] == str(target)
    assert METRICS <= set(metrics["validation"]) and METRICS <= set(metrics["test"])
    assert 0 <= metrics["test"]["accuracy"] <= 1
    # The last report is the last phase-2 epoch, scored on the validation split.
    assert reports and reports[-1]["accuracy"] == metrics["validation"]["accuracy"]

    run = json.loads((target / RUN_FILE).read_text())
    assert run["metrics"] == {"validation": metrics["validation"], "test": metrics["test"]}
    assert run["labels"] == ["negative", "positive"]
    assert run["config"]["seed"] == 7 and run["config"]["phase1"]["steps"] == 2
    assert run["evaluations"][-1] == metrics["validation"]
    assert (target / "history.jsonl").read_text().strip()
    model = AutoModelForSequenceClassification.from_pretrained(target)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_model_dir_replaces_the_default_export_folder(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out")
    metrics = train(config, progress=False, model_dir=tmp_path / "best")
    assert metrics["model_dir"] == str(tmp_path / "best")
    assert (tmp_path / "best" / "config.json").is_file()
    assert not (tmp_path / "out" / "model").exists()


def test_extra_files_are_written_with_the_test_metrics(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out")
    metrics = train(config, progress=False, extra_files={"best.json": {"trial": "t1", "cv": 0.5}})
    best = json.loads((tmp_path / "out" / "model" / "best.json").read_text())
    assert best == {"trial": "t1", "cv": 0.5, "test": metrics["test"]}


def test_without_a_test_file_there_are_no_test_metrics(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out", data={"test": None})
    metrics = train(config, progress=False, extra_files={"best.json": {"trial": "t1"}})
    assert "test" not in metrics and METRICS <= set(metrics["validation"])
    folder = tmp_path / "out" / "model"
    assert "test" not in json.loads((folder / RUN_FILE).read_text())["metrics"]
    assert json.loads((folder / "best.json").read_text()) == {"trial": "t1", "test": None}


def test_without_a_validation_split_there_are_no_validation_metrics(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out", data={"validation_fraction": 0.0})
    metrics = train(config, progress=False)
    assert metrics["validation"] is None and METRICS <= set(metrics["test"])
