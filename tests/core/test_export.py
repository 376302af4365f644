import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sft_tune.core import export as export_module
from sft_tune.core.export import (
    RUN_FILE,
    export_model,
    library_versions,
    plain_model,
    write_atomically,
)

HISTORY = [{"phase": 1, "step": 1, "loss": 2.5}, {"phase": 2, "step": 2, "loss": 1.25}]


@pytest.fixture
def model_and_tokenizer(tiny_bert):
    """A model trained a few steps in memory (its weights are no longer the checkpoint's), so an
    exported folder that loads back the same logits holds what training changed."""
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer(["the car was good", "awful road", "good"], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(**batch, labels=torch.tensor([1, 0, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def _export(model_and_tokenizer, target, info=None, **kwargs):
    model, tokenizer = model_and_tokenizer
    return export_model(model, tokenizer, target, info or {"labels": ["neg", "pos"]}, **kwargs)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_writes_a_plain_hugging_face_folder_that_loads(
    model_and_tokenizer, tiny_bert, tmp_path
):
    target = tmp_path / "out" / "model"
    info = {"config": {"seed": 7}, "labels": ["neg", "pos"], "metrics": {"test": {"acc": 0.5}}}
    returned = _export(
        model_and_tokenizer, target, info, history=HISTORY, extra_files={"best.json": {"trial": 3}}
    )
    assert returned == target
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", RUN_FILE} <= names
    assert {"history.jsonl", "best.json"} <= names and "pytorch_model.bin" not in names

    run = json.loads((target / RUN_FILE).read_text())
    assert {k: run[k] for k in info} == info
    assert {"python", "torch", "transformers"} <= set(run["versions"])
    history = [json.loads(line) for line in (target / "history.jsonl").read_text().splitlines()]
    assert history == HISTORY
    assert json.loads((target / "best.json").read_text()) == {"trial": 3}

    model, _ = model_and_tokenizer
    checkpoint = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    trained = model.state_dict()
    backbone = [k for k in checkpoint if not k.startswith("classifier")]
    assert any(not torch.equal(trained[k], checkpoint[k]) for k in backbone)  # it trained
    loaded = AutoModelForSequenceClassification.from_pretrained(target).eval()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert loaded.config.id2label == {0: "neg", 1: "pos"}
    batch = tokenizer(["the car was good", "awful road"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert _leftovers(target.parent) == []  # nothing temporary left behind


def test_history_file_only_when_a_history_is_given(model_and_tokenizer, tmp_path):
    _export(model_and_tokenizer, tmp_path / "none")
    assert not (tmp_path / "none" / "history.jsonl").exists()
    _export(model_and_tokenizer, tmp_path / "empty", history=[])
    assert (tmp_path / "empty" / "history.jsonl").read_text() == ""


def test_values_json_cannot_hold_are_written_as_text(model_and_tokenizer, tmp_path):
    _export(model_and_tokenizer, tmp_path / "m", {"output_dir": tmp_path / "out"})
    assert json.loads((tmp_path / "m" / RUN_FILE).read_text())["output_dir"] == str(
        tmp_path / "out"
    )


def test_a_second_export_replaces_the_folder_as_a_whole(model_and_tokenizer, tmp_path):
    target = tmp_path / "model"
    _export(model_and_tokenizer, target, {"run": 1}, extra_files={"first.json": {}})
    _export(model_and_tokenizer, target, {"run": 2})
    assert json.loads((target / RUN_FILE).read_text())["run"] == 2
    assert not (target / "first.json").exists()  # swapped, not merged
    assert _leftovers(tmp_path) == []  # neither the temporary nor the old folder is left
    assert target.is_dir() and not target.is_symlink()  # a plain folder, as before


def test_a_failed_export_leaves_the_previous_folder_intact(
    model_and_tokenizer, tmp_path, monkeypatch
):
    target = tmp_path / "model"
    _export(model_and_tokenizer, target, {"run": 1}, history=HISTORY)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    # The model and tokenizer are already written when run.json fails.
    monkeypatch.setattr(export_module, "library_versions", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _export(model_and_tokenizer, target, {"run": 2}, history=[])
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_a_failed_first_export_leaves_no_folder(model_and_tokenizer, tmp_path, monkeypatch):
    _, tokenizer = model_and_tokenizer

    def broken(*args, **kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="no space left"):
        _export(model_and_tokenizer, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_write_atomically_cleans_up_after_an_interrupt(tmp_path):
    target = tmp_path / "deep" / "folder"

    def write(folder):
        (folder / "part.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, write)
    assert not target.exists() and list(target.parent.iterdir()) == []

    assert write_atomically(target, lambda folder: (folder / "a.txt").write_text("done")) == target
    assert (target / "a.txt").read_text() == "done" and _leftovers(target.parent) == []


# An export in a child process, killed at one step with `sig`: the fault point names a step of
# `write_atomically`; "writing" is inside the write, after an empty config.json is created (as
# save_pretrained leaves it when killed). The write copies the files of SOURCE.
KILLED_EXPORT = """
import os, shutil, sys
from pathlib import Path
from sft_tune.core import export

source, target, step, sig, swap = sys.argv[1:]

def die(at):
    if at == step:
        os.kill(os.getpid(), int(sig))

export._fault_point = die
if swap == "fallback":
    export._exchange = lambda a, b: False  # as on a filesystem without RENAME_EXCHANGE (NFS)

def write(folder):
    (folder / "config.json").touch()
    die("writing")
    for path in Path(source).iterdir():
        shutil.copy(path, folder / path.name)

export.write_atomically(Path(target), write)
"""


def _killed_export(source, target, step, sig=signal.SIGKILL, swap="exchange"):
    """Run an export of `source` to `target` in a child process that kills itself at `step`."""
    package = str(Path(export_module.__file__).parents[2])  # the child imports this very code
    paths = [package, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    args = [sys.executable, "-c", KILLED_EXPORT, *map(str, (source, target, step, int(sig), swap))]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -sig, done.stderr  # it died at that step


def _run_of(folder):
    """The `run` of a complete exported folder (it loads with plain transformers)."""
    AutoModelForSequenceClassification.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    assert all(p.stat().st_size > 0 for p in folder.iterdir()), sorted(folder.iterdir())
    return json.loads((folder / RUN_FILE).read_text())["run"]


@pytest.fixture
def old_and_new(model_and_tokenizer, tmp_path):
    """`runs/model` exported with run 1, and the files of a run-2 export to swap in."""
    target = tmp_path / "runs" / "model"
    _export(model_and_tokenizer, target, {"run": 1})
    return target, _export(model_and_tokenizer, tmp_path / "new", {"run": 2})


@pytest.mark.parametrize("step, expected", [("written", 1), ("swapped", 2)])
def test_a_sigkill_during_the_swap_leaves_a_complete_model(
    model_and_tokenizer, old_and_new, step, expected
):
    target, new = old_and_new
    _killed_export(new, target, step)
    assert _run_of(target) == expected  # the old or the new model, never none
    assert _leftovers(target.parent)  # what the killed export left ...

    _export(model_and_tokenizer, target, {"run": 3})
    assert _run_of(target) == 3 and _leftovers(target.parent) == []  # ... the next one deletes


@pytest.mark.parametrize("step, expected", [("written", 1), ("moved_aside", 1), ("swapped", 2)])
def test_a_sigkill_between_the_fallback_renames_is_recovered(
    model_and_tokenizer, old_and_new, step, expected
):
    target, new = old_and_new
    _killed_export(new, target, step, swap="fallback")
    # Without an atomic exchange, a kill between the two renames leaves no model until recovery.
    assert target.exists() == (step != "moved_aside")
    export_module.recover_export(target)  # the first thing the next export does
    assert _run_of(target) == expected and _leftovers(target.parent) == []

    _export(model_and_tokenizer, target, {"run": 3})
    assert _run_of(target) == 3 and _leftovers(target.parent) == []


def test_a_plain_kill_while_writing_leaves_the_previous_model_and_no_empty_files(
    model_and_tokenizer, old_and_new
):
    target, new = old_and_new
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    _killed_export(new, target, "writing", sig=signal.SIGTERM)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    (partial,) = _leftovers(target.parent)
    assert (target.parent / partial / "config.json").stat().st_size == 0

    _export(model_and_tokenizer, target, {"run": 3})
    assert _run_of(target) == 3 and _leftovers(target.parent) == []


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_folders_of_exports_that_no_longer_run_are_deleted(tmp_path):
    target = tmp_path / "model"
    host, two_days_ago = socket.gethostname(), time.time() - 2 * 24 * 3600
    kept = [
        f".model.tmp-{host}-{os.getpid()}-0000beef",  # a running export (this process)
        ".model.tmp-other-node-1-00c0ffee",  # another host's, changed recently
        ".model.tmp-abc_1234",  # an earlier version's, without its process id, recent
        ".models.tmp-abc_1234",  # another target's
    ]
    deleted = {
        f".model.tmp-{host}-{_dead_pid()}-00000bad": None,
        f".model.old-{host}-{_dead_pid()}-00000bad": None,
        ".model.tmp-other-node-1-0000a9ed": two_days_ago,
        ".model.tmp-xyz_5678": two_days_ago,
        f".model.old-{_dead_pid()}": None,  # an earlier version's replaced model
    }
    for name in [*kept, *deleted]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        if deleted.get(name):
            os.utime(tmp_path / name, (deleted[name], deleted[name]))
    write_atomically(target, lambda folder: (folder / "a.txt").write_text("done"))
    assert (target / "a.txt").read_text() == "done"
    assert _leftovers(tmp_path) == sorted(kept)


def test_a_model_lost_by_an_earlier_versions_interrupted_swap_is_put_back(
    model_and_tokenizer, tmp_path
):
    # Earlier versions renamed `model` to `.model.old-PID`, then the new folder to `model`.
    target = tmp_path / "model"
    _export(model_and_tokenizer, target, {"run": 1})
    target.rename(tmp_path / f".model.old-{_dead_pid()}")

    def broken(folder):
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space left"):
        write_atomically(target, broken)  # even a failed export puts the previous model back
    assert _run_of(target) == 1 and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)]
)
def test_exported_folders_get_the_permissions_of_a_plain_mkdir(
    model_and_tokenizer, tmp_path, umask, folder_mode, file_mode
):
    previous = os.umask(umask)
    try:
        target = _export(model_and_tokenizer, tmp_path / "model", history=HISTORY)
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == folder_mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
    assert modes and set(modes.values()) == {file_mode}, modes


def test_select_exports_best_model_through_the_same_atomic_export(
    tiny_bert, toy_files, tmp_path, monkeypatch
):
    from conftest import write_space

    from sft_tune.select import select_best
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.folder import SweepFolder

    sweep = load_space(write_space(tmp_path, tiny_bert, toy_files, "light"))
    folder = SweepFolder.of(sweep.search)
    folder.save_snapshot(sweep)
    params = {"phase1.alpha": 1.0, "phase1.learning_rate": 1e-3, "phase2.learning_rate": 1e-2}
    params.update({"phase1.steps": 0, "phase2.epochs": 1})
    trial = {"trial_id": "t1", "status": "COMPLETE", "cv_mean": 0.5, "cv_std": 0.0}
    trial.update({"fold_scores": [0.5, 0.5], **{f"param:{k}": v for k, v in params.items()}})
    folder.file(folder.TRIALS_JSON).write_text(json.dumps([trial]))
    targets = []
    real = export_module.write_atomically

    def spy(target, write):
        targets.append(Path(target))
        return real(target, write)

    monkeypatch.setattr(export_module, "write_atomically", spy)
    previous = os.umask(0o022)
    try:
        selected = select_best(folder.path, use_wandb=False, progress=False)
    finally:
        os.umask(previous)
    best_model = folder.file(folder.BEST_MODEL)
    assert targets == [best_model] and selected["model_dir"] == str(best_model)
    assert json.loads((best_model / "best.json").read_text())["trial_id"] == "t1"
    assert best_model.stat().st_mode & 0o777 == 0o755
    assert _leftovers(folder.path) == []


def test_library_versions_leave_out_packages_that_are_not_installed():
    found = library_versions(extra=("surely-not-an-installed-package-xyz",))
    assert "surely-not-an-installed-package-xyz" not in found
    assert {"python", "torch", "transformers"} <= set(found)
    assert found["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_plain_model_keeps_a_plain_model_and_rebuilds_a_quantized_one(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert plain_model(model) is model

    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF checkpoint loads
    plain = plain_model(model)
    assert plain is not model and type(plain) is type(model)
    assert getattr(plain.config, "quantization_config", None) is None
    assert model.config.quantization_config == {"quant_method": "gguf"}  # the original untouched
    for name, tensor in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], tensor), name
