import csv
import io
import json
import shutil

import pytest
from conftest import make_toy_files, run_config_dict, write_csv

from sft_tune.core.export import RUN_FILE
from sft_tune.errors import InputError
from sft_tune.predict import predict, write_jsonl
from sft_tune.run import train
from sft_tune.runconfig import parse_config

LABELS = {"negative", "positive"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """One quickly trained and exported classification model, and the toy files."""
    folder = tmp_path_factory.mktemp("predict")
    files = make_toy_files(folder)
    raw = run_config_dict(
        tiny_bert, files, folder / "out", phase1={"steps": 0}, phase2={"epochs": 1}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_TUNE_CACHE", str(folder / "cache"))
        train(parse_config(raw), progress=False)
    return {"model": folder / "out" / "model", **files}


def _texts(path, column="text"):
    with open(path, newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def _check_record(record):
    assert record["label"] in LABELS
    assert set(record["probabilities"]) == LABELS
    assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)


def test_one_record_per_input_row_in_order(trained):
    records = list(predict(trained["model"], trained["test"]))
    assert [r["text"] for r in records] == _texts(trained["test"])
    for record in records:
        _check_record(record)


def test_the_batch_size_does_not_change_the_records(trained):
    whole = list(predict(trained["model"], trained["test"], batch_size=64))
    small = list(predict(trained["model"], trained["test"], batch_size=3))
    assert [r["text"] for r in small] == [r["text"] for r in whole]
    assert [r["label"] for r in small] == [r["label"] for r in whole]
    for a, b in zip(small, whole):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_a_column_override_reads_another_text_column(trained, tmp_path):
    rows = [{"id": str(i), "body": text} for i, text in enumerate(_texts(trained["test"])[:7])]
    path = write_csv(tmp_path / "input.csv", rows)
    records = list(predict(trained["model"], path, columns={"text_column": "body"}))
    assert [r["text"] for r in records] == [row["body"] for row in rows]
    # An override given as None (a CLI flag left out) keeps the run's column.
    with pytest.raises(InputError) as caught:
        predict(trained["model"], path, columns={"text_column": None})
    assert "column 'text'" in caught.value.problems[0].where


def test_a_missing_column_is_reported_before_the_first_record(trained, tmp_path):
    path = write_csv(tmp_path / "input.csv", [{"body": "the car was good"}])
    with pytest.raises(InputError) as caught:
        predict(trained["model"], path, columns={"text_column": "words"})  # raised on the call
    [problem] = caught.value.problems
    assert problem.where == f"{path} column 'words'" and problem.value == ["body"]


def test_a_missing_input_file_names_the_argument_before_the_model_loads(
    trained, tmp_path, monkeypatch
):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("the model loaded before --input was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    with pytest.raises(InputError) as caught:
        predict(trained["model"], tmp_path / "absent.csv")
    [problem] = caught.value.problems
    assert problem.where == "--input" and problem.value == str(tmp_path / "absent.csv")


def test_an_output_in_a_missing_folder_is_refused_before_anything_loads(trained, tmp_path, capsys):
    from sft_tune.cli import main

    out = tmp_path / "no" / "such" / "preds.jsonl"
    code = main(
        [
            "predict",
            "--model",
            str(trained["model"]),
            "--input",
            str(trained["test"]),
            "--output",
            str(out),
        ]
    )
    assert code == 2 and not out.parent.exists()
    assert "--output" in capsys.readouterr().err


def test_a_missing_model_folder_names_the_model_argument(trained, tmp_path):
    for folder in (tmp_path / "none", tmp_path):  # absent, and present without config.json
        with pytest.raises(InputError) as caught:
            predict(folder, trained["test"])
        [problem] = caught.value.problems
        assert problem.where == "--model" and problem.value == str(folder)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_names_the_batch_size_argument(trained, batch_size):
    with pytest.raises(InputError) as caught:
        predict(trained["model"], trained["test"], batch_size=batch_size)
    [problem] = caught.value.problems
    assert problem.where == "--batch-size" and problem.value == batch_size


def test_a_folder_without_run_json_takes_the_task_from_its_architecture(trained, tmp_path):
    copy = shutil.copytree(trained["model"], tmp_path / "model")
    (copy / RUN_FILE).unlink()
    records = list(predict(copy, trained["test"]))
    assert len(records) == len(_texts(trained["test"]))
    for record in records:
        _check_record(record)


def test_a_folder_of_no_known_task_is_refused(tiny_bert, trained):
    with pytest.raises(InputError) as caught:  # a masked-LM checkpoint, no run.json
        predict(tiny_bert, trained["test"])
    [problem] = caught.value.problems
    assert problem.where == f"{tiny_bert}/config.json" and problem.value == ["BertForMaskedLM"]


def test_write_jsonl_writes_one_line_per_record_and_counts_them():
    handle = io.StringIO()
    records = [{"text": "café", "label": "positive"}, {"text": "b", "label": "negative"}]
    assert write_jsonl(iter(records), handle) == 2
    lines = handle.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert "café" in lines[0]  # not escaped
    assert write_jsonl(iter([]), io.StringIO()) == 0
