"""LoRA adapters (PEFT) through both phases: what trains, what is exported, how a trial process
swaps and resets them."""

import json

import pytest
import torch
from conftest import run_config_dict

from sft_tune.config import AdapterConfig
from sft_tune.core.export import export_model
from sft_tune.core.loop import Runtime, fit, run_phase1, seed_everything
from sft_tune.core.model import check_adapter, exported_model, load_model, load_tokenizer
from sft_tune.core.prepare import prepare_data
from sft_tune.errors import InputError
from sft_tune.run import train
from sft_tune.runconfig import parse_config
from sft_tune.sweep import folds as folds_module
from sft_tune.sweep.folds import ProcessCache, cross_validate
from sft_tune.tasks import get_task

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def _config(model, files, out, adapter=LORA, **overrides):
    raw = run_config_dict(model, files, out, **overrides)
    raw["model"]["adapter"] = adapter
    return parse_config(raw)


def _loaded(config):
    task = get_task(config.model.task)
    data = prepare_data(config, task, with_test=True)
    tokenizer = load_tokenizer(config.model, task)
    seed_everything(config.seed)
    model = load_model(
        config.model, task, data.label_names, tokenizer, lm_head=True, seed=config.seed
    )
    return task, data, tokenizer, model


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_gpt2"])
def test_only_adapters_and_heads_train_in_each_phase(model_fixture, request, toy_files, tmp_path):
    config = _config(
        request.getfixturevalue(model_fixture),
        toy_files,
        tmp_path,
        phase1={"steps": 4, "head_warmup_steps": 2},
        phase2={"epochs": 1},
    )
    task, data, tokenizer, model = _loaded(config)
    fit_data = data.fit_data(0, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    counts = model.parameter_counts()
    assert 0 < counts["trainable"] < counts["total"] / 2
    adapters = {name for name in trainable if "lora_" in name}
    head = {name for name in trainable if "modules_to_save" in name}
    assert adapters and head
    base = {name for name in _snapshot(model) if name not in trainable}
    lm_head = {name for name in trainable if name.startswith("lm_head.")}

    before = _snapshot(model)
    run_phase1(model, task, fit_data, config, tokenizer, Runtime(progress=False))
    changed = _changed(before, model)
    assert not changed & base  # every base weight bit-identical
    assert {n for n in adapters if "lora_B" in n} <= changed and head <= changed
    if model.objective == "masked":  # the encoder's fresh MLM transform trains
        assert lm_head and lm_head <= changed
    else:  # the decoder's pretrained LM head stays frozen
        assert not lm_head and not any(n.startswith("lm_head.") for n in changed)

    before = _snapshot(model)
    fit(
        model,
        task,
        fit_data,
        config.model_copy(update={"phase1": config.phase1.model_copy(update={"steps": 0})}),
        tokenizer,
        Runtime(progress=False),
    )
    changed = _changed(before, model)
    assert not changed & base and head <= changed and adapters & changed
    assert not any(n.startswith("lm_head.") for n in changed)  # phase 2 has no LM loss


def _logits(task_model, tokenizer):
    batch = tokenizer(["the car was good", "awful road today"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return task_model.eval()(**batch).logits


def test_the_merged_export_is_a_plain_model_with_the_logits_of_base_plus_adapters(
    tiny_bert, toy_files, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    from sft_tune.predict import predict

    config = _config(tiny_bert, toy_files, tmp_path, phase1={"steps": 3}, phase2={"epochs": 1})
    task, data, tokenizer, model = _loaded(config)
    fit(model, task, data.fit_data(0, config), config, tokenizer, Runtime(progress=False))
    with torch.no_grad():  # non-zero adapters: the merge must carry them
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    adapted = _logits(model.task_model, tokenizer)
    target = export_model(
        exported_model(model, False, str(tiny_bert)), tokenizer, tmp_path / "merged", {}
    )
    plain = AutoModelForSequenceClassification.from_pretrained(target)
    assert not any("lora" in name or "base_layer" in name for name in plain.state_dict())
    torch.testing.assert_close(_logits(plain, tokenizer), adapted, atol=1e-5, rtol=0)
    assert not (target / "adapter_config.json").exists()
    (target / "run.json").write_text(
        json.dumps({"config": config.model_dump(mode="json"), "labels": data.label_names})
    )
    records = list(predict(target, toy_files["test"]))
    assert len(records) == 40 and {r["label"] for r in records} <= set(data.label_names)


def test_an_adapter_only_export_loads_with_peft_and_records_the_adapter(
    tiny_bert, toy_files, tmp_path
):
    from peft import AutoPeftModelForSequenceClassification

    config = _config(
        tiny_bert,
        toy_files,
        tmp_path / "out",
        phase1={"steps": 3},
        phase2={"epochs": 1},
        export={"adapter_only": True},
    )
    train(config, progress=False)
    folder = tmp_path / "out" / "model"
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()
    info = json.loads((folder / "run.json").read_text())
    assert info["parameters"]["adapter"]["r"] == 4
    assert 0 < info["parameters"]["trainable"] < info["parameters"]["total"]
    assert "peft" in info["versions"]
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_bert)
    assert adapter_config["r"] == 4 and adapter_config["task_type"] == "SEQ_CLS"

    loaded = AutoPeftModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(info["labels"])
    )
    # The same weights as the run trained: retrain in memory with the same seed and compare.
    task, data, tokenizer, model = _loaded(config)
    fit(
        model,
        task,
        data.fit_data(0, config, evaluate_held_out=True),
        config,
        tokenizer,
        Runtime(progress=False),
    )
    torch.testing.assert_close(
        _logits(loaded, tokenizer), _logits(model.task_model, tokenizer), atol=1e-5, rtol=0
    )


def test_adapter_only_without_adapters_is_refused(tiny_bert, toy_files, tmp_path):
    raw = run_config_dict(tiny_bert, toy_files, tmp_path, export={"adapter_only": True})
    with pytest.raises(InputError) as err:
        parse_config(raw)
    assert "export.adapter_only" in str(err.value) and "model.adapter.type: lora" in str(err.value)


@pytest.mark.parametrize(
    "adapter, where, words",
    [
        ({"type": "lora", "r": 0}, "model.adapter.r", "greater than 0"),
        ({"type": "lora", "target_modules": []}, "model.adapter.target_modules", "non-empty"),
        ({"type": "lora", "bias": "some"}, "model.adapter.bias", "lora_only"),
        ({"type": "qlora"}, "model.adapter.type", "lora"),
    ],
)
def test_bad_adapter_settings_are_refused_before_loading(
    tiny_bert, toy_files, tmp_path, adapter, where, words
):
    raw = run_config_dict(tiny_bert, toy_files, tmp_path)
    raw["model"]["adapter"] = adapter
    with pytest.raises(InputError) as err:
        parse_config(raw)
    assert where in str(err.value) and words in str(err.value)


def test_an_unknown_target_module_is_refused_with_the_modules_of_the_model(
    tiny_bert, toy_files, tmp_path
):
    config = _config(
        tiny_bert, toy_files, tmp_path, adapter={**LORA, "target_modules": ["q_proj", "query"]}
    )
    task = get_task("classification")
    with pytest.raises(InputError) as err:
        load_model(config.model, task, ["a", "b"], load_tokenizer(config.model, task))
    text = str(err.value)
    assert "model.adapter.target_modules" in text and "['q_proj']" in text
    assert "query" in text and "value" in text  # the backbone's linear layers, listed
    # The same problem before any weight loads: the architecture built on the meta device.
    with pytest.raises(InputError) as early:
        check_adapter(config.model, task)
    assert str(early.value) == text


def test_target_modules_all_linear_adapts_every_backbone_linear_and_never_the_head(
    tiny_gpt2, toy_files, tmp_path
):
    config = _config(
        tiny_gpt2, toy_files, tmp_path, adapter={**LORA, "target_modules": "all-linear"}
    )
    task = get_task("classification")
    model = load_model(config.model, task, ["a", "b"], load_tokenizer(config.model, task))
    adapted = {
        n.split(".lora_A")[0].rsplit(".", 1)[-1]
        for n, _ in model.named_parameters()
        if "lora_A" in n
    }
    assert adapted == {"c_attn", "c_proj", "c_fc"}  # GPT-2's Conv1D layers
    assert not any("score" in n and "lora" in n for n, _ in model.named_parameters())


def test_a_trial_process_swaps_adapters_on_one_loaded_model_and_resets_them_per_fold(
    tiny_bert, toy_files, tmp_path, monkeypatch
):
    """Adapters of another rank, or a full fine-tune, on the same base weights: one
    from_pretrained; each fold starts from the trial's seeded adapters, and a full fine-tune
    before leaves nothing behind."""
    config = _config(tiny_bert, toy_files, tmp_path, phase1={"steps": 2}, phase2={"epochs": 1})
    task = get_task("classification")
    data = prepare_data(config, task, folds=2)
    starts = []
    real_fit = folds_module.fit

    def recording_fit(model, *args, **kwargs):
        inner = getattr(model, "module", model)
        starts.append(
            {n: p.detach().clone() for n, p in inner.named_parameters() if p.requires_grad}
        )
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(folds_module, "fit", recording_fit)
    cache = ProcessCache()
    first = cross_validate(config, data, "accuracy", Runtime(progress=False), cache=cache)
    assert len(starts) == 2 and starts[0].keys() == starts[1].keys()
    for name in starts[0]:
        assert torch.equal(starts[0][name], starts[1][name]), name  # the same init per fold
    wider = config.model_copy(
        update={
            "model": config.model.model_copy(
                update={"adapter": config.model.adapter.model_copy(update={"r": 8})}
            )
        }
    )
    cross_validate(wider, data, "accuracy", Runtime(progress=False), cache=cache)
    assert any(p.shape[0] == 8 for n, p in starts[-1].items() if "lora_A" in n)
    full = config.model_copy(
        update={"model": config.model.model_copy(update={"adapter": AdapterConfig()})}
    )
    cross_validate(full, data, "accuracy", Runtime(progress=False), cache=cache)
    assert cache.model_loads == 1
    again = cross_validate(config, data, "accuracy", Runtime(progress=False), cache=cache)
    assert again == first and cache.model_loads == 1


def test_predict_names_an_adapter_only_folder_for_what_it_is(tmp_path, toy_files):
    from sft_tune.predict import predict

    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError) as err:
        predict(folder, toy_files["test"])
    assert "adapter-only export" in str(err.value) and "AutoPeftModelFor" in str(err.value)


def test_a_sweep_with_unknown_target_modules_is_refused_before_ray_starts(
    tiny_bert, toy_files, tmp_path
):
    import yaml
    from conftest import write_space

    from sft_tune.sweep.run import run_search

    space = write_space(tmp_path, tiny_bert, toy_files, "bad-lora", scheduler="none")
    raw = yaml.safe_load(space.read_text())
    raw["config"]["model"]["adapter"] = {"type": "lora", "target_modules": ["c_attn"]}
    space.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as err:
        run_search(space, use_wandb=False)
    assert "model.adapter.target_modules" in str(err.value) and "c_attn" in str(err.value)
    assert not (tmp_path / "sweeps" / "bad-lora").exists()  # nothing written
