import json
import math
from pathlib import Path

import pytest
from conftest import run_config_dict

from sft_tune.core.loop import Runtime
from sft_tune.core.prepare import prepare_data
from sft_tune.runconfig import parse_config
from sft_tune.sweep.folder import FOLDS_FILE, HISTORY_FILE, REPLAYED
from sft_tune.sweep.folds import (
    ProcessCache,
    TrialPlace,
    _flat,
    _loss_summary,
    cross_validate,
    fold_summary,
    run_folds,
)
from sft_tune.tasks import get_task

METRIC = "accuracy"


def _config(model, files, out, **overrides):
    overrides = {"phase1": {"steps": 1}, "phase2": {"epochs": 1}, **overrides}
    return parse_config(run_config_dict(model, files, out, **overrides))


@pytest.fixture
def setup(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out")
    return config, prepare_data(config, get_task(config.model.task), folds=2)


def _rt():
    return Runtime(progress=False)


def test_cross_validate_scores_every_fold_and_reports_after_each(setup):
    config, data = setup
    calls = []

    def after_fold(fold, scores, summary, history):
        calls.append((fold, list(scores), summary, history))

    scores = cross_validate(
        config, data, METRIC, _rt(), after_fold=after_fold, cache=ProcessCache()
    )
    assert len(scores) == len(data.splits) == 2 and all(0 <= s <= 1 for s in scores)
    assert [(fold, seen) for fold, seen, _, _ in calls] == [(0, scores[:1]), (1, scores)]
    for fold, _, summary, history in calls:
        assert summary["fold_metrics"][METRIC] == scores[fold]
        assert {"phase2_task_loss", "phase2_loss"} <= set(summary)
        assert history and {h["phase"] for h in history} == {1, 2}


def test_cross_validate_resumes_from_a_fold_with_the_scores_so_far(setup):
    config, data = setup
    full = cross_validate(config, data, METRIC, _rt(), cache=ProcessCache())
    calls, earlier = [], [0.25]
    resumed = cross_validate(
        config,
        data,
        METRIC,
        _rt(),
        start=1,
        scores=earlier,
        after_fold=lambda fold, scores, *_: calls.append((fold, list(scores))),
        cache=ProcessCache(),
    )
    assert resumed == [0.25, full[1]]  # fold 1 scores the same, run alone or after fold 0
    assert calls == [(1, [0.25, full[1]])]
    assert earlier == [0.25]  # the caller's list is left alone

    done = cross_validate(config, data, METRIC, _rt(), start=2, scores=full, cache=ProcessCache())
    assert done == full


def test_the_cache_loads_the_model_once_for_configs_that_differ_only_in_training(setup, tiny_gpt2):
    config, data = setup
    cache = ProcessCache()
    first = cross_validate(config, data, METRIC, _rt(), cache=cache)
    other = config.model_copy(
        update={"phase2": config.phase2.model_copy(update={"learning_rate": 3e-4})}
    )
    cross_validate(other, data, METRIC, _rt(), cache=cache)
    assert cache.model_loads == 1
    # The shared model is reset from its pristine weights per fold: the trained weights of the
    # configs before never leak into the next one.
    assert cross_validate(config, data, METRIC, _rt(), cache=cache) == first
    assert cache.model_loads == 1

    task = get_task("classification")
    assert cache.tokenizer(config, task) is cache.tokenizer(other, task)
    gpt2 = config.model_copy(
        update={"model": config.model.model_copy(update={"name_or_path": str(tiny_gpt2)})}
    )
    tokenizer = cache.tokenizer(gpt2, task)
    assert tokenizer is not cache.tokenizer(config, task)
    model, pristine = cache.model(gpt2, task, data.label_names, tokenizer, True)
    assert cache.model_loads == 2 and set(pristine) == set(model.state_dict())
    cache.model(gpt2, task, data.label_names, tokenizer, True)
    assert cache.model_loads == 2
    # The seed draws the new heads and the labels shape them: either one loads again.
    cache.model(gpt2.model_copy(update={"seed": 8}), task, data.label_names, tokenizer, True)
    assert cache.model_loads == 3
    cache.model(gpt2.model_copy(update={"seed": 8}), task, ["a", "b", "c"], tokenizer, True)
    assert cache.model_loads == 4
    cache.model(gpt2.model_copy(update={"seed": 8}), task, ["a", "b", "c"], tokenizer, False)
    assert cache.model_loads == 5  # with or without the LM head: another model


def test_a_run_without_phase_one_reuses_a_cached_model_and_phase_one_still_gets_its_lm_loss(
    setup,
):
    config, data = setup
    plain = config.model_copy(update={"phase1": config.phase1.model_copy(update={"steps": 0})})
    cache = ProcessCache()
    cross_validate(config, data, METRIC, _rt(), cache=cache)
    scores = cross_validate(plain, data, METRIC, _rt(), cache=cache)
    assert cache.model_loads == 1 and len(scores) == 2

    # The other way round: a phase-1 config after a plain one trains its LM loss.
    cache, histories = ProcessCache(), []
    cross_validate(plain, data, METRIC, _rt(), cache=cache)
    cross_validate(
        config, data, METRIC, _rt(), after_fold=lambda *args: histories.append(args[3]), cache=cache
    )
    phase1 = [h for history in histories for h in history if h["phase"] == 1]
    assert len(phase1) == 2 and all(math.isfinite(h["lm_loss"]) for h in phase1)
    assert cache.model_loads == 1  # the sweep's data has LM texts: one model, with its LM head


def test_a_sweep_without_phase_one_builds_no_lm_head(tiny_bert, toy_files, tmp_path):
    config = _config(tiny_bert, toy_files, tmp_path / "out", phase1={"steps": 0})
    data = prepare_data(config, get_task(config.model.task), folds=2)
    assert not data.lm and len(data.lm_ids(0, True)) == 0
    cache = ProcessCache()
    assert len(cross_validate(config, data, METRIC, _rt(), cache=cache)) == 2
    assert cache._model[1].lm_head is None


def test_the_fault_hook_fails_the_first_fold_once(setup, tmp_path):
    from sft_tune.sweep.faults import TrialFaults

    config, data = setup
    faults = TrialFaults(fault_file=str(tmp_path / "fault"))
    with pytest.raises(RuntimeError, match="injected fault"):
        cross_validate(config, data, METRIC, _rt(), faults=faults, cache=ProcessCache())
    assert (tmp_path / "fault").exists()
    scores = cross_validate(config, data, METRIC, _rt(), faults=faults, cache=ProcessCache())
    assert len(scores) == 2


def test_fold_summary_gives_the_running_mean_and_std():
    assert fold_summary([0.5]) == {
        "folds_done": 1,
        "cv_mean": 0.5,
        "cv_std": 0.0,
        "fold_scores": "[0.5]",
    }
    summary = fold_summary([0.6, 0.8, 0.7])
    assert summary["folds_done"] == 3
    assert summary["cv_mean"] == pytest.approx(0.7)
    assert summary["cv_std"] == pytest.approx(math.sqrt(0.02 / 3))  # population std
    assert json.loads(summary["fold_scores"]) == [0.6, 0.8, 0.7]


def test_loss_summary_takes_each_phases_last_step_and_skips_what_was_not_computed():
    nan = float("nan")
    history = [
        {"phase": 1, "lm_loss": 3.0, "task_loss": 2.0, "loss": 5.0},
        {"phase": 1, "lm_loss": 2.5, "task_loss": 1.5, "loss": 4.0},
        {"phase": 2, "lm_loss": nan, "task_loss": 0.5, "loss": 0.5},
    ]
    assert _loss_summary(history) == {
        "phase1_lm_loss": 2.5,
        "phase1_task_loss": 1.5,
        "phase1_loss": 4.0,
        "phase2_task_loss": 0.5,
        "phase2_loss": 0.5,
    }
    assert _loss_summary(history[2:]) == {"phase2_task_loss": 0.5, "phase2_loss": 0.5}


def test_flat_spreads_nested_numbers_into_slash_keys():
    summary = {"fold_metrics": {"accuracy": 0.75, "report": "text"}, "phase2_loss": 0.5}
    assert _flat(summary) == {"fold_metrics/accuracy": 0.75, "phase2_loss": 0.5}


class _Ref:
    def hex(self):
        return "shared-data"


class _Shared:
    """Stands for `SharedData`: every config's encoding is the one object ref."""

    def ref(self, config, task):
        return _Ref()


def _job(config, trial_id="t1"):
    from sft_tune.sweep.contract import TrialJob

    return TrialJob(trial_id=trial_id, run_config=config, data=_Shared(), metric=METRIC)


def _place(saved=None):
    reports = []

    def report(metrics, folder):
        files = None
        if folder is not None:  # the checkpoint folder only lives during the report
            files = {
                "folds": json.loads((Path(folder) / FOLDS_FILE).read_text()),
                "history": (Path(folder) / HISTORY_FILE).read_text(),
            }
        reports.append((metrics, files))

    return TrialPlace(report, lambda: saved, device=_rt().device), reports


def _cache_holding(data):
    cache = ProcessCache()
    cache._data = ("shared-data", data)  # what `cache.data(ref)` fetched from the object store
    return cache


def test_run_folds_reports_each_fold_with_a_checkpoint_and_resumes(setup):
    config, data = setup
    place, reports = _place()
    run_folds(_job(config), place, _cache_holding(data))
    assert [m["fold"] for m, _ in reports] == [1, 2]
    last, files = reports[-1]
    assert last["sweep_trial_id"] == "t1" and last["folds_done"] == 2
    assert json.loads(last["fold_scores"]) == files["folds"]["scores"]
    assert last["cv_mean"] == pytest.approx(sum(files["folds"]["scores"]) / 2)
    assert files["folds"]["metrics"] == last and files["history"].strip()
    assert f"fold_metrics/{METRIC}" in last and last["process_model_loads"] == 1

    # A retried trial goes on at the fold after its checkpoint.
    first_fold = reports[0][1]["folds"]
    place, resumed = _place(saved=first_fold)
    run_folds(_job(config), place, _cache_holding(data))
    assert [m["fold"] for m, _ in resumed] == [2]
    assert resumed[0][0]["fold_scores"] == last["fold_scores"]

    # A trial whose every fold is checkpointed hands the final result again, marked replayed.
    place, replayed = _place(saved=files["folds"])
    run_folds(_job(config), place, _cache_holding(data))
    assert replayed == [({**last, REPLAYED: True}, None)]


def test_a_fold_that_diverges_is_flagged_ends_the_trial_and_is_not_trained_again(setup):
    """NaN weights (a diverged run): the first fold's loss is NaN, its score is whatever a NaN
    model predicts. The fold is reported as diverged, with where, and no further fold trains;
    a restored trial replays that result instead of training on."""
    config, data = setup
    cache = _cache_holding(data)
    task = get_task(config.model.task)
    tokenizer = cache.tokenizer(config, task)
    _, pristine = cache.model(config, task, data.label_names, tokenizer, lm_head=data.lm)
    head = next(name for name in pristine if name.startswith("task_model.classifier.weight"))
    pristine[head].fill_(float("nan"))
    place, reports = _place()
    run_folds(_job(config), place, cache)
    assert [m["fold"] for m, _ in reports] == [1]
    metrics, files = reports[0]
    assert metrics["diverged"] is True and metrics["diverged_at"].startswith("phase 1 step 1")
    assert files["folds"]["metrics"]["diverged"] is True

    place, replayed = _place(saved=files["folds"])
    run_folds(_job(config), place, cache)
    # (compared as JSON: the fold's loss is NaN, which equals nothing)
    assert json.dumps(replayed) == json.dumps([({**metrics, REPLAYED: True}, None)])


def test_a_gpu_that_torch_cannot_use_is_an_error_that_says_why():
    """A 1-worker trial that Ray gave a GPU, with a torch that sees no CUDA device (this CPU build):
    the trial fails saying so, instead of training on the CPU while holding the GPU."""
    import torch

    from sft_tune.sweep.folds import cuda_peak, release_memory, trial_device

    assert trial_device([], None) == torch.device("cpu")
    assert trial_device(["0"], "cpu") == torch.device("cpu")  # the config asks for the CPU
    if torch.cuda.is_available():
        assert trial_device(["0"], None) == torch.device("cuda")
        return
    with pytest.raises(RuntimeError, match="sees no CUDA device") as err:
        trial_device(["0"], None)
    assert "GPU 0" in str(err.value) and "gpus_per_worker to 0" in str(err.value)
    cpu = torch.device("cpu")
    assert cuda_peak(cpu) == {}  # no CUDA figures on the CPU, and nothing to release
    release_memory(cpu)  # gc and glibc malloc_trim: no error on the CPU


def test_a_trial_folder_made_while_it_is_listed_is_listed_again(tmp_path, monkeypatch):
    """pyarrow lists a local folder before it looks whether the folder exists: one made in
    between (Tune makes a trial's folder as its reused actor starts the trial) raised
    FileNotFoundError, and the trial ended in ERROR before its first fold."""
    from pyarrow.fs import LocalFileSystem

    from sft_tune.sweep import storage
    from sft_tune.sweep.folder import last_fold_state

    trial = tmp_path / "run_trial_1"
    real = LocalFileSystem()

    class MadeWhileListed:
        calls = 0

        def get_file_info(self, selector):
            MadeWhileListed.calls += 1
            if MadeWhileListed.calls == 1:  # the listing fails, then the folder appears
                (trial / "checkpoint_000000").mkdir(parents=True)
                (trial / "checkpoint_000000" / FOLDS_FILE).write_text('{"scores": [0.5]}')
                raise FileNotFoundError(f"Cannot list directory '{trial}'")
            return real.get_file_info(selector)

        def __getattr__(self, name):  # reading the checkpoint: the real filesystem
            return getattr(real, name)

    monkeypatch.setattr(storage, "filesystem", lambda where: (MadeWhileListed(), str(where)))
    assert last_fold_state(str(trial)) == {"scores": [0.5]}
    assert last_fold_state(str(tmp_path / "not_made")) is None
