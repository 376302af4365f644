"""Token classification (NER): one tag per word, scored by entity-level seqeval F1.

Files. A table (.jsonl, .json, .parquet, .csv or a `save_to_disk` folder, read by `read_table`)
holds one sentence a row: `data.ner.tokens_column` and `data.ner.tags_column` are lists (tags as
text, or ids of a `ClassLabel` feature), `data.ner.document_column` (optional) names the document.
Any other file (.conll, .txt, .iob, .bio, .tsv, no suffix, ...) is CoNLL text: one token a line,
the token in the first column and the tag in the last, blank lines between sentences,
`-DOCSTART-` lines between documents. A line with a tab is split at tabs only (so a token may be a
space character, as U+3000 is in Japanese corpora), other lines at whitespace. `.tsv` is CoNLL here:
a sentence table needs list columns, which TSV cannot hold.

Schemes: IOB1, IOB2, BIOES (`data.ner.tag_scheme`); auto = BIOES when any tag is S- or E-, IOB1
when an entity starts with I- (at sentence start, after O or after another type), else IOB2. The
training file decides and test files are scored in its scheme: seqeval strict mode for IOB2 and
BIOES, conlleval (default) mode for IOB1. An inferred label set is "O" plus every tag of the
scheme for each entity type seen (B-/I- pairs, or B-/I-/E-/S-), so a test file is not refused
for a tag the training file happens to lack.

Sub-words. Each distinct word is tokenized on its own (what `is_split_into_words` does, and it
works with slow tokenizers too); a word that yields no token (BERT drops U+3000) stands as the
unknown token, so that every word is seen. Tokenizers are loaded with `add_prefix_space=True`:
byte-level BPE (GPT-2, RoBERTa, Qwen) needs it to read a word as it reads it mid-sentence
("Ġword"); in transformers 5 SentencePiece classes default to it and WordPiece ignores it.

Prediction input: a table with `data.text_column` (raw text, split into words at whitespace and
around punctuation, as CoNLL English is; text in a language written without spaces, or tokenized
another way, should come as a tokens column) or with the tokens column (joined by spaces).

Windows. The sub-tokens of a sentence are cut into windows of at most `data.max_length` tokens
(special tokens included) overlapping by `data.stride`. A word seen in several windows takes the
prediction of the window where its first sub-token is farthest from a cut (a sentence end is not
a cut), the earlier window on ties.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from pydantic import Field
from seqeval.metrics import accuracy_score, classification_report
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, IOBES
from transformers import AutoModelForTokenClassification

from sft_tune.config import DataConfig, RunConfig, TaskOptions
from sft_tune.core.batches import pad
from sft_tune.core.data import cached, read_table, require_columns, text_column
from sft_tune.core.losses import IGNORE_INDEX
from sft_tune.errors import Problem, fail, first_problems
from sft_tune.tasks.base import Task, window_problems

TABLE_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}
DOCSTART = "-DOCSTART-"
PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES", "auto": "BIES"}
TAG = re.compile(r"^([A-Z])-(\S+)$")
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")  # raw text to words at predict time (CoNLL-like)
MIN_STRATUM = 20  # sentences a stratum needs; smaller ones join the largest (folds go up to 20)


@dataclass
class Sentences:
    """The sentences of one labelled file: words and tags as written, and where each one starts."""

    words: list[list[str]]
    tags: list[list[str]]
    documents: list[str] | None  # one per sentence where the file marks documents
    starts: list[int]  # 1-based line (CoNLL) or row (table) of each sentence
    unit: str  # "line" or "row"
    path: Path
    scheme: str

    def where(self, sentence: int, word: int) -> str:
        if self.unit == "line":
            return f"{self.path} line {self.starts[sentence] + word}"
        return f"{self.path} row {self.starts[sentence]} word {word + 1}"


@dataclass
class Windows:
    """Encoded sentences: windows of token ids (the training units) and per-sentence word layout."""

    sentence: list[int]  # per window: its sentence
    input_ids: list[list[int]]  # per window, special tokens included
    labels: list[list[int]]  # per window, IGNORE_INDEX where no tag is learned
    start: list[int]  # per window: offset of its first content token in the sentence's sub-tokens
    first: list[list[int]]  # per sentence: offset of each word's first sub-token
    length: list[int]  # per sentence: number of sub-tokens
    tags: list[list[int]]  # per sentence: tag id of each word
    prefix: int  # special tokens before the content
    suffix: int  # special tokens after it
    names: list[str]
    scheme: str

    def __len__(self) -> int:
        return len(self.input_ids)

    def end(self, window: int) -> int:
        return self.start[window] + len(self.input_ids[window]) - self.prefix - self.suffix

    def subset(self, indices: Sequence[int]) -> Windows:
        """The windows of sentences `indices`, sentences renumbered in that order."""
        of_sentence: dict[int, list[int]] = {}
        for window, sentence in enumerate(self.sentence):
            of_sentence.setdefault(sentence, []).append(window)
        keep = [(new, w) for new, s in enumerate(indices) for w in of_sentence.get(s, [])]
        return Windows(
            [new for new, _ in keep],
            [self.input_ids[w] for _, w in keep],
            [self.labels[w] for _, w in keep],
            [self.start[w] for _, w in keep],
            [self.first[s] for s in indices],
            [self.length[s] for s in indices],
            [self.tags[s] for s in indices],
            self.prefix,
            self.suffix,
            self.names,
            self.scheme,
        )


class NerOptions(TaskOptions):
    """How token-classification (NER) files are read, labelled and scored."""

    section = "ner"

    tokens_column: str = Field(
        "tokens", description="JSONL/Parquet column with the list of words of a sentence."
    )
    tags_column: str = Field(
        "tags", description="JSONL/Parquet column with the list of tags (one per word)."
    )
    document_column: str = Field(
        "document",
        description="Optional column naming each sentence's document; folds keep documents whole.",
    )
    tag_scheme: Literal["auto", "IOB1", "IOB2", "BIOES"] = Field(
        "auto", description="Tagging scheme of the files (auto = detected from the training tags)."
    )
    label_subwords: Literal["first", "all"] = Field(
        "first",
        description="Which sub-word tokens of a word carry its tag in training: the first only "
        "(the rest ignored) or all of them. Predictions always read the first sub-token.",
    )


class NerTask(Task):
    name = "ner"
    auto_model = AutoModelForTokenClassification
    metric = "f1"
    metrics = ("precision", "recall", "f1", "accuracy", "loss")
    options = NerOptions
    scheme: str | None = None  # the training file's scheme, set by `label_names`

    def check(self, config: RunConfig) -> list[Problem]:
        return window_problems(config.data)

    def read(self, path: Path, data: DataConfig, what: str) -> Sentences:
        path = Path(path)
        if path.is_dir() or path.suffix.lower() in TABLE_SUFFIXES:
            return read_sentence_table(path, NerOptions.of(data), what)
        return read_conll(path, NerOptions.of(data).tag_scheme, what)

    def label_names(self, train: Sentences, data: DataConfig) -> list[str]:
        self.scheme = train.scheme
        if data.labels is not None:
            names = list(data.labels)
            scheme = NerOptions.of(data).tag_scheme
            bad = [name for name in names if tag_rule(name, scheme)]
            if bad:
                raise fail(
                    "data.labels",
                    bad,
                    tag_rule(bad[0], scheme),
                    "list tags such as O, B-PER, I-PER",
                )
        else:
            types = {tag[2:] for seq in train.tags for tag in seq if tag != "O"}
            names = ["O"] + sorted(
                f"{prefix}-{kind}" for kind in types for prefix in PREFIXES[train.scheme]
            )
        if len(names) < 2:
            raise fail(
                "data.labels" if data.labels is not None else str(train.path),
                names,
                "NER needs at least one entity tag besides O",
                "use a training file with entities, or list the tags in `data.labels`",
            )
        return names

    def check_labels(self, labelled: Sentences, names: Sequence[str], path: Path) -> None:
        known = set(names)
        unknown = Counter(tag for seq in labelled.tags for tag in seq if tag not in known)
        if unknown:
            sentence, word = next(
                (s, w)
                for s, seq in enumerate(labelled.tags)
                for w, tag in enumerate(seq)
                if tag not in known
            )
            raise fail(
                labelled.where(sentence, word),
                dict(unknown),
                f"tags must be in the label set {list(names)} (the first unknown tag is here)",
                "fix those tags, or add them to `data.labels` (without it the training file decides the label set)",
            )

    def encode(
        self, labelled: Sentences, tokenizer, names: Sequence[str], data: DataConfig
    ) -> Windows:
        prefix, suffix = special_tokens(tokenizer)
        content = content_length(data, len(prefix) + len(suffix))
        label_id = {name: i for i, name in enumerate(names)}
        subwords = NerOptions.of(data).label_subwords
        params = {
            "max_length": data.max_length,
            "stride": data.stride,
            "subwords": subwords,
            "labels": list(names),
        }
        items = [
            json.dumps([words, tags], ensure_ascii=False)
            for words, tags in zip(labelled.words, labelled.tags)
        ]

        def compute() -> dict[str, Any]:
            tag_ids = [[label_id[tag] for tag in seq] for seq in labelled.tags]
            return build_windows(
                labelled.words,
                tag_ids,
                word_pieces(labelled.words, tokenizer),
                prefix,
                suffix,
                content,
                data.stride,
                subwords == "all",
            )

        built = cached("ner-windows", tokenizer, params, items, compute, data.cache_dir)
        return Windows(
            **built,
            prefix=len(prefix),
            suffix=len(suffix),
            names=list(names),
            scheme=self.scheme or labelled.scheme,
        )

    def texts(self, labelled: Sentences) -> list[str]:
        return [" ".join(words) for words in labelled.words]

    def strata(self, labelled: Sentences) -> list[str]:
        """The rarest entity type of each sentence ("none" without one); a key held by fewer than
        MIN_STRATUM sentences joins the largest, so folds and validation splits stay possible."""
        types = [{kind for kind, _, _ in get_entities(seq)} for seq in labelled.tags]
        counts = Counter(kind for kinds in types for kind in kinds)
        keys = [
            min(kinds, key=lambda kind: (counts[kind], kind)) if kinds else "none"
            for kinds in types
        ]
        sizes = Counter(keys)
        largest = max(sorted(sizes), key=sizes.__getitem__)
        return [key if sizes[key] >= MIN_STRATUM else largest for key in keys]

    def groups(self, labelled: Sentences) -> list[str] | None:
        return labelled.documents

    def collate(
        self, examples: Windows, indices: Sequence[int], pad_id: int, side: str
    ) -> dict[str, torch.Tensor]:
        return collate_windows(examples, indices, pad_id, side)

    def evaluate(
        self, model, examples: Windows, batches, pad_id: int, side: str, device
    ) -> dict[str, float]:
        picked, loss = stitch(model, examples, batches, pad_id, side, device)
        sentences = sorted({examples.sentence[w] for indices in batches for w in indices})
        names = examples.names
        gold = [[names[t] for t in examples.tags[s]] for s in sentences]
        found = [
            [
                names[picked[(s, w)][0]] if (s, w) in picked else "O"
                for w in range(len(examples.tags[s]))
            ]
            for s in sentences
        ]
        return {"loss": loss, **entity_scores(gold, found, examples.scheme)}

    def lengths(self, examples: Windows) -> list[int]:
        return [len(ids) for ids in examples.input_ids]

    def model_kwargs(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }

    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {"add_prefix_space": True}

    def predict(
        self, model, tokenizer, input_path: Path, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"text", "entities": [{"type", "start", "end", "text", "score"}]}` per row; character
        offsets into `text` (the text column, or the tokens joined by spaces). The input is read and
        checked here, before the first record is produced."""
        rows = read_prediction_input(Path(input_path), data)
        prefix, suffix = special_tokens(tokenizer)
        content = content_length(data, len(prefix) + len(suffix))
        return _predictions(
            model, tokenizer, rows, (prefix, suffix, content, data.stride), batch_size
        )


# ---- reading -------------------------------------------------------------------------------


def tag_rule(tag: str, scheme: str) -> str | None:
    """Why `tag` is not a tag of `scheme` (None when it is)."""
    match = TAG.match(tag)
    if tag == "O" or (match and match.group(1) in PREFIXES[scheme]):
        return None
    prefixes = "/".join(f"{p}-" for p in PREFIXES[scheme])
    return f"a tag must be O or {prefixes}TYPE" + (
        "" if scheme == "auto" else f" in the {scheme} scheme"
    )


def detect_scheme(tags: Sequence[Sequence[str]]) -> str:
    """BIOES when S-/E- tags occur, IOB1 when an entity starts with I-, else IOB2."""
    if any(tag[:2] in ("S-", "E-") for seq in tags for tag in seq):
        return "BIOES"
    for seq in tags:
        previous = "O"
        for tag in seq:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                return "IOB1"
            previous = tag
    return "IOB2"


def _split_columns(line: str) -> list[str]:
    if "\t" in line:
        return [column.strip(" ") for column in line.rstrip("\t ").split("\t")]
    return line.split()


def read_conll(path: Path, scheme: str, what: str) -> Sentences:
    """CoNLL text: token first, tag last; blank lines between sentences, -DOCSTART- between documents."""
    if not path.is_file():
        raise fail(
            str(path),
            str(path),
            f"the {what} must exist",
            "check the path in the config (relative paths are relative to the config file)",
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise fail(
            f"{path} line {line}",
            raw[err.start : err.start + 4],
            f"the {what} must be UTF-8 text",
            "re-save the file as UTF-8",
        ) from None
    words: list[list[str]] = []
    tags: list[list[str]] = []
    documents: list[str] = []
    starts: list[int] = []
    problems: list[Problem] = []
    document, marked = 0, False
    current: list[tuple[str, str]] = []

    def close(line: int) -> None:
        if current:
            words.append([w for w, _ in current])
            tags.append([t for _, t in current])
            documents.append(f"document {document}")
            starts.append(line - len(current))
            current.clear()

    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            close(number)
            continue
        columns = _split_columns(line)
        if columns[0] == DOCSTART:
            close(number)
            document, marked = document + 1, True
            continue
        if len(columns) < 2 or not columns[0]:
            problems.append(
                Problem(
                    f"{path} line {number}",
                    line,
                    "a token line needs the token in the first column and the tag in the last (2 or more columns, separated by tabs or spaces)",
                    "add the tag column, or leave a blank line between sentences",
                )
            )
            continue
        rule = tag_rule(columns[-1], scheme)
        if rule:
            problems.append(
                Problem(
                    f"{path} line {number}",
                    columns[-1],
                    rule,
                    f"fix the tag{'' if scheme == 'auto' else ', or set data.ner.tag_scheme to the scheme of the file'}",
                )
            )
        current.append((columns[0], columns[-1]))
    close(len(lines) + 1)
    if problems:
        raise first_problems(problems, f"{path}: invalid NER data")
    if not words:
        raise fail(
            str(path),
            "no token lines",
            f"the {what} must hold at least one sentence",
            "point to a CoNLL file with `token ... tag` lines",
        )
    detected = detect_scheme(tags) if scheme == "auto" else scheme
    return Sentences(words, tags, documents if marked else None, starts, "line", path, detected)


def _tag_names(table: datasets.Dataset, column: str) -> list[str] | None:
    """The names of a list-of-ClassLabel column (tags stored as ids), else None."""
    inner = getattr(table.features.get(column), "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def read_sentence_table(path: Path, ner: NerOptions, what: str) -> Sentences:
    """One sentence a row: a list of tokens and a list of tags (text, or ClassLabel ids)."""
    table = read_table(path, what)
    require_columns(table, [ner.tokens_column, ner.tags_column], path, what)
    names = _tag_names(table, ner.tags_column)
    words, tags, problems = [], [], []
    for row, (tokens, row_tags) in enumerate(
        zip(table[ner.tokens_column], table[ner.tags_column]), 1
    ):
        where = f"{path} row {row}"
        if names is not None and isinstance(row_tags, list):
            row_tags = [
                names[t] if isinstance(t, int) and 0 <= t < len(names) else t for t in row_tags
            ]
        if (
            not isinstance(tokens, list)
            or not tokens
            or not all(isinstance(t, str) and t for t in tokens)
        ):
            problems.append(
                Problem(
                    f"{where} column {ner.tokens_column!r}",
                    tokens,
                    "every row needs a non-empty list of non-empty words",
                    "fix the row, or point data.ner.tokens_column at the tokens",
                )
            )
        elif not isinstance(row_tags, list) or not all(isinstance(t, str) for t in row_tags):
            problems.append(
                Problem(
                    f"{where} column {ner.tags_column!r}",
                    row_tags,
                    "every row needs a list of tags as text (or ClassLabel ids)",
                    "fix the row, or point data.ner.tags_column at the tags",
                )
            )
        elif len(tokens) != len(row_tags):
            problems.append(
                Problem(
                    where,
                    f"{len(tokens)} tokens, {len(row_tags)} tags",
                    "every row needs exactly one tag per token",
                    "fix the row's tokens or tags",
                )
            )
        else:
            for index, tag in enumerate(row_tags):
                rule = tag_rule(tag, ner.tag_scheme)
                if rule:
                    problems.append(
                        Problem(
                            f"{where} word {index + 1}",
                            tag,
                            rule,
                            "fix the tag, or set data.ner.tag_scheme to the scheme of the file",
                        )
                    )
        words.append(tokens)
        tags.append(row_tags)
    if problems:
        raise first_problems(problems, f"{path}: invalid NER data")
    documents = None
    if ner.document_column in table.column_names:
        documents = [
            f"row {row}" if value is None else str(value)
            for row, value in enumerate(table[ner.document_column], 1)
        ]
    scheme = detect_scheme(tags) if ner.tag_scheme == "auto" else ner.tag_scheme
    return Sentences(words, tags, documents, list(range(1, len(words) + 1)), "row", path, scheme)


def read_prediction_input(
    path: Path, data: DataConfig
) -> list[tuple[str, list[str], list[tuple[int, int]]]]:
    """(text, words, character span of each word) per row: raw text split into words, or a tokens
    column joined by spaces."""
    table = read_table(path, "input file")
    tokens_column = NerOptions.of(data).tokens_column
    if data.text_column in table.column_names:
        rows = []
        for text in text_column(table, data.text_column, path, "input file"):
            matches = list(WORD.finditer(text))
            rows.append((text, [m.group() for m in matches], [m.span() for m in matches]))
        return rows
    if tokens_column not in table.column_names:
        raise fail(
            str(path),
            table.column_names,
            f"the input file needs a text column {data.text_column!r} or a tokens column {tokens_column!r}",
            "rename a column to one of those, or pass --text-column NAME (the tokens column is the training run's data.ner.tokens_column)",
        )
    rows = []
    for row, tokens in enumerate(table[tokens_column], 1):
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise fail(
                f"{path} row {row} column {tokens_column!r}",
                tokens,
                "every row needs a list of non-empty words",
                "fix the row",
            )
        spans, position = [], 0
        for token in tokens:
            spans.append((position, position + len(token)))
            position += len(token) + 1
        rows.append((" ".join(tokens), list(tokens), spans))
    return rows


# ---- encoding ------------------------------------------------------------------------------


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one text (none for GPT-2)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise fail(
        "model.name_or_path",
        type(tokenizer).__name__,
        "the tokenizer must add its special tokens around a text (prefix + text + suffix)",
        "use a BERT-, RoBERTa-, GPT- or Llama-like tokenizer",
    )


def content_length(data: DataConfig, specials: int) -> int:
    """Content tokens per window (the stride leaves each window new ones: `window_problems`)."""
    return data.max_length - specials


def word_pieces(sentences: Sequence[Sequence[str]], tokenizer) -> dict[str, list[int]]:
    """The sub-token ids of each distinct word, tokenized alone; the unknown token for a word that
    yields none."""
    distinct = sorted({word for words in sentences for word in words})
    fallback = (
        tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    )
    ids = tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
    return {word: pieces or [fallback] for word, pieces in zip(distinct, ids)}


def window_spans(length: int, content: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) sub-token spans of at most `content` tokens, consecutive ones sharing `stride`."""
    spans, start = [], 0
    while True:
        end = min(start + content, length)
        spans.append((start, end))
        if end >= length:
            return spans
        start = end - stride


def build_windows(
    sentences: Sequence[Sequence[str]],
    tag_ids: Sequence[Sequence[int]] | None,
    pieces: dict[str, list[int]],
    prefix: list[int],
    suffix: list[int],
    content: int,
    stride: int,
    label_all: bool,
) -> dict[str, Any]:
    """The JSON form of `Windows` (without the fixed fields); labels only when tags are given."""
    out: dict[str, list] = {
        "sentence": [],
        "input_ids": [],
        "labels": [],
        "start": [],
        "first": [],
        "length": [],
        "tags": [],
    }
    for s, words in enumerate(sentences):
        ids, labels, first = [], [], []
        for w, word in enumerate(words):
            first.append(len(ids))
            ids += pieces[word]
            if tag_ids is not None:
                tag = tag_ids[s][w]
                labels += [tag] + [tag if label_all else IGNORE_INDEX] * (len(pieces[word]) - 1)
        out["first"].append(first)
        out["length"].append(len(ids))
        out["tags"].append(list(tag_ids[s]) if tag_ids is not None else [])
        for start, end in (
            window_spans(len(ids), content, stride) if ids else []
        ):  # no words, no window
            out["sentence"].append(s)
            out["start"].append(start)
            out["input_ids"].append(prefix + ids[start:end] + suffix)
            if tag_ids is not None:
                out["labels"].append(
                    [IGNORE_INDEX] * len(prefix) + labels[start:end] + [IGNORE_INDEX] * len(suffix)
                )
    return out


def window_words(examples: Windows, window: int) -> Iterator[tuple[int, int, float]]:
    """(word, content position of its first sub-token, distance from the nearest cut) for each word
    whose first sub-token lies in the window."""
    first, sentence = examples.first[examples.sentence[window]], examples.sentence[window]
    start, end = examples.start[window], examples.end(window)
    for word in range(bisect.bisect_left(first, start), bisect.bisect_left(first, end)):
        position = first[word]
        left = position - start if start > 0 else math.inf
        right = end - 1 - position if end < examples.length[sentence] else math.inf
        yield word, position - start, min(left, right)


# ---- scoring and prediction ----------------------------------------------------------------


def entity_scores(
    gold: list[list[str]], predicted: list[list[str]], scheme: str
) -> dict[str, float]:
    """seqeval micro precision/recall/F1 over entities, token accuracy, and F1 per entity type."""
    mode = {
        "IOB2": {"mode": "strict", "scheme": IOB2},
        "BIOES": {"mode": "strict", "scheme": IOBES},
    }.get(scheme, {})
    with warnings.catch_warnings():  # seqeval warns on types without support; zero_division says 0
        warnings.simplefilter("ignore")
        report = classification_report(gold, predicted, output_dict=True, zero_division=0, **mode)
    micro = report["micro avg"]
    scores = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(gold, predicted)),
    }
    scores.update(
        {
            f"f1/{kind}": float(row["f1-score"])
            for kind, row in sorted(report.items())
            if not kind.endswith(" avg")
        }
    )
    return scores


def collate_windows(
    examples: Windows, indices: Sequence[int], pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """Windows padded on the tokenizer's side (labels with IGNORE_INDEX); no labels where none are known."""
    input_ids, attention_mask = pad([examples.input_ids[i] for i in indices], pad_id, side)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if examples.labels:
        batch["labels"] = pad([examples.labels[i] for i in indices], IGNORE_INDEX, side)[0]
    return batch


def stitch(
    model: torch.nn.Module,
    examples: Windows,
    batches: Sequence[Sequence[int]],
    pad_id: int,
    side: str,
    device: torch.device,
) -> tuple[dict[tuple[int, int], tuple[int, float]], float]:
    """Run the windows; (sentence, word) -> (tag id, probability) read at the word's first
    sub-token in the window where that is farthest from a cut; and the loss per labelled token."""
    best: dict[tuple[int, int], tuple[float, int, float]] = {}
    total_loss, counted = 0.0, 0
    with torch.no_grad():
        for indices in batches:
            batch = {
                k: v.to(device) for k, v in collate_windows(examples, indices, pad_id, side).items()
            }
            outputs = model(**batch)
            labelled = int((batch["labels"] != IGNORE_INDEX).sum()) if "labels" in batch else 0
            if labelled:
                total_loss += outputs.loss.item() * labelled
                counted += labelled
            top, tag = outputs.logits.float().softmax(-1).max(-1)
            for row, window in enumerate(indices):
                offset = (
                    batch["input_ids"].shape[1] - len(examples.input_ids[window])
                    if side == "left"
                    else 0
                )
                for word, position, distance in window_words(examples, window):
                    key, at = (examples.sentence[window], word), offset + examples.prefix + position
                    if key not in best or distance > best[key][0]:
                        best[key] = (distance, int(tag[row, at]), float(top[row, at]))
    return {key: (tag, prob) for key, (_, tag, prob) in best.items()}, (
        total_loss / counted if counted else math.nan
    )


def _predictions(model, tokenizer, rows, layout, batch_size: int) -> Iterator[dict[str, Any]]:
    """Records for `rows`, `batch_size` rows at a time (their windows in batches of `batch_size`)."""
    prefix, suffix, content, stride = layout
    pad_id = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (tokenizer.eos_token_id or 0)
    )
    device = next(model.parameters()).device
    names = model.config.id2label
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin : begin + batch_size]
        sentences = [words for _, words, _ in chunk]
        built = build_windows(
            sentences,
            None,
            word_pieces(sentences, tokenizer),
            prefix,
            suffix,
            content,
            stride,
            False,
        )
        windows = Windows(**built, prefix=len(prefix), suffix=len(suffix), names=[], scheme="")
        batches = [
            list(range(i, min(i + batch_size, len(windows))))
            for i in range(0, len(windows), batch_size)
        ]
        picked, _ = stitch(model, windows, batches, pad_id, tokenizer.padding_side, device)
        for s, (text, words, spans) in enumerate(chunk):
            found = [picked.get((s, w)) for w in range(len(words))]
            tags = [names[f[0]] if f else "O" for f in found]
            entities = []
            for kind, first, last in get_entities(tags):
                start, end = spans[first][0], spans[last][1]
                score = sum(f[1] for f in found[first : last + 1] if f) / (last - first + 1)
                entities.append(
                    {
                        "type": kind,
                        "start": start,
                        "end": end,
                        "text": text[start:end],
                        "score": score,
                    }
                )
            yield {"text": text, "entities": entities}
