"""A local model folder judged before anything loads (sft_tune/checkpoint.py)."""

import json
import subprocess
import sys

import pytest

from sft_tune.checkpoint import architecture_problems, folder_problems, head_tables
from sft_tune.tasks import SPECS


def _folder(tmp_path, *files, model_type="bert", **config):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}" if name.endswith(".json") else "")
    if "config.json" in files:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    return folder


def test_a_saved_model_folder_has_no_problem(tmp_path):
    folder = _folder(tmp_path, "config.json", "model.safetensors", "vocab.txt")
    assert folder_problems("model.name_or_path", "model", folder, None) == []


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        ((), ["config.json", "weights", "tokenizer files"]),
        (("config.json", "vocab.json", "merges.txt"), ["weights"]),
        (("config.json", "pytorch_model.bin"), ["tokenizer files"]),
        (("model-00001-of-00002.safetensors", "tokenizer.json"), ["config.json"]),
    ],
)
def test_what_a_model_folder_lacks_is_one_problem(tmp_path, files, missing):
    (problem,) = folder_problems("model.name_or_path", "./model", _folder(tmp_path, *files), None)
    assert problem.where == "model.name_or_path" and problem.value == "./model"
    for part in missing:
        assert f"no {part}" in problem.rule
    assert problem.rule.count(", no ") == len(missing) - 1


def test_a_missing_gguf_file_lists_those_there(tmp_path):
    folder = _folder(tmp_path, "a.Q4.gguf", "b.Q8.gguf")
    (problem,) = folder_problems("model.name_or_path", "m", folder, "c.gguf")
    assert problem.where == "model.gguf_file" and problem.value == "c.gguf"
    assert "['a.Q4.gguf', 'b.Q8.gguf']" in problem.rule
    assert folder_problems("model.name_or_path", "m", folder, "a.Q4.gguf") == []


@pytest.mark.parametrize(
    ("model_type", "objective", "task", "key"),
    [
        ("gpt2", "masked", "classification", "model.lm_objective"),
        ("bert", "auto", "generation", "model.task"),
        ("codegen", "auto", "ner", "model.task"),
        ("codegen", "auto", "qa", "model.task"),
    ],
)
def test_what_config_json_rules_out(tmp_path, model_type, objective, task, key):
    folder = _folder(tmp_path, "config.json", model_type=model_type)
    (problem,) = architecture_problems(folder / "config.json", objective, task, SPECS[task].head)
    assert problem.where == key and model_type in problem.rule


@pytest.mark.parametrize(
    ("model_type", "task"),
    [("bert", "ner"), ("bert", "qa"), ("gpt2", "generation"), ("llama", "classification")],
)
def test_what_config_json_allows(tmp_path, model_type, task):
    folder = _folder(tmp_path, "config.json", model_type=model_type)
    assert architecture_problems(folder / "config.json", "auto", task, SPECS[task].head) == []


def test_bert_as_a_decoder_may_generate(tmp_path):
    folder = _folder(tmp_path, "config.json", model_type="bert", is_decoder=True)
    assert (
        architecture_problems(
            folder / "config.json", "causal", "generation", SPECS["generation"].head
        )
        == []
    )


def test_the_head_tables_are_read_without_importing_torch():
    code = (
        "import sys\n"
        "from sft_tune.checkpoint import head_tables\n"
        "tables = head_tables()\n"
        "assert 'bert' in tables['MODEL_FOR_MASKED_LM_MAPPING_NAMES'], tables.keys()\n"
        "assert 'gpt2' in tables['MODEL_FOR_CAUSAL_LM_MAPPING_NAMES']\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert head_tables()  # and in this process too


def _cached(cache, repo, **config):
    """A model in a Hugging Face hub cache, laid out as `hf download` leaves it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc123")
    snapshot = root / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_a_hub_id_must_be_in_the_local_cache(offline_cache):
    from sft_tune.checkpoint import hub_problems

    (problem,) = hub_problems("model.name_or_path", "org/missing", None, "auto", "classification")
    assert problem.where == "model.name_or_path" and problem.value == "org/missing"
    assert "HF_HUB_OFFLINE" in problem.rule and str(offline_cache) in problem.rule
    assert "hf download" in problem.fix
    _cached(offline_cache, "org/bert", model_type="bert")
    assert hub_problems("model.name_or_path", "org/bert", None, "auto", "classification") == []
    # Cached: its config.json is judged like a local folder's.
    (wrong,) = hub_problems(
        "model.name_or_path", "org/bert", None, "auto", "generation", SPECS["generation"].head
    )
    assert wrong.where == "model.task"


def test_online_a_hub_id_is_left_to_loading(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sft_tune.checkpoint import hub_problems

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_problems("model.name_or_path", "org/missing", None, "auto", "classification") == []


def test_an_uncached_hub_id_offline_is_reported_with_the_other_input_problems(offline_cache):
    from sft_tune.errors import InputError
    from sft_tune.runconfig import parse_config

    raw = {"model": {"name_or_path": "org/missing"}, "data": {"train": "missing.csv"}}
    with pytest.raises(InputError) as caught:
        parse_config(raw, offline_cache.parent, check_inputs=True)
    assert {p.where for p in caught.value.problems} == {
        "model.name_or_path",
        "data.train (missing.csv)",
    }
