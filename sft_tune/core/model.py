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

from sft_tune.config import ModelConfig
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

    @property
    def backbone(self) -> nn.Module:
        return self.task_model.base_model

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
            f"must be a local model folder or a reachable hub id ({err.__class__.__name__}: {str(err).splitlines()[0]})",
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
    model: ModelConfig, task, label_names: Sequence[str], tokenizer, lm_head: bool = True
) -> TwoPhaseModel:
    """Build the task model and attach the LM head of the matching LM class.

    A task whose model is itself a causal LM (generation) brings its own head: the LM loss uses it.
    `lm_head` False (a run without phase 1) builds the task model alone. A GGUF checkpoint is
    de-quantized once: with an LM head, the LM model is read from the file and the task model
    built from its config takes the backbone's weights.
    """
    gguf = _gguf(model)
    # Trained weights are fp32 whatever the checkpoint stores (transformers 5 loads its stored
    # dtype by default: a bf16 checkpoint would train bf16 weights and AdamW state); bf16 is
    # autocast compute only (`precision`). A GGUF checkpoint is de-quantized to fp32.
    weights = {**gguf, "dtype": torch.float32}
    config = AutoConfig.from_pretrained(model.name_or_path, **gguf)
    objective = resolve_objective(model, config, tokenizer)
    lm_class = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    own_head = task.auto_model is lm_class
    separate_head = lm_head and not own_head
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load reports below say what matters, once
    try:
        if separate_head and gguf:  # read (and de-quantize) the file once, for the LM model
            lm_model, info = lm_class.from_pretrained(
                model.name_or_path, output_loading_info=True, **weights
            )
            task_model = _task_model_on(lm_model, task, label_names, model.name_or_path, gguf)
        else:
            task_model = task.auto_model.from_pretrained(
                model.name_or_path, **weights, **task.model_kwargs(label_names)
            )
            if separate_head:
                lm_model, info = lm_class.from_pretrained(
                    model.name_or_path, output_loading_info=True, **weights
                )
    finally:
        hf_logging.set_verbosity(verbosity)
    if task_model.config.pad_token_id is None:
        task_model.config.pad_token_id = tokenizer.pad_token_id
    if model.gradient_checkpointing:
        enable_checkpointing(task_model)
    if own_head:
        return TwoPhaseModel(task_model, lm_head_of(task_model), objective)
    if not lm_head:
        return TwoPhaseModel(task_model, None, objective)
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
    return TwoPhaseModel(task_model, head, objective)


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
            f"the LM model must be a backbone `{prefix}` plus one head module, but has children {names}",
            "use a BERT/RoBERTa-like encoder or a GPT/Llama-like decoder",
        )
    return heads[0]
