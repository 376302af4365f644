"""The two-phase model: a standard `AutoModelFor<Task>` plus the LM head of the same checkpoint.

The LM head comes from `AutoModelForMaskedLM` (encoders) or `AutoModelForCausalLM` (decoders),
with the checkpoint's head weights where present, and runs on the task model's own backbone, so
both losses train the same weights. Where the architecture ties the output projection to the
input embeddings, the head is re-tied to the task model's embeddings. Only the task model is
exported, so the result loads with plain transformers.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import (
    MODEL_FOR_MASKED_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
)
from transformers import logging as hf_logging

from sft_tune.config import AdapterConfig, ModelConfig
from sft_tune.core.losses import LossParts, causal_lm_loss, masked_lm_loss, phase_loss, task_trains
from sft_tune.errors import fail

log = logging.getLogger(__name__)


class TwoPhaseModel(nn.Module):
    """Task model + LM head on its backbone; `forward` returns the phase loss parts.

    One `forward` computes both losses so that DDP wraps a single module call per step. A run
    without phase 1 has no LM head (`lm_head` None).
    """

    def __init__(self, task_model: nn.Module, lm_head: nn.Module | None, objective: str) -> None:
        super().__init__()
        self.task_model = task_model
        self.lm_head = lm_head
        self.objective = objective

    # The PEFT model around `task_model` when it carries LoRA adapters (`add_adapters`), else None.
    # Kept outside the module tree: it wraps the same modules, which `task_model` already holds.
    peft_model = None
    # Backbone modules the checkpoint had no weights for (set by `load_base_model`).
    fresh_backbone: list[str] = []

    @property
    def backbone(self) -> nn.Module:
        return self.task_model.base_model

    def parameter_counts(self) -> dict[str, int]:
        """{"trainable": ..., "total": ...}: each parameter once (tied weights are one); a full
        fine-tune trains them all, LoRA the adapters and the heads."""
        unique = {id(p): p for p in self.parameters()}.values()
        return {
            "trainable": sum(p.numel() for p in unique if p.requires_grad),
            "total": sum(p.numel() for p in unique),
        }

    def lm_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        frozen_backbone: bool = False,
    ) -> torch.Tensor:
        """Masked-LM loss (labels from `mask_tokens`) or next-token loss (labels None); with
        `frozen_backbone` only the head receives gradients (LM-head warm-up)."""
        with torch.no_grad() if frozen_backbone else contextlib.nullcontext():
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.objective == "masked":
            return masked_lm_loss(hidden, labels, self.lm_head)
        return causal_lm_loss(hidden, input_ids, attention_mask, self.lm_head)

    def forward(
        self,
        lm_batch: dict[str, torch.Tensor] | None,
        task_batch: dict[str, torch.Tensor] | None,
        alpha: float = 1.0,
    ) -> LossParts:
        """Phase 1: both batches; phase 2: `lm_batch` None (no LM loss is computed)."""
        lm = self.lm_loss(**lm_batch) if lm_batch is not None else None
        task = None
        if task_batch is not None:
            untrained = lm is not None and not task_trains(alpha)  # logged only: no graph for it
            with torch.no_grad() if untrained else contextlib.nullcontext():
                task = self.task_model(**task_batch).loss
        return phase_loss(lm, task, alpha)


def resolve_objective(model: ModelConfig, config: Any, tokenizer) -> str:
    """masked for encoders with a mask token and an MLM head class, causal otherwise."""
    if model.lm_objective != "auto":
        return model.lm_objective
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING and tokenizer.mask_token_id is not None:
        return "masked"
    return "causal"


def load_tokenizer(model: ModelConfig, task=None):
    """The checkpoint's tokenizer (with the task's extra arguments), padding on the right.

    Training always pads on the right: absolute-position decoders (GPT-2) would shift every
    position under left padding, and the classification heads of transformers pool the last
    non-padding token either way. A missing pad token is set to EOS; padding positions are
    excluded by the attention mask and ignored by every loss, so reusing EOS is safe.
    """
    kwargs = {**(task.tokenizer_kwargs() if task else {}), **_gguf(model)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise fail(
            "model.name_or_path",
            model.name_or_path,
            f"must be a local model folder or a reachable hub id ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0]})",
            "point to a folder with config.json and tokenizer files",
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise fail(
                "model.name_or_path",
                model.name_or_path,
                "the tokenizer needs a pad or EOS token",
                "use a tokenizer that defines one",
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _gguf(model: ModelConfig) -> dict[str, Any]:
    """`from_pretrained` arguments that read a GGUF checkpoint (dequantized to fp32)."""
    return {"gguf_file": model.gguf_file} if model.gguf_file else {}


def load_model(
    model: ModelConfig,
    task,
    label_names: Sequence[str],
    tokenizer,
    lm_head: bool = True,
    seed: int = 0,
) -> TwoPhaseModel:
    """The two-phase model (`load_base_model`) with the adapters of `model.adapter`, if any
    (initialised from `seed`)."""
    loaded = load_base_model(model, task, label_names, tokenizer, lm_head)
    if model.adapter.type == "lora":
        add_adapters(loaded, model.adapter, task, seed)
    return loaded


def load_base_model(
    model: ModelConfig, task, label_names: Sequence[str], tokenizer, lm_head: bool = True
) -> TwoPhaseModel:
    """Build the task model and attach the LM head of the matching LM class.

    A task whose model is itself a causal LM (generation) brings its own head: the LM loss uses it.
    `lm_head` False (a run without phase 1) builds the task model alone. A GGUF checkpoint is
    de-quantized once: with an LM head, the LM model is read from the file and the task model
    built from its config takes the backbone's weights.
    """
    gguf = _gguf(model)
    fresh_backbone: list[str] = []
    # Trained weights are fp32 whatever the checkpoint stores (transformers 5 loads its stored
    # dtype by default: a bf16 checkpoint would train bf16 weights and AdamW state); bf16 is
    # autocast compute only (`precision`). A GGUF checkpoint is de-quantized to fp32.
    weights = {**gguf, "dtype": torch.float32}
    config = AutoConfig.from_pretrained(model.name_or_path, **gguf)
    objective = resolve_objective(model, config, tokenizer)
    lm_class = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    own_head = task.auto_model is lm_class
    separate_head = lm_head and not own_head
    with _quiet_transformers():  # the load reports below say what matters, once
        if separate_head and gguf:  # read (and de-quantize) the file once, for the LM model
            lm_model, info = lm_class.from_pretrained(
                model.name_or_path, output_loading_info=True, **weights
            )
            task_model = _task_model_on(lm_model, task, label_names, model.name_or_path, gguf)
        else:
            task_model, task_info = task.auto_model.from_pretrained(
                model.name_or_path,
                output_loading_info=True,
                **weights,
                **task.model_kwargs(label_names),
            )
            fresh_backbone = _fresh_backbone(task_model, task_info["missing_keys"])
            if separate_head:
                lm_model, info = lm_class.from_pretrained(
                    model.name_or_path, output_loading_info=True, **weights
                )
    if task_model.config.pad_token_id is None:
        task_model.config.pad_token_id = tokenizer.pad_token_id
    if model.gradient_checkpointing:
        enable_checkpointing(task_model)
    if own_head:
        built = TwoPhaseModel(task_model, lm_head_of(task_model), objective)
    elif not lm_head:
        built = TwoPhaseModel(task_model, None, objective)
    else:
        built = TwoPhaseModel(task_model, _attached_head(task_model, lm_model, info), objective)
    built.fresh_backbone = fresh_backbone
    return built


def _attached_head(task_model: nn.Module, lm_model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """The LM model's head, on the task model's backbone (re-tied to its embeddings)."""
    fresh = [key for key in info["missing_keys"] if not key.startswith(lm_model.base_model_prefix)]
    if fresh:
        log.info(
            "LM head: %d tensors not in the checkpoint, newly initialised (%s ...)",
            len(fresh),
            fresh[0],
        )
    head = lm_head_of(lm_model)
    output = lm_model.get_output_embeddings()
    if output is not None and output.weight is lm_model.get_input_embeddings().weight:
        output.weight = task_model.get_input_embeddings().weight  # tie to the shared backbone
    return head


def _fresh_backbone(task_model: nn.Module, missing: Sequence[str]) -> list[str]:
    """The backbone modules whose weights the checkpoint lacks (BERT's pooler in a checkpoint
    saved without it): newly initialised like the head, so with adapters they train and are
    saved with it."""
    prefix = task_model.base_model_prefix + "."
    return sorted({key.rsplit(".", 1)[0] for key in missing if key.startswith(prefix)})


def _task_model_on(
    lm_model: nn.Module, task, label_names: Sequence[str], path: str, gguf: dict[str, Any]
) -> nn.Module:
    """The task model with the (already de-quantized) backbone weights of `lm_model`: built from
    the checkpoint's config (GGUF metadata only), its task head freshly initialised as
    `from_pretrained` would."""
    config = AutoConfig.from_pretrained(path, **gguf, **task.model_kwargs(label_names))
    task_model = task.auto_model.from_config(config)
    prefix = lm_model.base_model_prefix
    backbone = {k: v for k, v in lm_model.state_dict().items() if k.startswith(prefix + ".")}
    missing, _ = task_model.load_state_dict(backbone, strict=False)
    unfilled = [key for key in missing if key.startswith(prefix + ".")]
    if unfilled:
        raise fail(
            "model.gguf_file",
            path,
            f"the task model's backbone does not match the LM model's ({unfilled[0]} ...)",
            "use a GGUF checkpoint of a Llama/GPT-like decoder",
        )
    return task_model


def enable_checkpointing(task_model: nn.Module) -> None:
    """Activation (gradient) checkpointing on the backbone, non-reentrant (works with DDP and
    frozen inputs); the LM loss runs on the same backbone, so it is checkpointed too."""
    if not getattr(task_model, "supports_gradient_checkpointing", False):
        raise fail(
            "model.gradient_checkpointing",
            True,
            f"{type(task_model).__name__} does not support gradient checkpointing",
            "set model.gradient_checkpointing: false",
        )
    kwargs = {"use_reentrant": False}
    if hasattr(task_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        task_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        task_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lm_head_of(lm_model: nn.Module) -> nn.Module:
    """The LM model's head: its one child module besides the backbone."""
    prefix = lm_model.base_model_prefix
    heads = [module for name, module in lm_model.named_children() if name != prefix]
    if len(heads) != 1:
        names = [name for name, _ in lm_model.named_children()]
        raise fail(
            "model.name_or_path",
            type(lm_model).__name__,
            f"the LM model must be a backbone `{prefix}` plus one head module, but has children "
            f"{names}",
            "use a BERT/RoBERTa-like encoder or a GPT/Llama-like decoder",
        )
    return heads[0]


# PEFT's task type for each task model class (what `AutoPeftModelFor...` loads the export with).
PEFT_TASK_TYPES = {
    "AutoModelForSequenceClassification": "SEQ_CLS",
    "AutoModelForTokenClassification": "TOKEN_CLS",
    "AutoModelForQuestionAnswering": "QUESTION_ANS",
    "AutoModelForCausalLM": "CAUSAL_LM",
}


def add_adapters(
    model: TwoPhaseModel, adapter: AdapterConfig, task, seed: int = 0
) -> TwoPhaseModel:
    """LoRA adapters (PEFT) on the task model's backbone, in place: the backbone's own weights are
    frozen, the adapters train, and the task head trains fully (PEFT `modules_to_save`); a task
    whose head is the checkpoint's LM head (generation) keeps it frozen. The LM head of phase 1
    runs on the adapted backbone: a decoder's (pretrained) head is frozen, an encoder's fresh
    masked-LM transform trains (its decoder is tied to the frozen word embeddings). The adapters'
    random initialisation comes from `seed` (the same adapters for the same seed, whatever ran
    before: a sweep's folds and select's retrain start from the same ones)."""
    from peft import LoraConfig, get_peft_model

    task_model = model.task_model
    prefix = task_model.base_model_prefix
    own_head = task.auto_model is AutoModelForCausalLM  # generation: the head is the LM head
    heads = (
        []
        if own_head
        else [
            name
            for name, child in task_model.named_children()
            if name != prefix and any(True for _ in child.parameters())
        ]
    )
    heads += model.fresh_backbone  # newly initialised: they train (and are saved) like the head
    config = LoraConfig(
        task_type=PEFT_TASK_TYPES.get(task.auto_model.__name__),
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=target_modules(task_model, adapter),
        bias=adapter.bias,
        # GPT-2's Conv1D stores its weight transposed: PEFT's flag for that layout.
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in task_model.modules()),
        modules_to_save=heads or None,
        exclude_modules=model.fresh_backbone or None,
    )
    torch.manual_seed(seed)
    try:
        peft_model = get_peft_model(task_model, config)
    except ValueError as err:
        raise fail(
            "model.adapter.target_modules",
            adapter.target_modules,
            f"PEFT cannot put LoRA adapters there ({str(err).splitlines()[0][:300]})",
            f"name linear layers of the backbone, e.g. {_linear_names(task_model)[:8]}, or use "
            "auto / all-linear",
        ) from None
    object.__setattr__(model, "peft_model", peft_model)  # not a submodule: see TwoPhaseModel
    if model.lm_head is not None and model.objective == "causal":
        model.lm_head.requires_grad_(False)  # the checkpoint's LM head: phase 1 trains the adapters
    return model


def target_modules(task_model: nn.Module, adapter: AdapterConfig) -> list[str] | str:
    """PEFT `target_modules` for the backbone: the names given (each must name a module of the
    backbone), PEFT's default for the architecture (`auto`, else every linear layer), or every
    linear layer of the backbone (`all-linear`). Never the task head, which trains fully."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    prefix = task_model.base_model_prefix
    backbone = getattr(task_model, prefix)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules() if name}
    if isinstance(adapter.target_modules, list):
        unknown = [name for name in adapter.target_modules if name not in names]
        if unknown:
            raise fail(
                "model.adapter.target_modules",
                adapter.target_modules,
                f"{unknown} name no module of this {task_model.config.model_type!r} backbone, "
                f"whose linear layers are {_linear_names(task_model)}",
                "pick module names from that list, or use auto / all-linear",
            )
        wanted = adapter.target_modules
    else:
        wanted = None
        if adapter.target_modules == "auto":
            wanted = DEFAULTS.get(task_model.config.model_type)
        if not wanted:
            wanted = _linear_names(task_model)
    # Anchored to the backbone: a head with the same leaf name (e.g. `dense`) stays out.
    alternatives = "|".join(re.escape(name) for name in wanted)
    return rf"^{re.escape(prefix)}\.(?:.*\.)?({alternatives})$"


def _linear_names(task_model: nn.Module) -> list[str]:
    """The distinct leaf names of the backbone's linear layers (GPT-2's Conv1D included)."""
    backbone = getattr(task_model, task_model.base_model_prefix)
    names = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def remove_adapters(model: TwoPhaseModel) -> TwoPhaseModel:
    """The model without its adapters (the base layers and the original heads back in place)."""
    if model.peft_model is not None:
        model.task_model = model.peft_model.unload()
        object.__setattr__(model, "peft_model", None)
        model.requires_grad_(True)  # PEFT froze the backbone (and a decoder's LM head)
    return model


def exported_model(model: TwoPhaseModel, adapter_only: bool, base: str) -> nn.Module:
    """What `export_model` saves: the task model; with adapters, the task model with the adapters
    merged into its weights (a plain transformers model: done in place, the model is not trained
    further), or with `adapter_only` the PEFT model (adapters + task head) whose config names
    `base` (the checkpoint as configured) as its base model."""
    if model.peft_model is None:
        return model.task_model
    if adapter_only:
        model.peft_model.peft_config["default"].base_model_name_or_path = base
        return model.peft_model
    merged = model.peft_model.merge_and_unload()
    object.__setattr__(model, "peft_model", None)
    model.task_model = merged
    return merged


def check_adapter(model: ModelConfig, task) -> None:
    """Before any weight loads: the names of `model.adapter.target_modules` against the
    architecture of the checkpoint's config, built on the meta device (no memory, no weights);
    raises the same problem `target_modules` raises at load. Nothing to check without a list."""
    adapter = model.adapter
    if adapter.type == "none" or not isinstance(adapter.target_modules, list):
        return
    config = AutoConfig.from_pretrained(
        model.name_or_path, **_gguf(model), **task.model_kwargs(["a", "b"])
    )
    with _quiet_transformers(), torch.device("meta"):
        skeleton = task.auto_model.from_config(config)
    target_modules(skeleton, adapter)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own logging at error level inside (its load reports), restored after."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
