"""Extractive question answering (SQuAD v1.1 / v2.0): the answer is a span of the context.

Long contexts are split into overlapping windows (`data.max_length`, `data.stride`), the standard
Hugging Face recipe: a window is one training unit whose start/end positions point at the answer,
or at token 0 (the no-answer position, [CLS] for BERT) when the window does not hold the whole
answer or the question has none. Scoring stitches the windows of a question back together: the best
valid span over all its windows wins, unless no-answer is allowed and the null score beats it.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering

from sft_tune.config import DataConfig
from sft_tune.core.batches import pad
from sft_tune.core.data import cached
from sft_tune.errors import fail
from sft_tune.tasks.base import Task
from sft_tune.tasks.qa.files import QaFiles, QaOptions, Questions

N_BEST_SHOWN = 5  # candidates listed per question by `predict`


@dataclass
class QaWindows:
    """Tokenized windows (the training units) and what scoring needs per question. JSON-able."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    offsets: list[
        list[list[int] | None]
    ]  # per token: [start, end) in the context, whitespace trimmed; None off-context
    example: list[int]  # window -> question index
    start_positions: list[int]
    end_positions: list[int]
    contexts: list[str]  # per question
    golds: list[list[str]]  # per question: gold answer texts, [] = unanswerable
    settings: dict[str, Any] = field(
        default_factory=dict
    )  # max_answer_length, n_best, allow_no_answer, has_unanswerable

    def __len__(self) -> int:
        return len(self.input_ids)

    def windows_of(self) -> dict[int, list[int]]:
        """Question index -> its window indices, in order."""
        found: dict[int, list[int]] = {}
        for window, question in enumerate(self.example):
            found.setdefault(question, []).append(window)
        return found

    def subset(self, questions: Sequence[int]) -> QaWindows:
        """The windows of these questions (renumbered in the given order)."""
        by_question = self.windows_of()
        picked = [(new, w) for new, q in enumerate(questions) for w in by_question.get(q, [])]
        rows = [w for _, w in picked]
        return QaWindows(
            [self.input_ids[w] for w in rows],
            [self.token_type_ids[w] for w in rows] if self.token_type_ids is not None else None,
            [self.offsets[w] for w in rows],
            [new for new, _ in picked],
            [self.start_positions[w] for w in rows],
            [self.end_positions[w] for w in rows],
            [self.contexts[q] for q in questions],
            [self.golds[q] for q in questions],
            dict(self.settings),
        )

    def decode(
        self,
        question: int,
        windows: Sequence[int],
        logits: dict[int, tuple[np.ndarray, np.ndarray]],
    ) -> Answer:
        """The answer to one question from the (start, end) logits of its windows."""
        settings = self.settings
        return decode_answer(
            [logits[w] for w in windows],
            [self.offsets[w] for w in windows],
            self.contexts[question],
            settings["max_answer_length"],
            settings["n_best"],
            settings["allow_no_answer"],
        )


@dataclass
class Answer:
    """A decoded answer: text ("" = no answer), score (start + end logit, or the null score),
    character offsets into the context (None for no answer) and the ranked candidates."""

    text: str
    score: float
    start: int | None
    end: int | None
    candidates: list[dict[str, Any]]


class QaTask(Task):
    files_class = QaFiles
    auto_model = AutoModelForQuestionAnswering

    def encode(
        self, labelled: Questions, tokenizer, names: Sequence[str], data: DataConfig
    ) -> QaWindows:
        items = [[q, c] for q, c in zip(labelled.questions, labelled.contexts)]
        windows = cached(
            "qa-windows",
            tokenizer,
            {"max_length": data.max_length, "stride": data.stride},
            items,
            lambda: tokenize_windows(labelled, tokenizer, data),
            data.cache_dir,
        )
        return to_windows(windows, labelled, data, "no_answer" in names)

    def collate(
        self, examples: QaWindows, indices: Sequence[int], pad_id: int, side: str
    ) -> dict[str, torch.Tensor]:
        rows = [examples.input_ids[i] for i in indices]
        input_ids, attention_mask = pad(rows, pad_id, side)
        # Left padding (decoders) moves every token right by the row's pad count.
        shift = [input_ids.shape[1] - len(row) if side == "left" else 0 for row in rows]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if examples.token_type_ids is not None:
            batch["token_type_ids"] = pad([examples.token_type_ids[i] for i in indices], 0, side)[0]
        batch["start_positions"] = torch.tensor(
            [examples.start_positions[i] + s for i, s in zip(indices, shift)], dtype=torch.long
        )
        batch["end_positions"] = torch.tensor(
            [examples.end_positions[i] + s for i, s in zip(indices, shift)], dtype=torch.long
        )
        return batch

    def evaluate(
        self, model, examples: QaWindows, batches, pad_id: int, side: str, device
    ) -> dict[str, float]:
        logits, total_loss = {}, 0.0
        for indices in batches:
            found, loss = self.window_logits(model, examples, indices, pad_id, side, device)
            logits.update(zip(indices, found))
            total_loss += loss * len(indices)
        predictions, golds = [], []
        for question, windows in examples.windows_of().items():
            seen = [w for w in windows if w in logits]
            if seen:
                predictions.append(examples.decode(question, seen, logits).text)
                golds.append(examples.golds[question])
        return {
            "loss": total_loss / max(len(logits), 1),
            **squad_scores(predictions, golds, examples.settings["has_unanswerable"]),
        }

    def window_logits(
        self, model, examples: QaWindows, indices: Sequence[int], pad_id: int, side: str, device
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
        """(start, end) logits of each window, padding stripped, and the batch's mean loss."""
        batch = {k: v.to(device) for k, v in self.collate(examples, indices, pad_id, side).items()}
        with torch.no_grad():
            outputs = model(**batch)
        starts, ends = (
            outputs.start_logits.float().cpu().numpy(),
            outputs.end_logits.float().cpu().numpy(),
        )
        width = starts.shape[1]
        found = []
        for row, window in enumerate(indices):
            real = (
                slice(width - len(examples.input_ids[window]), width)
                if side == "left"
                else slice(0, len(examples.input_ids[window]))
            )
            found.append((starts[row, real], ends[row, real]))
        return found, outputs.loss.item()

    def predict(
        self, model, tokenizer, questions: Questions, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"id"?, "question", "answer", "score", "start", "end", "n_best"}` per question
        (`read_input`'s questions); they are tokenized before this returns (errors come before
        any output)."""
        allow = _predict_allows_no_answer(model, data)
        windows = to_windows(tokenize_windows(questions, tokenizer, data), questions, data, allow)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return self._predictions(
            model, questions, windows, pad_id, tokenizer.padding_side, batch_size
        )

    def _predictions(
        self,
        model,
        questions: Questions,
        windows: QaWindows,
        pad_id: int,
        side: str,
        batch_size: int,
    ) -> Iterator[dict[str, Any]]:
        device = next(model.parameters()).device
        by_question = windows.windows_of()
        logits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        next_question = 0
        model.eval()
        for first in range(0, len(windows), batch_size):
            indices = list(range(first, min(first + batch_size, len(windows))))
            logits.update(
                zip(indices, self.window_logits(model, windows, indices, pad_id, side, device)[0])
            )
            # Windows come in question order: every question whose last window is done can be
            # answered.
            while next_question < len(questions) and by_question[next_question][-1] <= indices[-1]:
                answer = windows.decode(next_question, by_question[next_question], logits)
                for window in by_question[next_question]:
                    del logits[window]
                record = (
                    {"id": questions.ids[next_question]}
                    if questions.ids[next_question] is not None
                    else {}
                )
                record.update(
                    question=questions.questions[next_question],
                    answer=answer.text,
                    score=answer.score,
                    start=answer.start,
                    end=answer.end,
                    n_best=answer.candidates[:N_BEST_SHOWN],
                )
                yield record
                next_question += 1


def _predict_allows_no_answer(model, data: DataConfig) -> bool:
    """The config's choice; for auto, what training decided (run.json beside the model), else no."""
    no_answer = QaOptions.of(data).no_answer
    if no_answer != "auto":
        return no_answer == "true"
    run = Path(getattr(model, "name_or_path", "") or ".") / "run.json"
    try:
        return "no_answer" in json.loads(run.read_text()).get("labels", [])
    except (OSError, ValueError):
        return False


# --- Windows -------------------------------------------------------------------------------


def tokenize_windows(labelled: Questions, tokenizer, data: DataConfig) -> dict[str, Any]:
    """Question + context windows (the HF recipe), JSON-able: ids, token types, context offsets and
    each window's question index."""
    if not getattr(tokenizer, "is_fast", False):
        raise fail(
            "model.name_or_path",
            type(tokenizer).__name__,
            "extractive QA needs a fast (Rust) tokenizer: answers are mapped through its "
            "character offsets",
            "use a model whose tokenizer has a tokenizer.json",
        )
    _check_room(labelled, tokenizer, data)
    encoded = tokenizer(
        list(labelled.questions),
        list(labelled.contexts),
        truncation="only_second",
        max_length=data.max_length,
        stride=data.stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    contexts = encoded["overflow_to_sample_mapping"]
    offsets = [
        [
            _trimmed(span, labelled.contexts[contexts[w]]) if sequence == 1 else None
            for span, sequence in zip(encoded["offset_mapping"][w], encoded.sequence_ids(w))
        ]
        for w in range(len(encoded["input_ids"]))
    ]
    token_types = encoded.get("token_type_ids")
    return {
        "input_ids": encoded["input_ids"],
        "token_type_ids": token_types,
        "offsets": offsets,
        "example": list(contexts),
    }


def _trimmed(span: Sequence[int], context: str) -> list[int]:
    """A token's character span without surrounding whitespace: byte-level BPE tokens (GPT-2,
    RoBERTa without trim_offsets) include the space before a word, which must not enter answers."""
    start, end = span
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return [start, end]


def _check_room(labelled: Questions, tokenizer, data: DataConfig) -> None:
    """Every window must hold more context tokens than the stride (the tokenizer panics
    otherwise)."""
    lengths = [
        len(ids)
        for ids in tokenizer(list(labelled.questions), add_special_tokens=False)["input_ids"]
    ]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    room = data.max_length - special - lengths[worst]
    if room <= data.stride:
        name = (
            f"question {labelled.ids[worst]!r}"
            if labelled.ids[worst] is not None
            else f"question {worst + 1}"
        )
        raise fail(
            f"{labelled.path} {name}",
            labelled.questions[worst],
            f"the question ({lengths[worst]} tokens) and {special} special tokens leave {room} "
            f"context tokens per window, which must be more than data.stride ({data.stride})",
            "raise data.max_length, lower data.stride, or shorten the question",
        )


def to_windows(
    windows: dict[str, Any], labelled: Questions, data: DataConfig, allow_no_answer: bool
) -> QaWindows:
    """Tokenized windows plus answer positions and the scoring settings."""
    positions = [
        answer_positions(offsets, labelled.answers[q])
        for offsets, q in zip(windows["offsets"], windows["example"])
    ]
    options = QaOptions.of(data)
    settings = {
        "max_answer_length": options.max_answer_length,
        "n_best": options.n_best,
        "allow_no_answer": allow_no_answer,
        "has_unanswerable": any(not a for a in labelled.answers),
    }
    return QaWindows(
        windows["input_ids"],
        windows["token_type_ids"],
        windows["offsets"],
        windows["example"],
        [s for s, _ in positions],
        [e for _, e in positions],
        list(labelled.contexts),
        [[text for text, _ in answers] for answers in labelled.answers],
        settings,
    )


def answer_positions(
    offsets: Sequence[Sequence[int] | None], answers: Sequence[tuple[str, int]]
) -> tuple[int, int]:
    """Token (start, end) of the first answer in this window; (0, 0), the no-answer position, when
    there is no answer or the window does not hold all of it."""
    if not answers:
        return 0, 0
    text, start = answers[0]
    end = start + len(text)
    context = [i for i, span in enumerate(offsets) if span is not None]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return 0, 0
    first = min(i for i in context if offsets[i][1] > start)
    last = max(i for i in context if offsets[i][0] < end)
    return first, last


# --- Decoding and scoring -------------------------------------------------------------------


def decode_answer(
    logits: Sequence[tuple[Sequence[float], Sequence[float]]],
    offsets: Sequence[Sequence[Sequence[int] | None]],
    context: str,
    max_answer_length: int,
    n_best: int,
    allow_no_answer: bool,
) -> Answer:
    """The best answer of one question over all its windows.

    Per window, the `n_best` highest start and end logits among context tokens are paired; a pair
    is valid when start <= end and it spans at most `max_answer_length` tokens; its score is
    start_logit + end_logit. The null score is the minimum over windows of start[0] + end[0]; when
    no-answer is allowed and it is higher than the best span, the answer is "".
    """
    spans: dict[tuple[int, int], float] = {}
    null = min(float(start[0]) + float(end[0]) for start, end in logits)
    for (start_logits, end_logits), spans_of_tokens in zip(logits, offsets):
        start_logits, end_logits = (
            np.asarray(start_logits, dtype=float),
            np.asarray(end_logits, dtype=float),
        )
        in_context = np.array([span is not None for span in spans_of_tokens])
        starts = _top(start_logits, in_context, n_best)
        ends = _top(end_logits, in_context, n_best)
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                key = (spans_of_tokens[s][0], spans_of_tokens[e][1])
                if key[0] >= key[1]:
                    continue  # whitespace-only tokens
                score = float(start_logits[s] + end_logits[e])
                if score > spans.get(key, -np.inf):  # overlapping windows: keep the best
                    spans[key] = score
    candidates = [
        {"answer": context[a:b], "score": score, "start": a, "end": b}
        for (a, b), score in spans.items()
    ]
    if allow_no_answer:
        candidates.append({"answer": "", "score": null, "start": None, "end": None})
    candidates.sort(key=lambda c: -c["score"])
    best = next((c for c in candidates if c["start"] is not None), None)
    if best is None or (allow_no_answer and null > best["score"]):
        return Answer("", null, None, None, candidates)
    return Answer(best["answer"], best["score"], best["start"], best["end"], candidates)


def _top(logits: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest logits among the allowed positions."""
    index = np.flatnonzero(allowed)
    return index[np.argsort(-logits[index], kind="stable")[:k]].tolist()


# The official SQuAD v2.0 evaluation (evaluate-v2.0.py,
# https://rajpurkar.github.io/SQuAD-explorer/): normalize_answer, get_tokens, compute_exact and
# compute_f1, here as small functions (no library on this machine ships them offline). Scores are
# fractions in [0, 1], not percentages.


PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    gold_tokens, predicted = answer_tokens(gold), answer_tokens(prediction)
    if not gold_tokens or not predicted:
        return float(gold_tokens == predicted)  # no-answer: 1 if both are empty, else 0
    same = sum((Counter(gold_tokens) & Counter(predicted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[str], prediction: str) -> tuple[float, float]:
    """(exact, f1) of one question: the max over its gold answers; unanswerable gold = [""]."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_score(g, prediction) for g in golds), max(
        f1_score(g, prediction) for g in golds
    )


def squad_scores(
    predictions: Sequence[str], golds: Sequence[Sequence[str]], has_unanswerable: bool
) -> dict[str, float]:
    """exact_match and f1 over all questions, and (data with unanswerable questions) over the
    answerable (has_answer_*) and unanswerable (no_answer_*) ones; NaN for an empty group."""
    scores = [question_scores(g, p) for g, p in zip(golds, predictions)]

    def mean(group: list[tuple[float, float]], part: int) -> float:
        return float(np.mean([s[part] for s in group])) if group else float("nan")

    result = {"exact_match": mean(scores, 0), "f1": mean(scores, 1)}
    if has_unanswerable:
        answerable = [s for s, g in zip(scores, golds) if g]
        unanswerable = [s for s, g in zip(scores, golds) if not g]
        result.update(
            has_answer_exact_match=mean(answerable, 0),
            has_answer_f1=mean(answerable, 1),
            no_answer_exact_match=mean(unanswerable, 0),
            no_answer_f1=mean(unanswerable, 1),
        )
    return result
