"""Extractive QA input: SQuAD v1.1 / v2.0 JSON or a table with question/context/answers columns,
every answer checked against its context."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sft_tune.config import DataConfig, RunConfig, TaskOptions
from sft_tune.core.files import read_table, require_columns
from sft_tune.errors import Problem, fail, first_problems
from sft_tune.tasks.base import TaskFiles, window_problems

log = logging.getLogger(__name__)

ANSWER_KINDS = ["answer", "no_answer"]  # `label_names`: what the model may predict
SQUAD_SHAPE = (
    '{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": '
    '[{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}'
)


@dataclass
class Questions:
    """Questions on contexts as read; `answers[i]` is a list of (text, answer_start), [] =
    unanswerable."""

    ids: list[str | None]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]]
    titles: list[str | None]
    path: Path

    def __len__(self) -> int:
        return len(self.questions)


class QaOptions(TaskOptions):
    """How extractive-QA files are read and answers decoded."""

    section = "qa"
    # What a search may vary per trial (the data is encoded again for each value); the other
    # fields decide how the files are read, which a sweep keeps fixed.
    encoding_fields = ("max_answer_length", "n_best")

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
        description="Optional column naming the article; folds keep articles (else contexts) "
        "whole.",
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


class QaFiles(TaskFiles):
    name = "qa"
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

    def metric_problems(self, metric: str, train: Questions) -> list[Problem]:
        """The has_answer_* and no_answer_* scores split the questions into answerable and
        unanswerable ones: data without an unanswerable question (SQuAD v1) has neither split."""
        if metric.startswith(("has_answer_", "no_answer_")) and all(train.answers):
            return [
                Problem(
                    "search.metric",
                    metric,
                    f"{metric} is scored only on data with unanswerable questions (SQuAD v2), "
                    f"and every question of {train.path} has an answer",
                    "use f1 or exact_match",
                )
            ]
        return []

    def label_names(self, train: Questions, data: DataConfig) -> list[str]:
        """Not labels but answer kinds: ["answer", "no_answer"] when the model may answer "no
        answer" (`data.qa.no_answer`, auto = the training file has unanswerable questions), else
        ["answer"]. Written to run.json, so `predict` knows it too."""
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
                '%s has unanswerable questions, but the model may not answer "no answer" '
                "(data.qa.no_answer)",
                path,
            )

    def texts(self, labelled: Questions) -> list[str]:
        return labelled.contexts

    def held_out_texts(self, labelled: Questions) -> list[list[str]]:
        """The context and the question: both are the held-out input."""
        return [[c, q] for c, q in zip(labelled.contexts, labelled.questions)]

    def strata(self, labelled: Questions) -> list[str]:
        return ["answerable" if answers else "unanswerable" for answers in labelled.answers]

    def groups(self, labelled: Questions) -> list[Any]:
        """The article (title) where known, else the context: no context straddles a split."""
        return [
            ("title", t) if t else ("context", c)
            for t, c in zip(labelled.titles, labelled.contexts)
        ]

    def read_input(self, path: Path, data: DataConfig) -> Questions:
        """The questions on their contexts (answers not needed), checked."""
        return read_questions(Path(path), data, "input file", need_answers=False)


# --- Reading ---------------------------------------------------------------------------------


def read_questions(path: Path, data: DataConfig, what: str, need_answers: bool) -> Questions:
    """A SQuAD JSON file (an object with "data") or a table with question/context(/answers)
    columns."""
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
                    '\'answers\' must be a list of {"text", "answer_start"} ([] and '
                    '"is_impossible": true for an unanswerable question)',
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
                    "empty 'answers' (SQuAD v2 keeps them as 'plausible_answers') or set "
                    "is_impossible to false",
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
    columns = {
        "data.qa.question_column": qa.question_column,
        "data.qa.context_column": qa.context_column,
    }
    if need_answers:
        columns["data.qa.answers_column"] = qa.answers_column
    require_columns(table, columns, path, what)
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
            'answers must be {"text": [...], "answer_start": [...]} (equal lengths; empty = '
            'unanswerable) or a list of {"text", "answer_start"}',
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
                    "context[answer_start : answer_start + len(text)] must equal the answer "
                    f"text (context length {len(context)})",
                    fix,
                )
            )
            return None
        answers.append((text, start))
    return answers


def _raise(problems: list[Problem], path: Path) -> None:
    if problems:
        raise first_problems(problems, f"{path}: invalid QA data")
