"""Extractive question answering (SQuAD v1.1 / v2.0): the answer is a span of the context.

Long contexts are split into overlapping windows (`data.max_length`, `data.stride`), the standard
Hugging Face recipe: a window is one training unit whose start/end positions point at the answer,
or at token 0 (the no-answer position, [CLS] for BERT) when the window does not hold the whole
answer or the question has none. Scoring stitches the windows of a question back together: the best
valid span over all its windows wins, unless no-answer is allowed and the null score beats it.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from transformers import AutoModelForQuestionAnswering

from sft_tune.config import DataConfig, RunConfig, TaskOptions
from sft_tune.core.batches import pad
from sft_tune.core.data import cached, read_table, require_columns
from sft_tune.errors import Problem, fail, first_problems
from sft_tune.tasks.base import Task, window_problems

log = logging.getLogger(__name__)

ANSWER_KINDS = ["answer", "no_answer"]  # `label_names`: what the model may predict
N_BEST_SHOWN = 5  # candidates listed per question by `predict`
SQUAD_SHAPE = '{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}'


@dataclass
class Questions:
    """Questions on contexts as read; `answers[i]` is a list of (text, answer_start), [] = unanswerable."""

    ids: list[str | None]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]]
    titles: list[str | None]
    path: Path

    def __len__(self) -> int:
        return len(self.questions)


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


class QaOptions(TaskOptions):
    """How extractive-QA files are read and answers decoded."""

    section = "qa"

    question_column: str = Field("question", description="JSONL/Parquet column with the question.")
    context_column: str = Field(
        "context", description="JSONL/Parquet column with the context passage."
    )
    answers_column: str = Field(
        "answers",
        description="JSONL/Parquet column with the answers: {text: [...], answer_start: [...]}.",
    )
    group_column: str = Field(
        "title",
        description="Optional column naming the article; folds keep articles (else contexts) whole.",
    )
    max_answer_length: int = Field(
        30, ge=1, description="Longest answer span predicted, in tokens."
    )
    n_best: int = Field(20, ge=1, description="Start and end candidates considered per window.")
    no_answer: Literal["auto", "true", "false"] = Field(
        "auto",
        description='Whether the model may answer "no answer" (SQuAD v2); auto = when the training '
        "data has unanswerable questions.",
    )


class QaTask(Task):
    name = "qa"
    auto_model = AutoModelForQuestionAnswering
    metric = "f1"
    metrics = (
        "exact_match",
        "f1",
        "loss",
        "has_answer_exact_match",
        "has_answer_f1",
        "no_answer_exact_match",
        "no_answer_f1",
    )
    options = QaOptions

    def check(self, config: RunConfig) -> list[Problem]:
        return window_problems(config.data)

    def read(self, path: Path, data: DataConfig, what: str) -> Questions:
        return read_questions(Path(path), data, what, need_answers=True)

    def label_names(self, train: Questions, data: DataConfig) -> list[str]:
        """Not labels but answer kinds: ["answer", "no_answer"] when the model may answer "no answer"
        (`data.qa.no_answer`, auto = the training file has unanswerable questions), else ["answer"].
        Written to run.json, so `predict` knows it too."""
        if data.labels is not None:
            raise fail(
                "data.labels",
                data.labels,
                "the qa task has no label set (answers are spans of the context)",
                "remove `data.labels` from the config",
            )
        no_answer = QaOptions.of(data).no_answer
        allow = no_answer == "true" or (no_answer == "auto" and any(not a for a in train.answers))
        return list(ANSWER_KINDS) if allow else ANSWER_KINDS[:1]

    def check_labels(self, labelled: Questions, names: Sequence[str], path: Path) -> None:
        """Answers were checked against their contexts when read; here only a mismatch is noted."""
        if "no_answer" not in names and any(not a for a in labelled.answers):
            log.warning(
                '%s has unanswerable questions, but the model may not answer "no answer" (data.qa.no_answer)',
                path,
            )

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

    def texts(self, labelled: Questions) -> list[str]:
        return labelled.contexts

    def strata(self, labelled: Questions) -> list[str]:
        return ["answerable" if answers else "unanswerable" for answers in labelled.answers]

    def groups(self, labelled: Questions) -> list[Any]:
        """The article (title) where known, else the context: no context straddles a split."""
        return [
            ("title", t) if t else ("context", c)
            for t, c in zip(labelled.titles, labelled.contexts)
        ]

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
        self, model, tokenizer, input_path: Path, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"id"?, "question", "answer", "score", "start", "end", "n_best"}` per question; the input is
        read, checked and tokenized before this returns (errors come before any output)."""
        questions = read_questions(Path(input_path), data, "input file", need_answers=False)
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
            # Windows come in question order: every question whose last window is done can be answered.
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


# --- Reading ---------------------------------------------------------------------------------


def read_questions(path: Path, data: DataConfig, what: str, need_answers: bool) -> Questions:
    """A SQuAD JSON file (an object with "data") or a table with question/context(/answers) columns."""
    if path.is_file() and path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise fail(
                str(path),
                "an empty file",
                f"the {what} must not be empty",
                "point to a SQuAD JSON file or a JSONL file with question/context/answers rows",
            )
        try:
            raw = json.loads(text)
        except ValueError:
            raw = None  # JSON Lines in a .json file: a table
        if isinstance(raw, dict):
            return _read_squad(path, raw, what, need_answers)
    return _read_rows(path, data, what, need_answers)


def _read_squad(path: Path, raw: dict, what: str, need_answers: bool) -> Questions:
    articles = raw.get("data")
    if not isinstance(articles, list) or not articles:
        raise fail(
            f"{path} key 'data'",
            articles if "data" in raw else f"keys {sorted(raw)}",
            f"a JSON {what} must be SQuAD-shaped: {SQUAD_SHAPE}",
            "convert it to that shape, or to JSON Lines with question/context/answers columns",
        )
    found = Questions([], [], [], [], [], path)
    problems: list[Problem] = []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            problems.append(
                Problem(
                    f"{path} data[{a}]",
                    sorted(article) if isinstance(article, dict) else article,
                    "every article must have a 'paragraphs' list",
                    f"use the SQuAD shape {SQUAD_SHAPE}",
                )
            )
            continue
        title = (
            article.get("title")
            if isinstance(article.get("title"), str) and article.get("title").strip()
            else None
        )
        for p, paragraph in enumerate(paragraphs):
            where = f"{path} data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip() or not isinstance(qas, list):
                problems.append(
                    Problem(
                        where,
                        sorted(paragraph) if isinstance(paragraph, dict) else paragraph,
                        "every paragraph needs a non-empty 'context' text and a 'qas' list",
                        "add the missing key or fix its value",
                    )
                )
                continue
            for q, qa in enumerate(qas):
                _add_squad_question(
                    found,
                    qa,
                    context,
                    title,
                    f"data[{a}].paragraphs[{p}].qas[{q}]",
                    need_answers,
                    problems,
                )
    _raise(problems, path)
    if not found.questions:
        raise fail(
            str(path),
            "0 questions",
            f"the {what} must hold at least one question",
            "add paragraphs with 'qas'",
        )
    return found


def _add_squad_question(
    found: Questions,
    qa: Any,
    context: str,
    title: str | None,
    position: str,
    need_answers: bool,
    problems: list[Problem],
) -> None:
    if not isinstance(qa, dict):
        problems.append(
            Problem(
                f"{found.path} {position}",
                qa,
                "every question must be an object with 'id', 'question' and 'answers'",
                "fix that entry",
            )
        )
        return
    qid = qa.get("id")
    where = f"{found.path} question {qid!r}" if qid is not None else f"{found.path} {position}"
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(
            Problem(
                where,
                question,
                "'question' must be non-empty text",
                "fill in the question or remove the entry",
            )
        )
        return
    answers: list[tuple[str, int]] = []
    if need_answers:
        impossible = qa.get("is_impossible", None)
        raw = qa.get("answers", [] if impossible is True else None)
        if not isinstance(raw, list):
            problems.append(
                Problem(
                    where,
                    raw,
                    '\'answers\' must be a list of {"text", "answer_start"} ([] and "is_impossible": true for an unanswerable question)',
                    "add the answers",
                )
            )
            return
        if impossible is True and raw:
            problems.append(
                Problem(
                    where,
                    raw,
                    'a question with "is_impossible": true must have no answers',
                    "empty 'answers' (SQuAD v2 keeps them as 'plausible_answers') or set is_impossible to false",
                )
            )
            return
        if impossible is False and not raw:
            problems.append(
                Problem(
                    where,
                    raw,
                    'a question with "is_impossible": false needs at least one answer',
                    "add its answers, or set is_impossible to true",
                )
            )
            return
        answers = _checked_answers(raw, context, where, problems)
        if answers is None:
            return
    found.ids.append(str(qid) if qid is not None else None)
    found.questions.append(question)
    found.contexts.append(context)
    found.answers.append(answers)
    found.titles.append(title)


def _read_rows(path: Path, data: DataConfig, what: str, need_answers: bool) -> Questions:
    qa = QaOptions.of(data)
    table = read_table(path, what)
    require_columns(
        table,
        [qa.question_column, qa.context_column] + ([qa.answers_column] if need_answers else []),
        path,
        what,
    )
    size = len(table)
    ids = (
        [str(v) if v is not None else None for v in table["id"]]
        if "id" in table.column_names
        else [None] * size
    )
    titles = table[qa.group_column] if qa.group_column in table.column_names else [None] * size
    answers_raw = table[qa.answers_column] if need_answers else [[]] * size
    found = Questions([], [], [], [], [], path)
    problems: list[Problem] = []
    for row, (qid, question, context, raw, title) in enumerate(
        zip(ids, table[qa.question_column], table[qa.context_column], answers_raw, titles)
    ):
        where = f"{path} row {row + 1}" + (f" (id {qid!r})" if qid is not None else "")
        bad = [
            (key, column, value)
            for key, column, value in (
                ("question_column", qa.question_column, question),
                ("context_column", qa.context_column, context),
            )
            if not isinstance(value, str) or not value.strip()
        ]
        if bad:
            key, column, value = bad[0]
            problems.append(
                Problem(
                    f"{where} column {column!r}",
                    value,
                    "questions and contexts must be non-empty text",
                    f"fill or remove the row, or point `data.qa.{key}` at the right column",
                )
            )
            continue
        answers = (
            _checked_answers(
                _answer_pairs(raw, f"{where} column {qa.answers_column!r}", problems),
                context,
                where,
                problems,
            )
            if need_answers
            else []
        )
        if answers is None:
            continue
        found.ids.append(qid)
        found.questions.append(question)
        found.contexts.append(context)
        found.answers.append(answers)
        found.titles.append(str(title) if isinstance(title, str) and title.strip() else None)
    _raise(problems, path)
    return found


def _answer_pairs(raw: Any, where: str, problems: list[Problem]) -> list[Any] | None:
    """A row's answers as a list of {"text", "answer_start"}: the HF `squad` layout (a dict of
    parallel lists) or a list of dicts."""
    if (
        isinstance(raw, dict)
        and isinstance(raw.get("text"), list)
        and isinstance(raw.get("answer_start"), list)
        and len(raw["text"]) == len(raw["answer_start"])
    ):
        return [{"text": t, "answer_start": s} for t, s in zip(raw["text"], raw["answer_start"])]
    if isinstance(raw, list):
        return raw
    problems.append(
        Problem(
            where,
            raw,
            'answers must be {"text": [...], "answer_start": [...]} (equal lengths; empty = unanswerable) or a list of {"text", "answer_start"}',
            "rewrite the answers in one of those layouts",
        )
    )
    return None


def _checked_answers(
    raw: list[Any] | None, context: str, where: str, problems: list[Problem]
) -> list[tuple[str, int]] | None:
    """(text, start) pairs, each found at its answer_start in the context; None after a problem."""
    if raw is None:
        return None
    answers = []
    for answer in raw:
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if (
            not isinstance(text, str)
            or not text.strip()
            or not isinstance(start, int)
            or isinstance(start, bool)
        ):
            problems.append(
                Problem(
                    where,
                    answer,
                    "every answer needs a non-empty 'text' and an integer 'answer_start'",
                    "fix the answer",
                )
            )
            return None
        if (
            not (0 <= start and start + len(text) <= len(context))
            or context[start : start + len(text)] != text
        ):
            places = [m.start() for m in re.finditer(re.escape(text), context)][:5]
            fix = (
                f"set answer_start to where the text occurs: {places}"
                if places
                else "the text does not occur in the context at all: fix the text or the context"
            )
            problems.append(
                Problem(
                    where,
                    {
                        "text": text,
                        "answer_start": start,
                        "context there": context[max(start, 0) : max(start, 0) + len(text)],
                    },
                    f"context[answer_start : answer_start + len(text)] must equal the answer text (context length {len(context)})",
                    fix,
                )
            )
            return None
        answers.append((text, start))
    return answers


def _raise(problems: list[Problem], path: Path) -> None:
    if problems:
        raise first_problems(problems, f"{path}: invalid QA data")


# --- Windows -------------------------------------------------------------------------------


def tokenize_windows(labelled: Questions, tokenizer, data: DataConfig) -> dict[str, Any]:
    """Question + context windows (the HF recipe), JSON-able: ids, token types, context offsets and
    each window's question index."""
    if not getattr(tokenizer, "is_fast", False):
        raise fail(
            "model.name_or_path",
            type(tokenizer).__name__,
            "extractive QA needs a fast (Rust) tokenizer: answers are mapped through its character offsets",
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
    """Every window must hold more context tokens than the stride (the tokenizer panics otherwise)."""
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
            f"the question ({lengths[worst]} tokens) and {special} special tokens leave {room} context tokens per window, which must be more than data.stride ({data.stride})",
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


# The official SQuAD v2.0 evaluation (evaluate-v2.0.py, https://rajpurkar.github.io/SQuAD-explorer/):
# normalize_answer, get_tokens, compute_exact and compute_f1, here as small functions (no library
# on this machine ships them offline). Scores are fractions in [0, 1], not percentages.


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
