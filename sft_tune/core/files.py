"""Reading data files, and a config's labelled and unlabelled files read and checked.

Files are read through the `datasets` library: CSV, JSONL/JSON, Parquet, or a folder written by
`Dataset.save_to_disk`. Every problem with a file is an `InputError` naming the file and column.
This module imports nothing heavy at import time, so a command can read and check its data
before torch, transformers or Ray load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.errors import InputError, Problem, fail, first_problems, undecodable

READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_table(path: Path, what: str) -> datasets.Dataset:  # noqa: F821 (imported when called)
    """Read a data file (or saved dataset folder) into a `datasets.Dataset`."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    path = Path(path)
    if not path.exists():
        raise fail(
            str(path),
            str(path),
            f"the {what} must exist",
            "check the path in the config (relative paths are relative to the config file)",
        )
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                if len(table) != 1:
                    raise fail(
                        str(path),
                        sorted(table),
                        f"the {what} folder must hold one split",
                        "save a single `Dataset`, not a `DatasetDict` with several splits",
                    )
                table = next(iter(table.values()))
        else:
            builder = READERS.get(path.suffix.lower())
            if builder is None:
                raise fail(
                    str(path),
                    path.suffix,
                    f"the {what} must be one of {sorted(READERS)} or a saved dataset folder",
                    "convert the file or rename it with the right extension",
                )
            _check_text_file(path, what)
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            table = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except InputError:
        raise
    except ValueError as err:
        if "corresponds to no data" not in str(err):  # how `datasets` says a file holds no rows
            raise _unreadable(path, what, err) from None
        table = []
    except Exception as err:  # any parser failure is the file's fault, reported as such
        raise _unreadable(path, what, err) from None
    if len(table) == 0:
        raise fail(
            str(path), "0 rows", f"the {what} must not be empty", "point to a file with data rows"
        )
    return table


def _check_text_file(path: Path, what: str) -> None:
    """What `datasets` would only call "an error occurred while generating the dataset", said
    per line: an empty file, bytes that are not UTF-8, a JSON line that does not parse, a CSV row
    whose field count is not the header's (the first `errors.SHOWN` of them)."""
    import csv
    import io

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        return
    data = path.read_bytes()
    if not data.strip():
        raise fail(
            str(path),
            "0 bytes of data",
            f"the {what} must not be empty",
            "point to a file with data rows",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, found = undecodable(data, err)
        raise fail(
            f"{path} line {line}",
            found,
            f"the {what} must be UTF-8 text",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)",
        ) from None
    problems: list[Problem] = []
    if suffix in (".jsonl", ".json"):
        if suffix == ".json":
            try:
                json.loads(text)
                return  # one JSON document (an array or an object of columns)
            except ValueError:
                pass  # JSON lines, checked line by line below
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                problems.append(
                    Problem(
                        f"{path} line {number}",
                        line[:80],
                        f"each line must be one JSON object ({err})",
                        "fix that line's JSON",
                    )
                )
                continue
            if not isinstance(row, dict):
                problems.append(
                    Problem(
                        f"{path} line {number}",
                        line[:80],
                        "each line must be one JSON object of columns",
                        'write {"column": value, ...} on each line',
                    )
                )
    else:
        rows = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        header = next(rows, [])
        for number, row in enumerate(rows, 2):
            if row and len(row) != len(header):
                problems.append(Problem(f"{path} row {number}", row[:5], f"row {number} has {len(row)} fields, the header has {len(header)}", "quote fields that hold the delimiter, or fix the row"))  # fmt: skip
    if problems:
        raise first_problems(problems, f"{path}: unreadable {what}")


def _unreadable(path: Path, what: str, err: Exception) -> InputError:
    kind = path.suffix or "a saved dataset folder"
    return fail(
        str(path),
        f"{type(err).__name__}: {err}",
        f"the {what} must be readable as {kind}",
        "check the file's format and encoding (UTF-8)",
    )


def require_columns(table, columns: Sequence[str], path: Path, what: str) -> None:
    """Raise one error listing every missing column."""
    problems = [
        Problem(
            f"{path} column {column!r}",
            table.column_names,
            f"the {what} must have a column {column!r}",
            f"rename the column or set the config's column name to one of {table.column_names}",
        )
        for column in columns
        if column not in table.column_names
    ]
    if problems:
        raise InputError(problems, title=f"{path}: missing column")


def text_column(table, column: str, path: Path, what: str) -> list[str]:
    """The column's values, which must all be non-empty strings."""
    values = table[column]
    bad = [
        (row, value)
        for row, value in enumerate(values)
        if not isinstance(value, str) or not value.strip()
    ]
    if bad:
        row, value = bad[0]
        raise fail(
            f"{path} column {column!r} row {row + 1}",
            value,
            f"every value of the {what} text column must be non-empty text ({len(bad)} of {len(values)} rows are not)",
            "remove or fill those rows, or point `text_column` at the text column",
        )
    return values


def read_unlabelled(paths: Sequence[Path], column: str) -> list[str]:
    """All unlabelled texts, in file order."""
    texts: list[str] = []
    for path in paths:
        table = read_table(path, "unlabelled file")
        require_columns(table, [column], path, "unlabelled file")
        texts.extend(text_column(table, column, path, "unlabelled file"))
    return texts


@dataclass
class RawData:
    """Everything read from the data files and checked, before any tokenizer or model loads."""

    train: Any
    test: Any | None
    unlabelled: list[str]
    label_names: list[str]


def read_data(config: RunConfig, task, lm: bool | None = None) -> RawData:
    """Read and check every data file of the config (bad files raise `InputError`); the
    unlabelled files only when `lm` (default: the config runs phase 1)."""
    lm = config.phase1.steps > 0 if lm is None else lm
    data = config.data
    train = task.read(data.train, data, "labelled training file")
    names = task.label_names(train, data)
    task.check_labels(train, names, data.train)
    test = None
    if data.test is not None:
        test = task.read(data.test, data, "labelled test file")
        task.check_labels(test, names, data.test)
    unlabelled = read_unlabelled(data.unlabelled, data.unlabelled_text_column) if lm else []
    if lm and not unlabelled and not data.labelled_text_for_lm:
        raise fail(
            "phase1.steps",
            config.phase1.steps,
            "phase 1 needs LM text: `data.unlabelled` files or `data.labelled_text_for_lm: true`",
            "add unlabelled files, enable labelled_text_for_lm, or set phase1.steps to 0",
        )
    return RawData(train, test, unlabelled, names)
