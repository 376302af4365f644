import pytest
import torch
from safetensors.torch import load_file

from sft_tune.config import ModelConfig
from sft_tune.core.batches import MaskingCollator
from sft_tune.core.model import load_model, load_tokenizer
from sft_tune.tasks import get_task

LABELS = ["negative", "positive"]
TEXTS = [
    "the car was good",
    "bad road today",
    "my bus ride was great and happy",
    "awful city train",
]


def _build(folder):
    config = ModelConfig(name_or_path=str(folder))
    tokenizer = load_tokenizer(config)
    model = load_model(config, get_task("classification"), LABELS, tokenizer)
    return model, tokenizer


def _batches(model, tokenizer, seed=0):
    ids = tokenizer(TEXTS)["input_ids"]
    collator = MaskingCollator(tokenizer, model.objective, probability=0.5, seed=seed)
    lm = collator(ids)
    task = get_task("classification").collate(
        _Examples(ids, [1, 0, 1, 0]),
        range(len(ids)),
        tokenizer.pad_token_id,
        tokenizer.padding_side,
    )
    return lm, task


class _Examples:
    def __init__(self, input_ids, labels):
        self.input_ids, self.labels = input_ids, labels


def _grads(model, lm, task, alpha):
    model.zero_grad(set_to_none=True)
    model(lm, task, alpha).total.backward()
    return {
        name: (p.grad.clone() if p.grad is not None else None)
        for name, p in model.named_parameters()
    }


@pytest.fixture(params=["tiny_bert", "tiny_gpt2"])
def built(request):
    model, tokenizer = _build(request.getfixturevalue(request.param))
    model.eval()  # no dropout: gradients comparable across calls
    return model, tokenizer, request.param


def test_objective_follows_architecture(built):
    model, tokenizer, name = built
    assert model.objective == ("masked" if name == "tiny_bert" else "causal")
    assert tokenizer.pad_token is not None
    assert model.task_model.config.pad_token_id == tokenizer.pad_token_id


def test_lm_head_is_tied_to_the_task_models_embeddings(built):
    model, _, _ = built
    embedding = model.task_model.get_input_embeddings().weight
    assert any(p is embedding for p in model.lm_head.parameters())


def test_lm_head_keeps_checkpoint_weights(tiny_bert):
    model, _ = _build(tiny_bert)
    saved = load_file(str(tiny_bert / "model.safetensors"))
    key = next(k for k in saved if k.endswith("predictions.transform.dense.weight"))
    assert torch.equal(model.lm_head.predictions.transform.dense.weight.detach(), saved[key])


def test_backbone_receives_gradients_from_both_losses(built):
    model, tokenizer, _ = built
    lm, task = _batches(model, tokenizer)
    layer = next(
        n
        for n, p in model.named_parameters()
        if "task_model" in n and ("layer.0" in n or "h.0" in n) and p.ndim == 2
    )
    from_lm = _grads(model, lm, None, 1.0)[layer]
    from_task = _grads(model, None, task, 1.0)[layer]
    both = _grads(model, lm, task, 1.0)[layer]
    assert from_lm.abs().sum() > 0 and from_task.abs().sum() > 0
    torch.testing.assert_close(both, from_lm + from_task, rtol=1e-4, atol=1e-6)


def _head_names(model):
    head = (
        model.task_model.classifier
        if hasattr(model.task_model, "classifier")
        else model.task_model.score
    )
    return {id(p) for p in head.parameters()}, head


def test_alpha_zero_gives_no_task_head_gradient_and_alpha_scales_it(built):
    model, tokenizer, _ = built
    lm, task = _batches(model, tokenizer)
    _, head = _head_names(model)
    names = [n for n, p in model.named_parameters() if any(p is q for q in head.parameters())]
    zero = _grads(model, lm, task, 0.0)
    assert all(zero[n] is None or zero[n].abs().sum() == 0 for n in names)
    one, three = _grads(model, lm, task, 1.0), _grads(model, lm, task, 3.0)
    for n in names:
        assert one[n].abs().sum() > 0
        torch.testing.assert_close(three[n], 3 * one[n], rtol=1e-4, atol=1e-7)


def test_alpha_zero_still_reports_the_task_loss(built):
    model, tokenizer, _ = built
    lm, task = _batches(model, tokenizer)
    parts = model(lm, task, 0.0)
    assert parts.task is not None and parts.task.item() > 0
    assert parts.total.item() == pytest.approx(parts.lm.item())


def test_a_bf16_checkpoint_trains_and_exports_fp32_weights(tiny_bert, toy_files, tmp_path):
    """transformers 5 loads a checkpoint in its stored dtype: a bf16 one (most modern hub
    checkpoints) must still train fp32 weights and AdamW state with `precision: fp32`, and export
    fp32."""
    import json

    import yaml
    from conftest import run_config_dict
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from sft_tune.run import train
    from sft_tune.runconfig import parse_config

    folder = tmp_path / "bf16"
    AutoModelForMaskedLM.from_pretrained(tiny_bert, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    stored = load_file(folder / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}

    model, _ = _build(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    raw = run_config_dict(folder, toy_files, tmp_path / "out", phase1={"steps": 2})
    raw["precision"] = "fp32"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    train(parse_config(raw), progress=False)
    exported = load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.float32}
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert run["config"]["precision"] == "fp32"


def test_bf16_on_a_gpu_without_it_is_refused_and_auto_falls_back_to_fp32(monkeypatch):
    from sft_tune.config import RunConfig
    from sft_tune.core.loop import uses_bf16
    from sft_tune.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    config = RunConfig.model_validate({"model": {"name_or_path": "m"}, "data": {"train": "t"}})
    cuda = torch.device("cuda")
    assert uses_bf16(config, cuda) is False  # auto: fp32 on this GPU
    with pytest.raises(InputError) as caught:
        uses_bf16(config.model_copy(update={"precision": "bf16"}), cuda)
    assert "Tesla T4 does not" in str(caught.value) and "precision: fp32" in str(caught.value)
    assert uses_bf16(config.model_copy(update={"precision": "bf16"}), torch.device("cpu")) is False
