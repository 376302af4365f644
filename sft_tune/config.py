"""The run configuration: one YAML file, typed and strict.

Unknown keys and bad values are all reported at once (see `errors.InputError`) before any model
loads. Relative paths in the file are resolved against the file's own folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sft_tune.errors import Problem, problems_from_validation


class _Strict(BaseModel):
    # No inf/nan in any float field: `.inf` trained with loss=inf and exported a model.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AdapterConfig(_Strict):
    """LoRA adapters through both phases (PEFT's `LoraConfig`, same meaning for each knob): the
    backbone's weights stay frozen, the adapters and the task head train; phase 1's LM loss runs
    on the adapted backbone. `type: none` trains every weight (the default)."""

    type: Literal["none", "lora"] = Field(
        "none",
        description="none = full fine-tune; lora = LoRA adapters (PEFT) through both phases "
        "(docs/tasks.md, Adapters).",
    )
    r: int = Field(8, gt=0, le=4096, description="LoRA rank (PEFT `r`).")
    alpha: float = Field(
        16.0, gt=0, description="LoRA scaling numerator (PEFT `lora_alpha`; scale = alpha / r)."
    )
    dropout: float = Field(
        0.05, ge=0, lt=1, description="Dropout on the adapter input (PEFT `lora_dropout`)."
    )
    target_modules: list[str] | Literal["auto", "all-linear"] = Field(
        "auto",
        description="Module names (suffixes) to adapt (PEFT `target_modules`); auto = PEFT's "
        "default for the architecture (attention projections), else every linear layer of the "
        "backbone; all-linear = every linear layer of the backbone; or a list, e.g. [q_proj, "
        "v_proj]. "
        "Never the task head, which trains fully.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases train (PEFT `bias`)."
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value):
        if isinstance(value, list) and (not value or any(not name.strip() for name in value)):
            raise ValueError("must be a non-empty list of module names, or auto / all-linear")
        return value


class ExportConfig(_Strict):
    """How the final model is written."""

    adapter_only: bool = Field(
        False,
        description="With model.adapter lora: write a PEFT adapter folder (adapters + task head, "
        "loadable with peft's AutoPeftModelFor...) instead of the merged plain model.",
    )


class ModelConfig(_Strict):
    """Which pretrained transformer to fine-tune, and for which task."""

    name_or_path: str = Field(description="Hugging Face hub id or local model folder.")
    task: str = Field(
        "classification",
        description="Task head to train: classification (sentiment, topic), ner (token "
        "classification), qa (extractive QA), generation (prompt -> response, decoders); "
        "docs/tasks.md.",
    )
    lm_objective: Literal["auto", "masked", "causal"] = Field(
        "auto",
        description="Language-model loss of phase 1: masked-LM (encoders), next-token (decoders), "
        "or auto (masked for an encoder with a mask token, else next-token).",
    )
    gguf_file: str | None = Field(
        None,
        description="Load the weights (and tokenizer) from this GGUF file inside `name_or_path` "
        "(e.g. SmolLM2-135M-Instruct.Q4_1.gguf); needs pip install 'sft-tune[gguf]' (gguf and "
        "accelerate). Weights are dequantized "
        "to fp32 for training; the exported model is a plain safetensors folder.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass (less memory, ~30% more compute).",
    )
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig,
        description="Train adapters instead of every weight: `{type: none}` (full fine-tune) or "
        "`{type: lora, r, alpha, dropout, target_modules, bias}` (PEFT's LoRA); every field is "
        "searchable.",
    )


class TaskOptions(_Strict):
    """Base of a task's own section of `data` (e.g. `data.ner`): the task module defines the
    fields; `runconfig.parse_config` validates the section with it after the schema here."""

    section: ClassVar[str]
    # The fields that only change how the data is encoded or decoded (searchable per trial).
    encoding_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls, data: DataConfig) -> TaskOptions:
        """The task's options from a parsed data config (its section is a validated mapping)."""
        return cls.model_validate(data.task_sections.get(cls.section, {}))


# The `data` sections of the registered tasks (section -> task name), filled in by
# `tasks.register`: the schema knows no task, only which keys of `data` belong to one.
TASK_SECTIONS: dict[str, str] = {}
# Where a parsed `data` keeps its task sections (an alias no config can use).
_SECTIONS_KEY = "__task_sections__"


class DataConfig(_Strict):
    """Labelled and unlabelled data files, and how to read them."""

    train: Path = Field(
        description="Labelled training file: CSV, TSV, JSONL/JSON, Parquet, or a `datasets` folder "
        "saved with save_to_disk."
    )
    test: Path | None = Field(None, description="Labelled test file, evaluated once after phase 2.")
    unlabelled: list[Path] = Field(
        default_factory=list, description="Unlabelled in-domain text files for the phase-1 LM loss."
    )
    text_column: str = Field("text", description="Column holding the text in labelled files.")
    label_column: str = Field("label", description="Column holding the label in labelled files.")
    unlabelled_text_column: str = Field(
        "text", description="Column holding the text in unlabelled files."
    )
    labels: list[str] | None = Field(
        None,
        description="The label set, in order; inferred (sorted) from the training file when "
        "absent.",
    )
    max_length: int = Field(
        128, ge=8, le=8192, description="Tokens kept per text (longer texts are truncated)."
    )
    labelled_text_for_lm: bool = Field(
        True,
        description="Whether the labelled training texts also feed the phase-1 LM loss (never "
        "held-out texts: a fold's or the validation split's).",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="Stratified share of the labelled training file held out for per-epoch "
        "evaluation "
        "(0 = none).",
    )
    max_unknown_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Most unknown tokens ([UNK]) the tokenizer may make of the labelled texts and "
        "of a sample of 2,000 unlabelled texts; above it the run stops before any model loads, "
        "naming the share and the characters the model cannot read (a model for another "
        "language, e.g. MiniLM on Chinese: ~60%). Every run logs both shares (run.json, "
        "unknown_token_share).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where tokenized data is cached by content (default: "
        "$SFT_TUNE_CACHE/tokenized, "
        "else ~/.cache/sft-tune/tokenized).",
    )
    stride: int = Field(
        32,
        ge=0,
        description="Tokens shared by consecutive windows when a long input (NER sentence, QA "
        "context) is split to fit max_length; below max_length / 2.",
    )
    task_sections: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        validation_alias=_SECTIONS_KEY,
        description="Each registered task's own section of `data` (e.g. `data.ner`), written as "
        "a key of `data` and validated by that task's options.",
        json_schema_extra={"internal": True},
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_task_sections(cls, raw: Any) -> Any:
        """`data.ner`, `data.qa`, ... (a registered task's section) go to `task_sections`; any
        other unknown key is refused as usual."""
        if not isinstance(raw, dict) or not any(key in TASK_SECTIONS for key in raw):
            return raw
        sections = {key: value for key, value in raw.items() if key in TASK_SECTIONS}
        return {
            **{key: value for key, value in raw.items() if key not in TASK_SECTIONS},
            _SECTIONS_KEY: sections,
        }

    @model_serializer(mode="wrap")
    def _flat_task_sections(self, handler) -> dict[str, Any]:
        """Written back as keys of `data`, as the user wrote them (run.json, a sweep's base)."""
        dumped = handler(self)
        return {**{k: v for k, v in dumped.items() if k != "task_sections"}, **self.task_sections}

    @classmethod
    def valid_keys(cls) -> list[str]:
        """The keys `data` takes: its fields and the registered tasks' sections."""
        return sorted({*cls.model_fields, *TASK_SECTIONS} - {"task_sections"})


class Phase1Config(_Strict):
    """Phase 1: minimize L_lm + alpha * L_task through one shared backbone."""

    steps: int = Field(200, ge=0, description="Optimizer steps of phase 1 (0 skips phase 1).")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate of phase 1.")
    alpha: float = Field(
        1.0, ge=0.0, description="Weight of the task loss in phase 1 (0 = LM loss only)."
    )
    lm_batch_size: int = Field(32, ge=1, description="Unlabelled texts per phase-1 step.")
    task_batch_size: int = Field(16, ge=1, description="Labelled examples per phase-1 step.")
    mask_probability: float = Field(
        0.15, gt=0.0, lt=1.0, description="Share of tokens selected for masked-LM (encoders)."
    )
    accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches (of both batch sizes) whose gradients add up to one step.",
    )
    alpha_schedule: Literal["constant", "increase", "decrease"] = Field(
        "constant",
        description="How the task-loss weight moves over phase 1: constant alpha, linearly from "
        "0 up "
        "to alpha (LM first, task later), or from alpha down to 0.",
    )
    head_warmup_steps: int = Field(
        0,
        ge=0,
        description="Steps that train only the LM head on the LM loss, backbone frozen, before "
        "phase 1 "
        "(for checkpoints whose LM head starts fresh, e.g. MiniLM); 0 = none.",
    )
    head_warmup_learning_rate: float = Field(
        1e-3, gt=0.0, le=1.0, description="Learning rate of the LM-head warm-up."
    )


class Phase2Config(_Strict):
    """Phase 2: minimize L_task alone, from the phase-1 weights."""

    epochs: int = Field(3, ge=0, description="Passes over the labelled training data.")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate of phase 2.")
    batch_size: int = Field(16, ge=1, description="Labelled examples per phase-2 micro-batch.")
    accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches whose gradients add up to one optimizer step."
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        description="Stop phase 2 after this many epochs without a better validation score and "
        "keep "
        "the best epoch's weights (0 = off). Needs data.validation_fraction > 0; in a search, each "
        "fold's training part is split again, so the held-out fold stays unseen.",
    )


class OptimizerConfig(_Strict):
    """AdamW with linear warm-up and linear decay, used by both phases (each with its own
    schedule)."""

    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="AdamW decoupled weight decay (not on biases/norms)."
    )
    warmup_ratio: float = Field(
        0.06,
        ge=0.0,
        le=1.0,
        description="Share of each phase's steps spent in linear warm-up, then linear decay to 0.",
    )
    max_grad_norm: float = Field(
        1.0, ge=0.0, description="Gradient clipping norm (0 = no clipping)."
    )
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    head_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=1000.0,
        description="Learning-rate multiplier for the heads (task head and LM head) against the "
        "pretrained backbone; >1 lets freshly created heads catch up.",
    )


class RunConfig(_Strict):
    """One two-phase fine-tuning run."""

    model: ModelConfig
    data: DataConfig
    phase1: Phase1Config = Field(default_factory=Phase1Config)
    phase2: Phase2Config = Field(default_factory=Phase2Config)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    seed: int = Field(
        42, ge=0, description="Seed for the weights of new heads, data order and masking."
    )
    output_dir: Path = Field(
        Path("runs/latest"),
        description="Where the run's files go: the exported model in OUTPUT_DIR/model, run.json, "
        "history.jsonl.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when available."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 autocast compute on a GPU that supports it (refused on one that does "
        "not); auto = bf16 on such a GPU, fp32 otherwise. Weights and AdamW state are fp32 "
        "whatever dtype the checkpoint stores (a bf16 checkpoint is loaded as fp32).",
    )
    log_every: int = Field(
        10,
        ge=1,
        description="Steps between the per-step loss rows a sweep logs to W&B (each phase's last "
        "step too); history.jsonl keeps every step.",
    )


def check_schema(
    raw: dict[str, Any], base_dir: Path | None = None
) -> tuple[RunConfig | None, list[Problem]]:
    """The config mapping checked against the schema and the cross-field rules: (config, the
    cross-field problems), or (None, the schema problems); relative paths are resolved against
    `base_dir`. The task name, the task sections and the task's rules are checked by
    `runconfig.parse_config`."""
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        return None, problems_from_validation(err, RunConfig)
    resolved = resolve_paths(config, base_dir) if base_dir is not None else config
    return resolved, cross_checks(config)


def cross_checks(config: RunConfig) -> list[Problem]:
    """Rules that tie several fields together (each field alone was already checked); a task's own
    rules are its `Task.check`."""
    problems = []
    if config.model.gguf_file:
        missing = [
            name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None
        ]
        if missing:
            problems.append(
                Problem(
                    "model.gguf_file",
                    config.model.gguf_file,
                    f"reading a GGUF checkpoint needs the packages {missing}",
                    "pip install 'sft-tune[gguf]' (gguf and accelerate)",
                )
            )
    if config.export.adapter_only and config.model.adapter.type == "none":
        problems.append(
            Problem(
                "export.adapter_only",
                True,
                "an adapter-only export needs adapters, and model.adapter.type is none",
                "set model.adapter.type: lora, or export.adapter_only: false",
            )
        )
    if config.model.adapter.type == "lora" and importlib.util.find_spec("peft") is None:
        problems.append(
            Problem(
                "model.adapter.type",
                "lora",
                "LoRA adapters need the peft package",
                "pip install peft (a dependency of sft-tune: reinstall it)",
            )
        )
    if config.phase2.early_stopping_patience > 0 and config.data.validation_fraction == 0:
        problems.append(
            Problem(
                "phase2.early_stopping_patience",
                config.phase2.early_stopping_patience,
                "early stopping needs a validation split to score each epoch",
                "set data.validation_fraction above 0 (e.g. 0.1), or early_stopping_patience to 0",
            )
        )
    return problems


def resolve_paths(config: RunConfig, base_dir: Path) -> RunConfig:
    """Make the data paths and output folder absolute, relative to the config file's folder."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base_dir / path).resolve()

    data = config.data.model_copy(
        update={
            "train": absolute(config.data.train),
            "test": absolute(config.data.test) if config.data.test else None,
            "unlabelled": [absolute(p) for p in config.data.unlabelled],
        }
    )
    model = config.model
    local = base_dir / model.name_or_path
    if not Path(model.name_or_path).is_absolute() and local.exists():
        model = model.model_copy(update={"name_or_path": str(local.resolve())})
    return config.model_copy(
        update={"data": data, "model": model, "output_dir": absolute(config.output_dir)}
    )
