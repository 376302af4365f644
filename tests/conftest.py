"""Shared fixtures: tiny random BERT-like and GPT-2-like models saved to a temp folder (loaded back
through the real `from_pretrained` path), a learnable toy sentiment set, and run configs."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest
import torch
from tiny import (
    LABELS,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    save_tiny_bert,
    save_tiny_gpt2,
    toy_sentence,
    toy_vocabulary,
)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Real Ray heads in tests answer slowly on a busy 2-core machine; users keep the 1.5-s default.
os.environ.setdefault("SFT_TUNE_PROBE_TIMEOUT_S", "10")


# Fixtures that start a real local Ray: a test that uses one is a `ray` test wherever it is.
RAY_FIXTURES = {"ray_session", "finished_sweep"}


def pytest_collection_modifyitems(items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_TUNE_CACHE", str(tmp_path / "cache"))


def toy_rows(n: int, seed: int, labels: tuple[str, ...] = ("negative", "positive")) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"text": toy_sentence(rng, rng.choice(LABELS[label])), "label": label}
        for label in labels
        for _ in range(n // len(labels))
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with a word-level WordPiece vocabulary, saved like a hub checkpoint."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), toy_vocabulary())


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE trained on the toy words; no pad token (like GPT-2)."""
    rng = random.Random(0)
    corpus = [toy_sentence(rng, rng.choice(POSITIVE + NEGATIVE + NEUTRAL)) for _ in range(300)]
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), corpus, 300, 1)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_gpt2) -> Path:
    """A 2-layer Llama-style decoder (RoPE, RMSNorm, SwiGLU) on the tiny byte-level BPE, with a
    chat template, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=eos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def toy_generation_rows(n: int, seed: int) -> list[dict]:
    """The toy sentiment set framed as prompt -> label-word pairs."""
    return [
        {"prompt": f"review: {row['text']}\nsentiment:", "response": row["label"]}
        for row in toy_rows(n, seed)
    ]


def make_toy_files(folder: Path) -> dict[str, Path]:
    rng = random.Random(1)
    unlabelled = [
        {"text": toy_sentence(rng, rng.choice(POSITIVE + NEGATIVE + NEUTRAL))} for _ in range(120)
    ]
    return {
        "train": write_csv(folder / "train.csv", toy_rows(160, seed=2)),
        "test": write_csv(folder / "test.csv", toy_rows(40, seed=3)),
        "unlabelled": write_jsonl(folder / "unlabelled.jsonl", unlabelled),
    }


@pytest.fixture
def toy_files(tmp_path) -> dict[str, Path]:
    """Labelled train/test CSVs and an unlabelled JSONL pool of the learnable toy sentiment task."""
    return make_toy_files(tmp_path)


ROOT = Path(__file__).resolve().parents[1]


def write_space(folder: Path, model: Path, files: dict[str, Path], name: str, **search) -> Path:
    """search_spaces/tiny.yaml pointed at a model and toy files, with search settings overridden."""
    import yaml

    raw = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    raw["config"]["model"]["name_or_path"] = str(model)
    raw["config"]["data"].update(
        {"train": str(files["train"]), "unlabelled": [str(files["unlabelled"])]}
    )
    if "test" in files:
        raw["config"]["data"]["test"] = str(files["test"])
    raw["search"].update({"name": name, "storage_path": str(folder / "sweeps"), **search})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def arms_space(folder: Path, model: Path, files: dict[str, Path], name: str) -> Path:
    """A space with both arms, 3 folds and ASHA: a good plain fine-tune first, then a weak
    two-phase trial that ASHA stops after its first fold and the sweep then finishes (the only
    trial of its arm)."""
    plain = {"phase2.learning_rate": 1e-2, "phase1.steps": 0, "phase2.epochs": 2}
    weak = {
        "phase1.alpha": 1.0,
        "phase1.learning_rate": 1e-3,
        "phase2.learning_rate": 1e-3,
        "phase1.steps": 2,
        "phase2.epochs": 1,
    }
    return write_space(
        folder,
        model,
        files,
        name,
        num_trials=2,
        folds=3,
        scheduler="asha",
        initial_points=[plain, weak],
    )


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the sweeps of a test module (starting Ray costs seconds each time)."""
    import ray

    from sft_tune.sweep.cluster import stop_ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    # 4 logical CPUs on 2 cores: room for a trial (0.01) plus its worker even if a stopped trial's
    # placement group is still being cleaned up.
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield
    stop_ray()


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, tiny_bert):
    """One real 3-trial, 2-fold sweep on a local Ray (the first trial crashes once and is
    retried), W&B offline, followed by `select`. Shared by the search, tracking, select and
    report tests."""
    from sft_tune.select import select_best
    from sft_tune.sweep.run import run_search

    folder = tmp_path_factory.mktemp("sweep")
    files = make_toy_files(folder)
    fault = folder / "fault-injected"
    saved = {k: os.environ.get(k) for k in ("SFT_TUNE_FAULT_FILE", "WANDB_MODE", "SFT_TUNE_CACHE")}
    os.environ.update(
        {
            "SFT_TUNE_FAULT_FILE": str(fault),
            "WANDB_MODE": "offline",
            "SFT_TUNE_CACHE": str(folder / "cache"),
        }
    )
    try:
        space = write_space(folder, tiny_bert, files, "basic", scheduler="none", max_failures=1)
        result = run_search(space)
        os.environ.pop("SFT_TUNE_FAULT_FILE")
        selected = select_best(result.sweep_dir, progress=False)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    return {"result": result, "selected": selected, "fault": fault, "files": files}


def run_config_dict(model: Path, files: dict[str, Path], out: Path, **overrides) -> dict:
    """A small, fast run config over the toy files (override sections with dicts)."""
    config = {
        "model": {"name_or_path": str(model), "task": "classification"},
        "data": {
            "train": str(files["train"]),
            "test": str(files["test"]),
            "unlabelled": [str(files["unlabelled"])],
            "max_length": 32,
            "validation_fraction": 0.2,
        },
        "phase1": {
            "steps": 6,
            "learning_rate": 1e-3,
            "alpha": 1.0,
            "lm_batch_size": 8,
            "task_batch_size": 8,
        },
        "phase2": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8},
        "optimizer": {"warmup_ratio": 0.0},
        "seed": 7,
        "output_dir": str(out),
    }
    for section, value in overrides.items():
        if isinstance(value, dict):
            config[section] = {**config.get(section, {}), **value}
        else:
            config[section] = value
    return config
