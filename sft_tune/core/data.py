"""Tokenizing once (cached by content) and the token arrays shared through Ray.

Reading the data files is `files.py`'s part.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Tokenization passes actually run in this process (cache hits do not count).
TOKENIZATION_PASSES = 0


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
    """`compute()`'s JSON result, reused when the same `kind`, tokenizer, params and items come
    again.

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
    """Tokenize texts with truncation, reusing an earlier result for the same texts and
    tokenizer."""
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


def normalized(text: str) -> str:
    """The form two texts are compared in when LM data must not hold a held-out text: Unicode
    NFKC, case-folded, every whitespace removed. So a sentence written naturally ("New York.")
    matches the same sentence as NER words joined by spaces ("New York ."), full-width letters
    match ASCII ones, and "Good car" matches "good  car"."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit hash per text of its `normalized` form (to test "is this text held out?" without
    the texts)."""
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(normalized(t).encode(), digest_size=8).digest(), "little"
            )
            for t in texts
        ),
        dtype=np.uint64,
        count=len(texts),
    )


def unknown_tokens(ids: Sequence[Sequence[int]], tokenizer) -> tuple[int, int]:
    """(unknown tokens, tokens) in token-id sequences, special tokens not counted; (0, n) for a
    tokenizer without an unknown token (byte-level BPE reads every text)."""
    unk = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids) - {unk}
    unknown = total = 0
    for seq in ids:
        for token in seq:
            if token not in special:
                total += 1
                unknown += token == unk
    return (unknown if unk is not None else 0), total


def unreadable_characters(texts: Sequence[str], tokenizer, limit: int = 8) -> list[tuple[str, int]]:
    """The characters of `texts` that the tokenizer reads as its unknown token, most frequent
    first, with their counts (at most `limit`)."""
    unk = tokenizer.unk_token_id
    counts: dict[str, int] = {}
    for text in texts:
        for char in text:
            if not char.isspace():
                counts[char] = counts.get(char, 0) + 1
    if unk is None or not counts:
        return []
    chars = list(counts)
    pieces = tokenizer(chars, add_special_tokens=False)["input_ids"]
    unread = [(c, counts[c]) for c, ids in zip(chars, pieces) if not ids or unk in ids]
    return sorted(unread, key=lambda item: (-item[1], item[0]))[:limit]
