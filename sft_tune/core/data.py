"""Reading labelled and unlabelled text, tokenizing once (cached by content), batching.

Files are read through the `datasets` library: CSV, JSONL/JSON, Parquet, or a folder written by
`Dataset.save_to_disk`. Every problem with a file is an `InputError` naming the file and column.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from sft_tune.errors import InputError, Problem, fail, first_problems, undecodable

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()

READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# Tokenization passes actually run in this process (cache hits do not count).
TOKENIZATION_PASSES = 0


def read_table(path: Path, what: str) -> datasets.Dataset:
    """Read a data file (or saved dataset folder) into a `datasets.Dataset`."""
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


def require_columns(table: datasets.Dataset, columns: Sequence[str], path: Path, what: str) -> None:
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


def text_column(table: datasets.Dataset, column: str, path: Path, what: str) -> list[str]:
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
class Encoded:
    """Token ids for a list of texts (kept as Python lists: cheap to pickle and to batch)."""

    input_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)


def cache_root(configured: Path | None) -> Path:
    """The tokenization cache folder: config, then $SFT_TUNE_CACHE, then ~/.cache/sft-tune."""
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("SFT_TUNE_CACHE", Path.home() / ".cache" / "sft-tune")) / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer turns text into ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are per-call settings that a call leaves behind, not identity.
        state.pop("truncation", None)
        state.pop("padding", None)
        body = json.dumps(state, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [type(tokenizer).__name__, tokenizer.all_special_tokens, tokenizer.padding_side]
    )
    return hashlib.sha256((body + extra).encode()).hexdigest()


def cached(
    kind: str,
    tokenizer,
    params: dict[str, Any],
    items: Sequence[Any],
    compute: Callable[[], Any],
    cache_dir: Path | None = None,
) -> Any:
    """`compute()`'s JSON result, reused when the same `kind`, tokenizer, params and items come again.

    Every tokenization of a labelled or unlabelled set goes through here, so a sweep tokenizes
    each file once however many trials, folds and workers use it; `TOKENIZATION_PASSES` counts
    the misses.
    """
    global TOKENIZATION_PASSES
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    for item in items:
        digest.update(
            item.encode() if isinstance(item, str) else json.dumps(item, sort_keys=True).encode()
        )
        digest.update(b"\0")
    entry = cache_root(cache_dir) / f"{digest.hexdigest()}.json"
    if entry.is_file():
        return json.loads(entry.read_text())
    TOKENIZATION_PASSES += 1
    result = compute()
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=entry.parent, delete=False, suffix=".tmp") as handle:
        json.dump(result, handle)
    os.replace(handle.name, entry)
    return result


def tokenize(
    texts: Sequence[str], tokenizer, max_length: int, cache_dir: Path | None = None
) -> Encoded:
    """Tokenize texts with truncation, reusing an earlier result for the same texts and tokenizer."""
    ids = cached(
        "texts",
        tokenizer,
        {"max_length": max_length},
        texts,
        lambda: tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"],
        cache_dir,
    )
    return Encoded(ids)


class TokenArray:
    """Many token-id sequences in one flat int32 array plus offsets.

    Shared through the Ray object store it stays one copy: `ray.get` maps numpy buffers
    zero-copy (read-only) into every worker on the node, where a list of Python lists would be
    rebuilt in each worker's heap. Item `i` is a view of its tokens.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> TokenArray:
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(
            (token for seq in sequences for token in seq), dtype=np.int32, count=int(offsets[-1])
        )
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


class SequenceView:
    """Selected items of several `TokenArray`s as one sequence list, without copying tokens:
    `parts` is [(array, indices into it), ...]."""

    def __init__(self, parts: Sequence[tuple[TokenArray, np.ndarray]]) -> None:
        self.parts = [(array, np.asarray(index, dtype=np.int64)) for array, index in parts]
        self.ends = np.cumsum([len(index) for _, index in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self.ends, i, side="right"))
        array, index = self.parts[part]
        return array[int(index[i - (self.ends[part - 1] if part else 0)])]


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit content hash per text (to test "is this text held out?" without the texts)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            for t in texts
        ),
        dtype=np.uint64,
        count=len(texts),
    )
