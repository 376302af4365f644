"""The fold loop: k-fold cross-validation of one configuration, wherever the trial runs.

The driver reads and tokenizes the data once (`prepare_data`) and shares it through the Ray
object store. A trial runs all its folds in one place: its own Tune trial actor (one worker), or
the ranks of a Ray Train `TorchTrainer` worker group (several workers, DDP). Both run the same
`run_folds`, given the place's `report`, checkpoint and model-wrapping functions (`TrialPlace`).
For each fold, both phases train on the other folds plus the unlabelled pool (never the held-out
fold's texts), then the held-out fold is scored and the running mean is reported with a
checkpoint, so a scheduler can stop weak trials after the first folds and a retried, resumed or
finished trial goes on at the next fold.

A trial process keeps what it loaded between the trials it serves (`ProcessCache`): a reused Tune
actor does not fetch the data, load the tokenizer or call `from_pretrained` again; it resets the
model per fold from a pristine CPU copy of the pretrained weights.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core import data as data_module
from sft_tune.core.loop import Runtime, evaluate, fit, seed_everything, uses_bf16
from sft_tune.core.model import add_adapters, load_base_model, load_tokenizer, remove_adapters
from sft_tune.core.prepare import PreparedData
from sft_tune.sweep.contract import TrialJob
from sft_tune.sweep.encodings import SharedData
from sft_tune.sweep.faults import TrialFaults
from sft_tune.sweep.folder import FOLDS_FILE, HISTORY_FILE, REPLAYED, last_fold_state
from sft_tune.tasks import get_task


class ProcessCache:
    """What a trial process keeps between the trials it serves (a reused Tune trial actor): the
    shared data it fetched, the tokenizer, and the model with a pristine CPU copy of its
    pretrained weights (and of the new heads, seeded by `seed`). One of each: a sweep has one data
    set and, unless the model itself is searched, one model."""

    def __init__(self) -> None:
        self._data: tuple[str, PreparedData] | None = None
        self._tokenizer: tuple[str, Any] | None = None
        self._model: tuple[str, Any, dict[str, Any]] | None = None
        self._adapters: tuple[str, dict[str, Any]] | None = None
        self.model_loads = 0  # from_pretrained calls in this process (tests, bench)

    def data(self, shared: SharedData, config: RunConfig, task) -> PreparedData:
        """The encoded data of this config (`SharedData`: the driver's encodings, or the one the
        sweep's encoding store makes for it), mapped from the object store once per process
        until a trial needs another encoding."""
        import ray

        ref = shared.ref(config, task)
        if self._data is None or self._data[0] != ref.hex():
            self._data = None  # let the previous encoding go before the next one maps
            self._data = (ref.hex(), ray.get(ref))
        return self._data[1]

    def tokenizer(self, config: RunConfig, task):
        key = json.dumps([config.model.model_dump(mode="json", exclude={"adapter"}), task.name])
        if self._tokenizer is None or self._tokenizer[0] != key:
            self._tokenizer = (key, load_tokenizer(config.model, task))
        return self._tokenizer[1]

    def model(
        self, config: RunConfig, task, label_names: Sequence[str], tokenizer, lm_head: bool
    ) -> tuple[Any, dict[str, Any]]:
        """The model of this config and its pristine weights (`reset` loads them into it).
        `lm_head`: whether the sweep can run phase 1 (its data has LM texts); then every trial of
        the process shares one model with the LM head (phase 2 never touches it), else none has one.

        The pretrained model is loaded once per process and model config (adapters aside), with
        a pristine CPU copy of all its weights. With LoRA adapters, only the adapters and the
        heads train: the pristine copy of a trial is theirs alone (seeded: every fold starts
        from the same adapters), and a trial with other adapters (another `r`, ...) swaps them on
        the same base weights, restored from the base copy, without loading the model again."""
        key = json.dumps(
            [
                config.model.model_dump(mode="json", exclude={"adapter"}),
                list(label_names),
                config.seed,
                lm_head,
            ]
        )
        if self._model is None or self._model[0] != key:
            self._model = self._adapters = None  # let the previous model go before the next loads
            seed_everything(config.seed)
            model = load_base_model(config.model, task, label_names, tokenizer, lm_head=lm_head)
            base = {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in model.state_dict().items()
            }
            self._model = (key, model, base)
            self._adapters = (_NO_ADAPTERS, base)
            self.model_loads += 1
        _, model, base = self._model
        adapter = config.model.adapter
        adapter_key = (
            _NO_ADAPTERS
            if adapter.type == "none"
            else json.dumps([adapter.model_dump(mode="json"), config.seed])
        )
        if self._adapters[0] != adapter_key:
            remove_adapters(model)
            model.load_state_dict(base)  # the base weights as loaded (a full fine-tune moves them)
            pristine = base
            if adapter.type != "none":
                add_adapters(model, adapter, task, seed=config.seed)
                pristine = {
                    name: p.detach().to("cpu", copy=True)
                    for name, p in model.named_parameters()
                    if p.requires_grad
                }
            self._adapters = (adapter_key, pristine)
        return model, self._adapters[1]


def reset(model, pristine: dict[str, Any]) -> None:
    """The model's weights back to `pristine` (all of them; with adapters, the trainable ones:
    the frozen base weights never change)."""
    model.load_state_dict(pristine, strict=model.peft_model is None)


_NO_ADAPTERS = "none"


CACHE = ProcessCache()


def cross_validate(
    config: RunConfig,
    data: PreparedData,
    metric: str,
    rt: Runtime,
    start: int = 0,
    scores: list[float] | None = None,
    after_fold=None,
    faults: TrialFaults = TrialFaults(),
    cache: ProcessCache = CACHE,
) -> list[float]:
    """Train and score each fold from `start`; `after_fold(fold, scores, summary, history)` after
    each."""
    task = get_task(config.model.task)
    scores = list(scores or [])
    tokenizer = cache.tokenizer(config, task)
    model, pristine = cache.model(config, task, data.label_names, tokenizer, lm_head=data.lm)
    model.to(rt.device)
    wrapped = rt.wrap(model)
    for fold in range(start, len(data.splits)):
        faults.before_fold()
        began = time.perf_counter()
        seed_everything(config.seed + fold)
        reset(model, pristine)
        result = fit(wrapped, task, data.fit_data(fold, config), config, tokenizer, rt, metric)
        metrics = evaluate(wrapped, task, data.held_out(fold), tokenizer, rt)
        scores.append(metrics[metric])
        diverged = diverged_at(result.history, metrics[metric])
        if after_fold is not None:
            summary = {
                "fold_metrics": metrics,
                **_loss_summary(result.history),
                "fold_seconds": time.perf_counter() - began,
                "trainable_parameters": model.parameter_counts()["trainable"],
                "process_rss_mb": _rss_mb(),
            }
            after_fold(fold, scores, {**summary, **diverged}, result.history)
        if diverged:
            break  # the trial stops here: its weights are NaN or infinite, more folds tell nothing
    return scores


def _rss_mb() -> float:
    """This process's resident memory now, in MiB (flat over a reused actor's trials)."""
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def cuda_peak(device) -> dict[str, float]:
    """`{"cuda_peak_mb": ...}`: the most CUDA memory this process held since the last call (its
    peak is reset, so each fold reports its own); {} on the CPU."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return {"cuda_peak_mb": round(peak, 1)}


def release_memory(device) -> None:
    """After a trial's folds in a process that serves the next trial (a reused actor): the
    optimizer states and activations of the last fold are garbage; give their memory back (the
    cached model and its pristine CPU copy stay). On CUDA, the caching allocator's blocks. On the
    CPU, glibc's: Tune runs each trial in a new thread, and glibc gives each thread its own
    malloc arena, which keeps what the thread freed; without a trim the process grew by a fold's
    working set (about 1 GB for SmolLM2) with every trial (bench/adapters.py)."""
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _malloc_trim()


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): every arena's free memory back to the system (a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS)
        pass


def diverged_at(history: list[dict], score: float) -> dict[str, Any]:
    """`{"diverged": True, "diverged_at": where}` when a training step's loss or the fold's score
    is NaN or infinite (a diverged fold: its score, finite or not, says nothing), else {}."""
    for record in history:
        if not math.isfinite(record["loss"]):
            where = f"phase {record['phase']} step {record['step']} (loss {record['loss']})"
            return {"diverged": True, "diverged_at": where}
    if not math.isfinite(score):
        return {"diverged": True, "diverged_at": f"the held-out score ({score})"}
    return {}


def fold_summary(scores: list[float]) -> dict[str, Any]:
    """Running CV statistics after some folds."""
    return {
        "folds_done": len(scores),
        "cv_mean": statistics.fmean(scores),
        "cv_std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        "fold_scores": json.dumps(scores),
    }


def _loss_summary(history: list[dict]) -> dict[str, float]:
    """Last phase-1 and phase-2 losses of a fold, for the trial's results."""
    summary = {}
    for phase in (1, 2):
        last = [h for h in history if h["phase"] == phase][-1:]
        for key in ("lm_loss", "task_loss", "loss"):
            if last and last[0][key] == last[0][key]:  # skip NaN (not computed)
                summary[f"phase{phase}_{key}"] = last[0][key]
    return summary


@dataclass
class TrialPlace:
    """Where a trial's folds run, as the functions the fold loop needs: `report(metrics, folder)`
    hands one fold's metrics (and, from rank 0, the folder to checkpoint) to Tune or Train,
    `saved()` is the fold state of the checkpoint to go on from (None for a fresh start), and
    `wrap` prepares the model for the place (DDP in a Train worker group); `nodes` are the Ray
    node ids its ranks run on (each rank's, in rank order)."""

    report: Callable[[dict[str, Any], str | None], None]
    saved: Callable[[], dict[str, Any] | None]
    device: Any
    rank: int = 0
    world_size: int = 1
    wrap: Callable[[Any], Any] = lambda model: model
    nodes: list[str] | None = None


def run_folds(job: TrialJob, place: TrialPlace, cache: ProcessCache = CACHE) -> None:
    """All folds of one trial (from the first one not in its checkpoint), one report per fold.

    `job` is what the trainable hands every place (`contract.TrialJob`). It writes nothing but its
    reports: what the driver records comes to it through them (the trial may run on another
    node)."""
    config = job.run_config
    passes = data_module.TOKENIZATION_PASSES
    data = cache.data(job.data, config, get_task(config.model.task))
    saved = place.saved() or {"scores": [], "metrics": None}
    scores = saved["scores"]
    if len(scores) >= len(data.splits) or (saved["metrics"] or {}).get("diverged"):
        # Every fold finished before, or one diverged (a restored trial whose last fold was
        # checkpointed): hand Tune the final result again, marked so that no callback counts
        # that fold twice.
        place.report({**saved["metrics"], REPLAYED: True}, None)
        return
    rt = Runtime(
        device=place.device,
        bf16=uses_bf16(config, place.device),
        rank=place.rank,
        world_size=place.world_size,
        progress=False,
        wrap=place.wrap,
    )

    most = {"mb": (saved["metrics"] or {}).get("cuda_peak_max_mb", 0.0)}
    # Training and scoring seconds of the trial's folds so far (its cost; retries included).
    spent = {"s": (saved["metrics"] or {}).get("fold_seconds_total", 0.0)}

    def peaks(fold_peak: dict[str, float]) -> dict[str, float]:
        """This fold's CUDA peak and the largest of the trial's folds so far (retries included)."""
        if not fold_peak:
            return {}
        most["mb"] = max(most["mb"], fold_peak["cuda_peak_mb"])
        return {**fold_peak, "cuda_peak_max_mb": most["mb"]}

    def after_fold(
        fold: int, scores: list[float], summary: dict[str, Any], history: list[dict]
    ) -> None:
        spent["s"] += summary["fold_seconds"]
        metrics = {
            "sweep_trial_id": job.trial_id,
            "fold_seconds_total": spent["s"],
            "fold": fold + 1,
            "fold_score": scores[-1],
            **fold_summary(scores),
            **_flat(summary),
            # this trial's own (a reused actor's count goes on from trial to trial)
            "worker_tokenization_passes": data_module.TOKENIZATION_PASSES - passes,
            "encoding": data.digest,
            "process_model_loads": cache.model_loads,
            "pid": os.getpid(),
            "nodes": json.dumps(place.nodes),  # a string, like fold_scores: Tune logs scalars
            **peaks(cuda_peak(place.device)),
        }
        # The driver logs the fold in events.jsonl when this report reaches it (`tuner.FoldEvents`):
        # a trial the scheduler stops ends inside the report, so nothing after it would run.
        with tempfile.TemporaryDirectory() as folder:
            if place.rank == 0:
                (Path(folder) / FOLDS_FILE).write_text(
                    json.dumps({"scores": scores, "metrics": metrics})
                )
                (Path(folder) / HISTORY_FILE).write_text(
                    "".join(json.dumps(h) + "\n" for h in history)
                )
            place.report(metrics, folder if place.rank == 0 else None)

    try:
        cross_validate(
            config,
            data,
            job.metric,
            rt,
            len(scores),
            scores,
            after_fold,
            job.faults,
            cache,
        )
    finally:
        release_memory(place.device)
    job.faults.after_last_fold(place.rank)


def read_saved(checkpoint) -> dict[str, Any] | None:
    """The fold state inside a fold checkpoint (a `ray.train.Checkpoint`, local or on URI
    storage)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / FOLDS_FILE).read_text())


def _resume_from(job: TrialJob):
    """The checkpoint a trial that finishes a stopped one starts from (its own comes first)."""
    import ray.train

    return ray.train.Checkpoint(job.resume_from) if job.resume_from else None


def run_in_actor(job: TrialJob, cpus: float) -> None:
    """A 1-worker trial: its folds run right here, in the Tune trial actor, on the actor's CPUs
    (torch threads) and GPU (Ray sets CUDA_VISIBLE_DEVICES to the one it assigned)."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    device = trial_device(ray.get_gpu_ids(), job.run_config.device)

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    def saved() -> dict[str, Any] | None:
        # Tune's saved state may name an older checkpoint than the trial's newest (a driver
        # killed between two saves of its state): go on from the newest fold state there is.
        states = [
            read_saved(tune.get_checkpoint() or _resume_from(job)),
            last_fold_state(job.trial_folder),
        ]
        return max((s for s in states if s), key=lambda s: len(s["scores"]), default=None)

    place = TrialPlace(
        report,
        saved,
        device,
        nodes=[ray.get_runtime_context().get_node_id()],
    )
    run_folds(job, place)


def trial_device(assigned: list, wanted: str | None):
    """The device of a 1-worker trial: the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES to
    it; a fractional share is a share of that GPU), checked against torch, else the CPU. A GPU
    that torch cannot use is an error that says why, never a silent fall-back to the CPU."""
    import torch

    if not assigned or wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Ray assigned this trial GPU {', '.join(str(g) for g in assigned)}, but torch "
            f"{torch.__version__} sees no CUDA device (a CPU build of torch, or no driver): "
            "install a CUDA build of torch on the GPU nodes, or set gpus_per_worker to 0"
        )
    return torch.device("cuda")


def ddp_worker(config: dict[str, TrialJob]) -> None:
    """One rank of a multi-worker trial's TorchTrainer: the same folds, DDP across the ranks
    (`config` is the trainer's train_loop_config, which Ray Train wants as a dict: {"job": job})."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed

    job = config["job"]
    context = ray.train.get_context()
    nodes = [None] * context.get_world_size()
    torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None
        )

    def wrap(model):
        return ray.train.torch.prepare_model(
            model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    saved = lambda: read_saved(ray.train.get_checkpoint() or _resume_from(job))  # noqa: E731
    run_folds(
        job,
        TrialPlace(
            report,
            saved,
            ray.train.torch.get_device(),
            context.get_world_rank(),
            context.get_world_size(),
            wrap,
            nodes,
        ),
    )


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        else:
            flat[key] = value
    return flat
