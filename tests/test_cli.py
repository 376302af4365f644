import json

import pytest
import yaml
from conftest import run_config_dict, write_csv

from sft_tune.cli import main


def test_bad_config_exits_2_without_traceback_and_starts_nothing(
    tmp_path, capsys, tiny_bert, toy_files
):
    raw = run_config_dict(tiny_bert, toy_files, tmp_path / "out", phase1={"alpha": -2, "stepz": 3})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    code = main(["train", "--config", str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "phase1.alpha: got -2" in err and "phase1.stepz" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_data_exits_2_and_writes_nothing(tmp_path, capsys, tiny_bert, toy_files):
    bad = write_csv(tmp_path / "bad.csv", [{"words": "a", "label": "x"}])
    raw = run_config_dict(tiny_bert, {**toy_files, "train": bad}, tmp_path / "out")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_then_predict(tmp_path, capsys, tiny_bert, toy_files):
    raw = run_config_dict(
        tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 2}, phase2={"epochs": 1}
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test ")]
    assert summary and "accuracy" in summary[0] and "macro_f1" in summary[0]
    out = tmp_path / "pred.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "out" / "model"),
                "--input",
                str(toy_files["test"]),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 40
    assert all(
        r["label"] in ("negative", "positive") and abs(sum(r["probabilities"].values()) - 1) < 1e-5
        for r in records
    )


def test_predict_with_a_missing_model_folder(tmp_path, capsys, toy_files):
    assert (
        main(["predict", "--model", str(tmp_path / "none"), "--input", str(toy_files["test"])]) == 2
    )
    assert "--model" in capsys.readouterr().err


def test_predict_reports_a_bad_input_before_writing_anything(
    tmp_path, capsys, tiny_bert, toy_files
):
    raw = run_config_dict(
        tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 0}, phase2={"epochs": 1}
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    out = tmp_path / "pred.jsonl"
    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "out" / "model"),
            "--input",
            str(toy_files["test"]),
            "--text-column",
            "body",
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "body" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("pred.jsonl*"))


def test_train_reports_every_missing_input_with_the_schema_problems_at_once(tmp_path, capsys):
    # A bad key, three missing data files, a model folder without config.json and an output_dir
    # that is a file: one run, one message, exit 2, nothing written.
    (tmp_path / "model").mkdir()
    (tmp_path / "taken").write_text("a file\n")
    raw = {
        "model": {"name_or_path": "./model"},
        "data": {
            "train": "data/train.csv",
            "test": "data/test.csv",
            "unlabelled": ["data/u.jsonl"],
        },
        "phase1": {"stepz": 3},
        "output_dir": "taken",
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    for where in (
        "phase1.stepz",
        "data.train (data/train.csv)",
        "data.test (data/test.csv)",
        "data.unlabelled[0] (data/u.jsonl)",
        "model.name_or_path: got './model'",
        "output_dir: got 'taken'",
    ):
        assert where in err, where
    assert "6 problems" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_missing_gguf_file_names_the_key_and_the_files_there(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "other.Q4.gguf").write_bytes(b"GGUF")
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    raw = {
        "model": {"name_or_path": "model", "gguf_file": "absent.gguf"},
        "data": {"train": "train.csv"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.gguf_file: got 'absent.gguf'" in err and "other.Q4.gguf" in err


def test_search_reports_missing_data_before_ray_starts(tmp_path, capsys, tiny_bert, toy_files):
    from conftest import write_space

    space = write_space(
        tmp_path, tiny_bert, {**toy_files, "train": tmp_path / "absent.csv"}, "nodata"
    )
    assert main(["search", "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert "base config data.train" in err and "absent.csv" in err
    assert not (tmp_path / "sweeps").exists()


def test_a_trial_bigger_than_this_machine_is_refused_before_data_or_ray(
    tmp_path, capsys, tiny_bert, toy_files, monkeypatch
):
    from conftest import write_space

    import sft_tune.core.prepare as prepare_module

    def never(*args, **kwargs):
        raise AssertionError("the data was prepared before the resources were checked")

    monkeypatch.setattr(prepare_module, "prepare_data", never)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resources = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 64}
    space = write_space(tmp_path, tiny_bert, toy_files, "huge", resources=resources)
    assert main(["search", "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert "search.resources" in err and "64 GPU" in err and "this machine has" in err
    import ray

    assert not ray.is_initialized() and not (tmp_path / "sweeps" / "huge").exists()


@pytest.mark.parametrize(
    "model, task, objective, where",
    [
        ("tiny_gpt2", "classification", "masked", "model.lm_objective"),
        ("tiny_bert", "generation", "auto", "model.task"),
    ],
)
def test_what_config_json_rules_out_is_refused_before_weights_load(
    request, tmp_path, capsys, toy_files, model, task, objective, where
):
    raw = run_config_dict(request.getfixturevalue(model), toy_files, tmp_path / "out")
    raw["model"].update(task=task, lm_objective=objective)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{where}: got '{task if where == 'model.task' else objective}'" in err
    assert "config.json" in err and not (tmp_path / "out").exists()


def test_version_and_the_help_of_predict_and_submit(capsys):
    from sft_tune import __version__
    from sft_tune.arguments import FORWARDED_ENV

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sft-tune {__version__}"
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in FORWARDED_ENV), text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task, record in (
        ("classification", '"probabilities"'),
        ("ner", '"entities"'),
        ("qa", '"answer"'),
        ("generation", '"response"'),
    ):
        assert f"{task}: {{" in text and record in text, task
