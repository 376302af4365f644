"""Best-model selection on a real sweep (marked `ray`)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sft_tune.config import RunConfig
from sft_tune.core.batches import batch_indices
from sft_tune.core.files import read_data
from sft_tune.select import select_best
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import best_trial
from sft_tune.sweep.records import Trial, read_trials
from sft_tune.tasks import get_task


def test_best_json_holds_params_cv_test_sweep_and_versions(finished_sweep):
    selected = finished_sweep["selected"]
    folder = finished_sweep["result"].sweep_dir / "best_model"
    best = json.loads((folder / "best.json").read_text())
    trials = finished_sweep["result"].trials
    expected = best_trial(SweepFolder(finished_sweep["result"].sweep_dir).load_sweep(), trials)
    assert best["trial_id"] == selected["trial_id"] == expected["trial_id"]
    assert best["cv_mean"] == max(t.cv_mean for t in trials) == expected["cv_mean"]
    assert best["params"] == expected["params"]
    assert best["sweep_id"] == "basic" and {"torch", "transformers", "ray", "optuna"} <= set(
        best["versions"]
    )
    assert set(best["test"]) >= {"accuracy", "macro_f1"}
    assert not [
        p for p in folder.parent.iterdir() if p.name.startswith(".best_model")
    ]  # no temp folder left


def test_exported_best_model_loads_with_plain_transformers_and_reproduces_the_test_metric(
    finished_sweep,
):
    folder = finished_sweep["result"].sweep_dir / "best_model"
    best = json.loads((folder / "best.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = RunConfig.model_validate(json.loads((folder / "run.json").read_text())["config"])
    task = get_task("classification")
    raw = read_data(config, task)
    test = task.encode(raw.test, tokenizer, raw.label_names, config.data)
    metrics = task.evaluate(
        model,
        test,
        batch_indices(len(test), 64, None),
        tokenizer.pad_token_id,
        tokenizer.padding_side,
        torch.device("cpu"),
    )
    assert metrics["accuracy"] == pytest.approx(best["test"]["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(best["test"]["macro_f1"])
    # Retrained on ALL labelled data: the training file is the whole labelled set.
    assert config.data.validation_fraction == 0.0


def test_select_rerun_gives_the_same_choice(finished_sweep):
    sweep_dir = finished_sweep["result"].sweep_dir
    first = finished_sweep["selected"]
    trials = read_trials(SweepFolder(sweep_dir))
    assert best_trial(SweepFolder(sweep_dir).load_sweep(), trials)["trial_id"] == first["trial_id"]
    again = select_best(sweep_dir, use_wandb=False, progress=False)
    assert again["trial_id"] == first["trial_id"] and again["params"] == first["params"]
    assert again["test"] == pytest.approx(first["test"])


def test_ties_go_to_the_lower_std_then_the_lower_trial_id(finished_sweep):
    sweep = SweepFolder(finished_sweep["result"].sweep_dir).load_sweep()
    trials = [
        Trial.from_row(
            {
                "trial_id": "b",
                "status": "COMPLETE",
                "cv_mean": 0.8,
                "cv_std": 0.01,
                "fold_scores": [],
                "param:phase1.alpha": 1.0,
            }
        ),
        Trial.from_row(
            {
                "trial_id": "a",
                "status": "COMPLETE",
                "cv_mean": 0.8,
                "cv_std": 0.05,
                "fold_scores": [],
                "param:phase1.alpha": 2.0,
            }
        ),
        Trial.from_row(
            {
                "trial_id": "c",
                "status": "STOPPED",
                "cv_mean": 0.9,
                "cv_std": 0.0,
                "fold_scores": [],
                "param:phase1.alpha": 3.0,
            }
        ),
        Trial.from_row(
            {
                "trial_id": "d",
                "status": "COMPLETE",
                "cv_mean": 0.8,
                "cv_std": 0.01,
                "fold_scores": [],
                "param:phase1.alpha": 4.0,
            }
        ),
    ]
    assert best_trial(sweep, trials)["trial_id"] == "b"


def test_select_on_a_folder_that_is_not_a_sweep(tmp_path):
    from sft_tune.errors import InputError

    with pytest.raises(InputError):
        select_best(tmp_path)


def test_select_without_a_test_file_says_so(finished_sweep, tmp_path, capsys):
    """The same sweep moved to another folder, its base config without a test file: select
    retrains, exports, and says there was no test file (it printed `test ` and nothing)."""
    import shutil

    from sft_tune.cli import main

    moved = tmp_path / "basic"
    shutil.copytree(
        finished_sweep["result"].sweep_dir, moved, ignore=shutil.ignore_patterns("best_model")
    )
    snapshot = json.loads((moved / "sweep.json").read_text())
    snapshot["base"]["data"]["test"] = None
    (moved / "sweep.json").write_text(json.dumps(snapshot))
    assert main(["select", str(moved), "--no-wandb", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    line = next(line for line in printed if line.startswith("best trial "))
    assert line.endswith("no test file (data.test is not set), so no test metrics")
    assert json.loads((moved / "best_model" / "best.json").read_text())["test"] is None
