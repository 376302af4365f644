"""NER input: CoNLL text or sentence tables, tag schemes, the label set, `predict`'s input.

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
training file decides and test files are scored in its scheme. An inferred label set is "O" plus
every tag of the scheme for each entity type seen (B-/I- pairs, or B-/I-/E-/S-), so a test file is
not refused for a tag the training file happens to lack.

Prediction input: a table with `data.text_column` (raw text, split into words at whitespace and
around punctuation, as CoNLL English is, and per character in scripts written without spaces:
Chinese, Japanese, Thai, ...) or with the tokens column (joined by spaces, but not next to a
character of those scripts). Entities are character offsets into that text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import regex
from pydantic import Field

from sft_tune.config import DataConfig, RunConfig, TaskOptions
from sft_tune.core.files import read_table, require_columns, text_column, text_of
from sft_tune.errors import Problem, fail, first_problems
from sft_tune.tasks.base import TaskFiles, window_problems

MIN_STRATUM = 20  # sentences a stratum needs; smaller ones join the largest (folds go up to 20)
TABLE_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}
DOCSTART = "-DOCSTART-"
PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES", "auto": "BIES"}
TAG = re.compile(r"^([A-Z])-(\S+)$")
# Scripts written without spaces between words: raw text in them is split per character
# (grapheme), as character-tagged corpora (Chinese NER, ...) are; Korean writes spaces.
UNSPACED = (
    r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
    # CJK punctuation, the prolonged-sound mark, full-width forms
    r"\u3000-\u303f\u30fc\uff00-\uffef"
)
# Raw text to words at predict time: a character of an unspaced script, a run of other word
# characters (with inner hyphens and apostrophes, as CoNLL English has them), or one symbol.
UNSPACED_CHAR = regex.compile(rf"[{UNSPACED}]")
WORD = regex.compile(rf"(?=[{UNSPACED}])\X|[^\W{UNSPACED}]+(?:[-'’][^\W{UNSPACED}]+)*|[^\w\s]")


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


class NerOptions(TaskOptions):
    """How token-classification (NER) files are read, labelled and scored."""

    section = "ner"
    # What a search may vary per trial (the data is encoded again for each value); the other
    # fields decide how the files are read, which a sweep keeps fixed.
    encoding_fields = ("label_subwords",)

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


class NerFiles(TaskFiles):
    name = "ner"
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
                "fix those tags, or add them to `data.labels` (without it the training file "
                "decides the label set)",
            )

    def texts(self, labelled: Sentences) -> list[str]:
        return [" ".join(words) for words in labelled.words]

    def strata(self, labelled: Sentences) -> list[str]:
        """The rarest entity type of each sentence ("none" without one); a key held by fewer than
        MIN_STRATUM sentences joins the largest, so folds and validation splits stay possible."""
        # The entity types of a sentence: every tag but O belongs to an entity of its type.
        types = [{tag[2:] for tag in seq if tag != "O"} for seq in labelled.tags]
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

    def read_input(
        self, path: Path, data: DataConfig
    ) -> list[tuple[str, list[str], list[tuple[int, int]]]]:
        """(text, words, character span of each word) per row (`read_prediction_input`)."""
        return read_prediction_input(Path(path), data)


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
    """CoNLL text: token first, tag last; blank lines between sentences, -DOCSTART- between
    documents."""
    text = text_of(
        path, what, "check the path in the config (relative paths are relative to the config file)"
    )
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
                    "a token line needs the token in the first column and the tag in the last (2 "
                    "or more columns, separated by tabs or spaces)",
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
                    "fix the tag"
                    + (
                        ""
                        if scheme == "auto"
                        else ", or set data.ner.tag_scheme to the scheme of the file"
                    ),
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


def _tag_names(table, column: str) -> list[str] | None:
    """The names of a list-of-ClassLabel column (tags stored as ids, in a saved `datasets`
    folder), else None."""
    features = getattr(table, "features", None) or {}
    inner = getattr(features.get(column), "feature", None)
    names = getattr(inner, "names", None)  # a datasets.ClassLabel
    return list(names) if names is not None else None


def read_sentence_table(path: Path, ner: NerOptions, what: str) -> Sentences:
    """One sentence a row: a list of tokens and a list of tags (text, or ClassLabel ids)."""
    table = read_table(path, what)
    require_columns(
        table,
        {"data.ner.tokens_column": ner.tokens_column, "data.ner.tags_column": ner.tags_column},
        path,
        what,
    )
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
        texts = text_column(table, data.text_column, path, "input file", "data.text_column")
        return [(text, *split_words(text)) for text in texts]
    if tokens_column not in table.column_names:
        raise fail(
            str(path),
            table.column_names,
            f"the input file needs a text column {data.text_column!r} or a tokens column "
            f"{tokens_column!r}",
            "rename a column to one of those, or set data.text_column to the text column (or "
            "data.ner.tokens_column to the tokens column)",
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
        text, spans = join_words(tokens)
        rows.append((text, list(tokens), spans))
    return rows


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw text as words and their character spans: at spaces and around punctuation, and per
    character in scripts written without spaces (CJK, Thai, ...)."""
    matches = list(WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Words as one text and each word's span in it: joined by spaces, except next to a
    character of a script written without spaces (so 李 岚 清 reads 李岚清)."""
    text, spans = "", []
    for word in words:
        if text and not (_unspaced(text[-1]) or _unspaced(word[0])):
            text += " "
        spans.append((len(text), len(text) + len(word)))
        text += word
    return text, spans


def _unspaced(char: str) -> bool:
    return UNSPACED_CHAR.match(char) is not None
