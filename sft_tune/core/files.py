"""Reading input files, and a config's labelled and unlabelled files read and checked.

`text_of` reads any input text (a data file, a run config, a search space) as UTF-8, naming the
line where it is not.

CSV/TSV and JSON files are read with Python's own parsers and Parquet with pyarrow, in one pass
that names each bad line or row; only a folder written by `Dataset.save_to_disk` needs the
`datasets` library (imported then). Every problem with a file is an `InputError` naming the file,
the line, row or column. Nothing heavy is imported, so a command reads and checks its data before
torch, transformers or Ray load.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core.splits import split_problems
from sft_tune.errors import InputError, Problem, fail, first_problems

READERS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass
class Table:
    """A data file's rows as columns (name -> values in row order); `features` are a saved
    `datasets` folder's (ClassLabel names of tag ids), else None."""

    columns: dict[str, list[Any]]
    features: Any = None

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def __getitem__(self, column: str) -> list[Any]:
        return self.columns[column]


def undecodable(data: bytes, err: UnicodeDecodeError) -> tuple[int, str]:
    """Where a file's bytes stop being UTF-8: (line number, "byte 0xe9 at offset 312")."""
    return data[: err.start].count(b"\n") + 1, f"byte 0x{data[err.start]:02x} at offset {err.start}"


def text_of(path: Path, what: str, missing_fix: str) -> str:
    """A file's text (UTF-8, a byte-order mark dropped). A missing file, or bytes that are not
    UTF-8, raise `InputError` naming the file, and the line, byte and offset where it stops being
    UTF-8; `missing_fix` says where the path is read from."""
    path = Path(path)
    if not path.is_file():
        raise fail(str(path), str(path), f"the {what} must exist", missing_fix)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line, found = undecodable(data, err)
        raise fail(
            f"{path} line {line}",
            found,
            f"the {what} must be UTF-8 text",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)",
        ) from None


def read_table(path: Path, what: str) -> Table:
    """Read a data file (CSV, TSV, JSON Lines, a JSON array of rows or object of columns,
    Parquet) or a saved `datasets` folder, in one pass that names each unreadable line or row."""
    path = Path(path)
    if not path.exists():
        raise fail(
            str(path),
            str(path),
            f"the {what} must exist",
            "check the path in the config (relative paths are relative to the config file)",
        )
    suffix = path.suffix.lower()
    if path.is_dir():
        table = _read_saved(path, what)
    elif suffix == ".parquet":
        table = _read_parquet(path, what)
    elif suffix in READERS:
        table = _read_text(path, suffix, what)
    else:
        raise fail(
            str(path),
            path.suffix,
            f"the {what} must be one of {list(READERS)} or a saved dataset folder",
            "convert the file or rename it with the right extension",
        )
    if len(table) == 0:
        raise fail(
            str(path), "0 rows", f"the {what} must not be empty", "point to a file with data rows"
        )
    return table


def _read_saved(path: Path, what: str) -> Table:
    """A folder written by `Dataset.save_to_disk` (the one reader that needs `datasets`, imported
    once the folder is known to hold what `save_to_disk` writes)."""
    _check_saved(path, what)
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        table = datasets.load_from_disk(str(path))
    except Exception as err:  # any loader failure is the folder's fault, reported as such
        raise _unreadable(path, what, err) from None
    if isinstance(table, datasets.DatasetDict):
        if len(table) != 1:
            raise fail(
                str(path),
                sorted(table),
                f"the {what} folder must hold one split",
                "save a single `Dataset`, not a `DatasetDict` with several splits",
            )
        table = next(iter(table.values()))
    return Table(table.to_dict(), table.features)


def _check_saved(path: Path, what: str) -> None:
    """The files `save_to_disk` writes: state.json naming the data files of a `Dataset` (in each
    split's folder of a `DatasetDict`, listed by dataset_dict.json), and those files."""
    try:
        listing = path / "dataset_dict.json"
        splits = json.loads(listing.read_text())["splits"] if listing.is_file() else [None]
        missing = []
        for split in splits:
            folder = path / split if split else path
            state = json.loads((folder / "state.json").read_text())
            names = [entry["filename"] for entry in state["_data_files"]]
            missing += [
                str((folder / n).relative_to(path)) for n in names if not (folder / n).is_file()
            ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        there = sorted(p.name for p in path.iterdir())[:10]
        raise fail(
            str(path),
            f"a folder holding {there}",
            f"the {what} folder must be a dataset saved by Dataset.save_to_disk "
            f"({type(err).__name__}: {err})",
            "save it again with Dataset.save_to_disk, or point to a data file",
        ) from None
    if missing:
        raise fail(
            str(path),
            f"missing {missing}",
            f"the {what} folder must hold every data file its state.json names",
            "save the dataset again with Dataset.save_to_disk",
        )


def _read_parquet(path: Path, what: str) -> Table:
    import pyarrow.parquet

    try:
        return Table(pyarrow.parquet.read_table(path).to_pydict())
    except Exception as err:  # any parser failure is the file's fault, reported as such
        raise _unreadable(path, what, err) from None


def _read_text(path: Path, suffix: str, what: str) -> Table:
    """CSV/TSV and JSON files, with every bad line or row named (the first `errors.SHOWN`)."""
    if not path.read_bytes().strip():
        raise fail(
            str(path),
            "0 bytes of data",
            f"the {what} must not be empty",
            "point to a file with data rows",
        )
    text = text_of(path, what, "check the path")
    problems: list[Problem] = []
    if suffix in (".csv", ".tsv"):
        table = _csv_table(path, text, "\t" if suffix == ".tsv" else ",", problems)
    else:
        table = _json_table(path, text, suffix, problems)
    if problems:
        raise first_problems(problems, f"{path}: unreadable {what}")
    return table


def _csv_table(path: Path, text: str, delimiter: str, problems: list[Problem]) -> Table:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:
        problems.append(
            Problem(str(path), str(err), "the file must be valid CSV", "fix the quoting")
        )
        return Table({})
    header, body = rows[0], rows[1:]
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        problems.append(
            Problem(
                f"{path} row 1",
                header[:10],
                f"every column name must appear once in the header ({twice} appear more than once)",
                "rename the repeated columns",
            )
        )
    kept = []
    for number, row in enumerate(body, 2):
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            problems.append(
                Problem(
                    f"{path} row {number}",
                    row[:5],
                    f"row {number} has {len(row)} fields, the header has {len(header)}",
                    "quote fields that hold the delimiter, or fix the row",
                )
            )
        kept.append(row)
    return Table({name: [row[i] for row in kept] for i, name in enumerate(header)})


def _json_table(path: Path, text: str, suffix: str, problems: list[Problem]) -> Table:
    if suffix == ".json":
        try:
            document = json.loads(text)
        except ValueError:
            document = None  # JSON lines in a .json file, read line by line below
        if isinstance(document, list) and all(isinstance(row, dict) for row in document):
            return _rows_table(document)
        if isinstance(document, dict) and all(isinstance(v, list) for v in document.values()):
            if len({len(v) for v in document.values()}) <= 1:
                return Table(document)
        if document is not None:
            problems.append(
                Problem(
                    str(path),
                    _kind(document),
                    "a JSON file must be an array of row objects, an object of equal-length "
                    "column lists, or one JSON object per line",
                    "rewrite it in one of those layouts",
                )
            )
            return Table({})
    rows = []
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
            continue
        rows.append(row)
    return _rows_table(rows)


def _rows_table(rows: list[dict[str, Any]]) -> Table:
    """Columns of row objects: every key of any row, None where a row lacks it."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return Table({name: [row.get(name) for row in rows] for name in names})


def _kind(document: Any) -> str:
    if isinstance(document, dict):
        return f"an object with keys {sorted(document)[:10]}"
    return f"a JSON {type(document).__name__}"


def _unreadable(path: Path, what: str, err: Exception) -> InputError:
    kind = path.suffix or "a saved dataset folder"
    return fail(
        str(path),
        f"{type(err).__name__}: {err}",
        f"the {what} must be readable as {kind}",
        "check the file's format"
        + (
            " (a folder written by Dataset.save_to_disk)"
            if kind == "a saved dataset folder"
            else ""
        ),
    )


def require_columns(table: Table, columns: dict[str, str], path: Path, what: str) -> None:
    """Raise one error listing every missing column; `columns` maps the setting that names a
    column (e.g. "data.text_column") to the column's name."""
    problems = [
        Problem(
            f"{path} column {column!r}",
            table.column_names,
            f"the {what} must have a column {column!r}",
            f"rename a column to {column!r}, or set {setting} to one of {table.column_names}",
        )
        for setting, column in columns.items()
        if column not in table.column_names
    ]
    if problems:
        raise InputError(problems, title=f"{path}: missing column")


def text_column(table: Table, column: str, path: Path, what: str, setting: str) -> list[str]:
    """The column's values, which must all be non-empty strings (`setting` names the column)."""
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
            f"every value of the {what} text column must be non-empty text ({len(bad)} of "
            f"{len(values)} rows are not)",
            f"remove or fill those rows, or set {setting} to the text column",
        )
    return values


def read_unlabelled(paths: Sequence[Path], column: str) -> list[str]:
    """All unlabelled texts, in file order."""
    texts: list[str] = []
    for path in paths:
        table = read_table(path, "unlabelled file")
        setting = "data.unlabelled_text_column"
        require_columns(table, {setting: column}, path, "unlabelled file")
        texts.extend(text_column(table, column, path, "unlabelled file", setting))
    return texts


@dataclass
class RawData:
    """Everything read from the data files and checked, before any tokenizer or model loads."""

    train: Any
    test: Any | None
    unlabelled: list[str]
    label_names: list[str]


def read_data(
    config: RunConfig, task, lm: bool | None = None, names: dict[Path, str] | None = None
) -> RawData:
    """Read and check every data file of the config, reporting the problems of all of them at
    once (`InputError`); the unlabelled files only when `lm` (default: the config runs phase 1).
    `names` says how the user named each file (resolved path -> "data.train (train.csv)"), for
    the messages; by default they show the resolved path."""
    lm = config.phase1.steps > 0 if lm is None else lm
    data, problems, titles = config.data, [], []

    def attempt(path: Path, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except InputError as err:
            name = (names or {}).get(path)
            problems.extend(renamed(err.problems, path, name))
            titles.append(err.title.replace(str(path), name) if name else err.title)
            return None

    train = attempt(data.train, lambda: task.read(data.train, data, "labelled training file"))
    labels = None if train is None else attempt(data.train, lambda: task.label_names(train, data))
    if labels is not None:
        attempt(data.train, lambda: task.check_labels(train, labels, data.train))
    test = None
    if data.test is not None:
        test = attempt(data.test, lambda: task.read(data.test, data, "labelled test file"))
        if test is not None and labels is not None:
            attempt(data.test, lambda: task.check_labels(test, labels, data.test))
    unlabelled: list[str] = []
    for path in data.unlabelled if lm else []:
        read = lambda path=path: read_unlabelled([path], data.unlabelled_text_column)  # noqa: E731
        unlabelled += attempt(path, read) or []
    if lm and not data.unlabelled and not data.labelled_text_for_lm:
        problems.append(
            Problem(
                "phase1.steps",
                config.phase1.steps,
                "phase 1 needs LM text: `data.unlabelled` files or `data.labelled_text_for_lm: "
                "true`",
                "add unlabelled files, enable labelled_text_for_lm, or set phase1.steps to 0",
            )
        )
    if problems:
        title = titles[0] if len(titles) == 1 else f"invalid data ({len(titles)} files)"
        raise InputError(problems, title=title if titles else "invalid config")
    return RawData(train, test, unlabelled, labels)


def data_problems(
    config: RunConfig,
    task,
    folds: int = 1,
    lm: bool | None = None,
    names: dict[Path, str] | None = None,
) -> tuple[RawData | None, list[Problem]]:
    """Every data problem of a config at once: its files (`read_data`) and whether the split a
    run makes is possible (`folds` >= 2 CV folds, or 1: a validation split of
    data.validation_fraction). Returns the data (None when a file is bad) and the problems."""
    try:
        raw = read_data(config, task, lm, names)
    except InputError as err:
        return None, list(err.problems)
    where = (names or {}).get(config.data.train, config.data.train)
    strata, groups = task.strata(raw.train), task.groups(raw.train)
    problems = split_problems(strata, groups, folds, config.data.validation_fraction, where)
    return (None if problems else raw), problems


def renamed(problems: list[Problem], path: Path, name: str | None) -> list[Problem]:
    """`problems` of one file with its resolved path replaced by how the user named it."""
    if not name:
        return list(problems)
    return [replace(p, where=p.where.replace(str(path), name)) for p in problems]


def table_problems(names: dict[Path, str]) -> list[Problem]:
    """What is wrong with each data file that is there and is a table (CSV, JSON, Parquet, ...),
    read without the config's settings: for a config too broken to read its files properly."""
    problems = []
    for path, name in names.items():
        if path.is_file() and path.suffix.lower() in READERS:
            try:
                read_table(path, "data file")
            except InputError as err:
                problems += renamed(err.problems, path, name)
    return problems


def data_names(raw: dict[str, Any], base_dir: Path) -> dict[Path, str]:
    """How a config mapping names its data files: resolved path -> "data.train (train.csv)"."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    named = [(f"data.{key}", data.get(key)) for key in ("train", "test")]
    unlabelled = data.get("unlabelled") if isinstance(data.get("unlabelled"), list) else []
    named += [(f"data.unlabelled[{i}]", value) for i, value in enumerate(unlabelled)]
    return {
        (
            Path(value) if Path(value).is_absolute() else (base_dir / value).resolve()
        ): f"{key} ({value})"
        for key, value in named
        if isinstance(value, str)
    }
