"""The two-phase loop: phase 1 (L_lm + alpha * L_task), then phase 2 (L_task), as plain functions.

`fit` runs both phases on prepared, tokenized data and calls an injected `report(metrics,
checkpoint)` after each evaluation, so the same loop runs in a unit test, in one process, and in
a Ray Train worker (`run.train` is the whole `sft-tune train` run around it: data, model, both
phases, test, export; `sweep.folds` runs it per fold).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from sft_tune.config import OptimizerConfig, RunConfig
from sft_tune.core.batches import MaskingCollator, batch_indices, endless_batches
from sft_tune.core.losses import alpha_at
from sft_tune.core.model import TwoPhaseModel
from sft_tune.errors import fail

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Any], None]
StepLog = Callable[[dict[str, Any]], None]


def no_report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
    """The default `report` hook: do nothing (Ray plugs its own in)."""


@dataclass
class Runtime:
    """Where and how the loop runs: device, precision, DDP rank, and the injected hooks."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    rank: int = 0
    world_size: int = 1
    report: Report = no_report
    on_step: StepLog | None = None
    progress: bool = True
    wrap: Callable[[nn.Module], nn.Module] = lambda model: model  # e.g. DDP in a Ray Train worker

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def uses_bf16(config: RunConfig, device: torch.device) -> bool:
    """bf16 autocast on a CUDA GPU that supports it, unless `precision: fp32` (`auto` runs fp32 on
    one that does not; `bf16` there is refused); CPU always runs fp32. Weights stay fp32."""
    if device.type != "cuda" or config.precision == "fp32":
        return False
    if torch.cuda.is_bf16_supported():
        return True
    if config.precision == "bf16":
        raise fail(
            "precision",
            config.precision,
            f"bf16 needs a GPU that supports it, and {torch.cuda.get_device_name(device)} does not",
            "set precision: fp32 (or auto, which picks fp32 on this GPU)",
        )
    return False


def runtime_for(config: RunConfig, **hooks: Any) -> Runtime:
    """Pick the device and precision the config asks for."""
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    return Runtime(device=device, bf16=uses_bf16(config, device), **hooks)


@dataclass
class FitData:
    """What one fit needs: encoded labelled train/eval sets and the LM token-id lists."""

    train: Any
    lm_ids: list[list[int]]
    eval: Any | None = None


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]

    @property
    def last_eval(self) -> dict[str, Any] | None:
        return self.evaluations[-1] if self.evaluations else None


def make_optimizer(
    model: nn.Module,
    lr: float,
    opt: OptimizerConfig,
    steps: int,
    params: Sequence[nn.Parameter] | None = None,
):
    """AdamW (no decay on biases and norms) with linear warm-up and linear decay over `steps`.

    The heads (every trainable parameter outside the shared backbone: task head, LM head) get
    `lr * opt.head_lr_scale`. `params` restricts the optimizer to those parameters.
    """
    trainable = [
        p for p in (params if params is not None else model.parameters()) if p.requires_grad
    ]
    backbone = {id(p) for p in getattr(unwrap(model), "backbone", model).parameters()}
    groups = []
    for is_head, scale in ((False, 1.0), (True, opt.head_lr_scale)):
        part = [p for p in trainable if (id(p) not in backbone) == is_head]
        groups += [
            {
                "params": [p for p in part if p.ndim >= 2],
                "weight_decay": opt.weight_decay,
                "lr": lr * scale,
            },
            {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr": lr * scale},
        ]
    groups = [group for group in groups if group["params"]]
    try:  # the fused kernel is ~7x faster per update on CPU (bench/core.py) and on GPU
        optimizer = torch.optim.AdamW(
            groups, lr=lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, fused=True
        )
    except (RuntimeError, TypeError):  # a device or dtype the fused kernel does not take
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    warmup = math.ceil(opt.warmup_ratio * steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max(steps, 1))


def train_step(
    model: nn.Module,
    optimizer,
    scheduler,
    micro_batches: Sequence[Any],
    compute: Callable[[Any], Any],
    max_grad_norm: float,
    rt: Runtime,
) -> dict[str, float]:
    """One optimizer step over `micro_batches` (gradient accumulation): `compute(micro)` returns
    the `LossParts` of one micro-batch; gradients are averaged, and under DDP all-reduced only on
    the last micro-batch. Returns the losses averaged over the micro-batches."""
    n = len(micro_batches)
    losses: dict[str, float] = {}
    for i, micro in enumerate(micro_batches):
        last = i == n - 1
        sync = (
            contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        )
        with sync:
            with rt.autocast():
                parts = compute(micro)
            (parts.total / n).backward()
        for key, value in parts.as_floats().items():
            losses[key] = losses.get(key, 0.0) + value / n
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


def clear_gradients(model: nn.Module) -> None:
    """No gradient on any parameter: every phase (and the LM-head warm-up) starts from none, so
    its first step is computed from its own loss alone (a new optimizer would otherwise step with
    what an earlier phase left behind, and clip and seed AdamW's moments with it)."""
    model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def training_only(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Inside, only `params` require gradients: backward computes none for the rest (a head tied
    to the word embeddings would otherwise leave its gradient on them); restored on exit."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def unwrap(model: nn.Module) -> TwoPhaseModel:
    """The TwoPhaseModel inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def run_head_warmup(
    model: nn.Module, data: FitData, config: RunConfig, tokenizer, rt: Runtime
) -> list[dict]:
    """Train only the LM head's own weights on the LM loss, the backbone frozen (run under no_grad),
    so that a freshly created head (MiniLM has none) does not send random gradients into the
    backbone when phase 1 starts. Weights the head shares with the backbone (tied embeddings)
    stay as they are and get no gradient (only the head's own weights require one here). Under
    DDP the head gradients are averaged by hand (this bypasses the DDP wrapper, which owns the
    backbone)."""
    inner = unwrap(model)
    shared = {id(p) for p in inner.task_model.parameters()}
    params = [p for p in inner.lm_head.parameters() if id(p) not in shared and p.requires_grad]
    if not params:
        return []
    clear_gradients(model)
    with training_only(inner, params):
        return _head_warmup_steps(inner, params, data, config, tokenizer, rt)


def _head_warmup_steps(
    inner: TwoPhaseModel,
    params: list[nn.Parameter],
    data: FitData,
    config: RunConfig,
    tokenizer,
    rt: Runtime,
) -> list[dict]:
    p1 = config.phase1
    collator = MaskingCollator(
        tokenizer, inner.objective, p1.mask_probability, seed=config.seed * 1000 + 4 + rt.rank
    )
    batches = endless_batches(
        len(data.lm_ids),
        p1.lm_batch_size,
        torch.Generator().manual_seed(config.seed * 1000 + 5),
        rt.rank,
        rt.world_size,
        what="the LM data of the LM-head warm-up",
    )
    optimizer, scheduler = make_optimizer(
        inner,
        p1.head_warmup_learning_rate,
        config.optimizer.model_copy(update={"head_lr_scale": 1.0}),
        p1.head_warmup_steps,
        params,
    )
    inner.train()
    history = []
    bar = _progress(p1.head_warmup_steps, "LM-head warm-up", rt)
    for step in range(1, p1.head_warmup_steps + 1):
        batch = to_device(collator([data.lm_ids[i] for i in next(batches)]), rt.device)
        with rt.autocast():
            loss = inner.lm_loss(**batch, frozen_backbone=True)
        loss.backward()
        if rt.world_size > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= rt.world_size
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(
            _record(
                0,
                step,
                lr,
                {"loss": loss.item(), "lm_loss": loss.item(), "task_loss": float("nan")},
                rt,
                bar,
            )
        )
    bar.close()
    return history


def run_phase1(
    model: nn.Module, task, data: FitData, config: RunConfig, tokenizer, rt: Runtime
) -> list[dict]:
    """Minimize L_lm + alpha * L_task: each micro-batch is one LM batch plus one labelled batch."""
    p1 = config.phase1
    inner = unwrap(model)
    clear_gradients(model)
    collator = MaskingCollator(
        tokenizer, inner.objective, p1.mask_probability, seed=config.seed * 1000 + 1 + rt.rank
    )
    order = torch.Generator().manual_seed(config.seed * 1000 + 2)
    lm_batches = endless_batches(
        len(data.lm_ids), p1.lm_batch_size, order, rt.rank, rt.world_size, what="phase 1's LM data"
    )
    task_batches = endless_batches(
        len(data.train),
        p1.task_batch_size,
        order,
        rt.rank,
        rt.world_size,
        task.lengths(data.train),
        what="phase 1's labelled training data",
    )
    optimizer, scheduler = make_optimizer(model, p1.learning_rate, config.optimizer, p1.steps)

    def compute(micro: tuple[list[int], list[int]], alpha: float):
        lm_indices, task_indices = micro
        lm_batch = to_device(collator([data.lm_ids[i] for i in lm_indices]), rt.device)
        task_batch = to_device(
            task.collate(data.train, task_indices, tokenizer.pad_token_id, tokenizer.padding_side),
            rt.device,
        )
        return model(lm_batch, task_batch, alpha)

    model.train()
    history = []
    bar = _progress(p1.steps, "phase 1", rt)
    for step in range(1, p1.steps + 1):
        alpha = alpha_at(step, p1.steps, p1.alpha, p1.alpha_schedule)
        micro = [(next(lm_batches), next(task_batches)) for _ in range(p1.accumulation_steps)]
        lr = scheduler.get_last_lr()[0]
        losses = train_step(
            model,
            optimizer,
            scheduler,
            micro,
            functools.partial(compute, alpha=alpha),
            config.optimizer.max_grad_norm,
            rt,
        )
        history.append(_record(1, step, lr, {**losses, "alpha": alpha}, rt, bar))
    bar.close()
    return history


def run_phase2(
    model: nn.Module,
    task,
    data: FitData,
    config: RunConfig,
    tokenizer,
    rt: Runtime,
    on_epoch: Callable[[int], bool],
) -> list[dict]:
    """Minimize L_task alone, from the phase-1 weights; `on_epoch(epoch)` evaluates after each
    epoch and returns True to stop early. The schedule stays the one planned for all epochs."""
    p2 = config.phase2
    clear_gradients(model)
    order = torch.Generator().manual_seed(config.seed * 1000 + 3)
    lengths = task.lengths(data.train)
    per_epoch = -(
        -len(batch_indices(len(data.train), p2.batch_size, None, rt.rank, rt.world_size))
        // p2.accumulation_steps
    )
    optimizer, scheduler = make_optimizer(
        model, p2.learning_rate, config.optimizer, per_epoch * p2.epochs
    )

    def compute(indices: list[int]):
        batch = to_device(
            task.collate(data.train, indices, tokenizer.pad_token_id, tokenizer.padding_side),
            rt.device,
        )
        return model(None, batch)

    model.train()
    history = []
    bar = _progress(per_epoch * p2.epochs, "phase 2", rt)
    step = 0
    for epoch in range(1, p2.epochs + 1):
        batches = batch_indices(
            len(data.train), p2.batch_size, order, rt.rank, rt.world_size, lengths
        )
        for start in range(0, len(batches), p2.accumulation_steps):
            step += 1
            lr = scheduler.get_last_lr()[0]
            losses = train_step(
                model,
                optimizer,
                scheduler,
                batches[start : start + p2.accumulation_steps],
                compute,
                config.optimizer.max_grad_norm,
                rt,
            )
            history.append(_record(2, step, lr, losses, rt, bar))
        if on_epoch(epoch):
            break
    bar.close()
    return history


def evaluate(
    model: nn.Module, task, examples: Any, tokenizer, rt: Runtime, batch_size: int = 64
) -> dict[str, float]:
    """Task metrics of the task model on `examples` (every rank scores the whole set), in eval mode
    and without gradients; the model's mode is restored afterwards (the tasks only score)."""
    batches = batch_indices(len(examples), batch_size, None)
    scored = unwrap(model).task_model
    was_training = scored.training
    scored.eval()
    try:
        with torch.no_grad(), rt.autocast():
            return task.evaluate(
                scored, examples, batches, tokenizer.pad_token_id, tokenizer.padding_side, rt.device
            )
    finally:
        scored.train(was_training)


def fit(
    model: nn.Module,
    task,
    data: FitData,
    config: RunConfig,
    tokenizer,
    rt: Runtime,
    metric: str | None = None,
) -> FitResult:
    """Both phases on prepared data; evaluates and calls `rt.report` after phase 1 and each phase-2
    epoch. With `phase2.early_stopping_patience`, phase 2 stops once `metric` (default: the task's)
    has not improved on `data.eval` for that many epochs, and the best epoch's weights are kept."""
    evaluations: list[dict[str, Any]] = []
    metric = metric or task.metric
    patience = config.phase2.early_stopping_patience if data.eval is not None else 0
    best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "state": None}

    def checkpoint_eval(phase: int, epoch: int) -> bool:
        """Evaluate; True when phase 2 should stop early."""
        if data.eval is None:
            return False
        metrics = {
            "phase": phase,
            "epoch": epoch,
            **evaluate(model, task, data.eval, tokenizer, rt),
        }
        evaluations.append(metrics)
        if rt.rank == 0:
            log.info("eval after phase %d epoch %d: %s", phase, epoch, _fmt(metrics))
        rt.report(metrics, None)
        if phase != 2 or not patience:
            return False
        score = metrics[metric] if task.metric_mode(metric) == "max" else -metrics[metric]
        if score > best["score"]:
            best.update(
                score=score,
                epoch=epoch,
                state={k: v.detach().clone() for k, v in unwrap(model).state_dict().items()},
            )
        return epoch - best["epoch"] >= patience

    history = []
    if config.phase1.steps > 0:
        require_lm_data(data, config)
        if config.phase1.head_warmup_steps > 0:
            history += run_head_warmup(model, data, config, tokenizer, rt)
        history += run_phase1(model, task, data, config, tokenizer, rt)
        checkpoint_eval(1, 0)
    history += run_phase2(
        model, task, data, config, tokenizer, rt, lambda epoch: checkpoint_eval(2, epoch)
    )
    if best["state"] is not None:
        unwrap(model).load_state_dict(best["state"])
        log.info(
            "early stopping: kept the weights of phase-2 epoch %d (%s %.4f)",
            best["epoch"],
            metric,
            abs(best["score"]),
        )
    return FitResult(history, evaluations)


def require_lm_data(data: FitData, config: RunConfig) -> None:
    """Phase 1 needs LM text: a split whose LM data is empty (no unlabelled file and
    `data.labelled_text_for_lm: false`, or every unlabelled text a copy of a held-out one) stops
    with what is empty and the fix, before any step."""
    if len(data.lm_ids) == 0:
        source = f"{len(config.data.unlabelled)} unlabelled file(s)" + (
            " plus the training texts" if config.data.labelled_text_for_lm else ""
        )
        raise fail(
            "phase1.steps",
            config.phase1.steps,
            f"phase 1 needs LM text, and this run's LM data is empty ({source}, after leaving "
            "out the held-out texts)",
            "add data.unlabelled files, set data.labelled_text_for_lm: true, or set "
            "phase1.steps: 0",
        )


def _progress(total: int, desc: str, rt: Runtime) -> tqdm:
    """A progress bar (steps, losses, ETA) on rank 0 only."""
    return tqdm(
        total=total,
        desc=desc,
        disable=not rt.progress or rt.rank != 0 or total == 0,
        dynamic_ncols=True,
    )


def _record(
    phase: int, step: int, lr: float, losses: dict[str, float], rt: Runtime, bar: tqdm
) -> dict[str, Any]:
    """One step's log record; shown on the progress bar and passed to `rt.on_step`."""
    record = {"phase": phase, "step": step, "lr": lr, **losses}
    bar.update(1)
    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if not math.isnan(v)}, refresh=False)
    if rt.on_step is not None:
        rt.on_step(record)
    return record


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs (weights init of new heads, dropout)."""
    set_seed(seed)
