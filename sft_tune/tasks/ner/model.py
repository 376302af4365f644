"""Token classification (NER): one tag per word, scored by entity-level seqeval F1.

Reading (CoNLL, sentence tables, tag schemes, the label set) is `files.py`'s part. Test files
are scored in the training file's scheme: seqeval strict mode for IOB2 and BIOES, conlleval
(default) mode for IOB1.

Sub-words. Each distinct word is tokenized on its own (what `is_split_into_words` does, and it
works with slow tokenizers too); a word that yields no token (BERT drops U+3000) stands as the
unknown token, so that every word is seen. Tokenizers are loaded with `add_prefix_space=True`:
byte-level BPE (GPT-2, RoBERTa, Qwen) needs it to read a word as it reads it mid-sentence
("Ġword"); in transformers 5 SentencePiece classes default to it and WordPiece ignores it.

Windows. The sub-tokens of a sentence are cut into windows of at most `data.max_length` tokens
(special tokens included) overlapping by `data.stride`. A word seen in several windows takes the
prediction of the window where its first sub-token is farthest from a cut (a sentence end is not
a cut), the earlier window on ties.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from seqeval.metrics import accuracy_score, classification_report
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, IOBES
from transformers import AutoModelForTokenClassification

from sft_tune.config import DataConfig
from sft_tune.core.batches import pad
from sft_tune.core.data import cached
from sft_tune.core.losses import IGNORE_INDEX
from sft_tune.errors import fail
from sft_tune.tasks.base import Task
from sft_tune.tasks.ner.files import NerFiles, NerOptions, Sentences


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


class NerTask(Task):
    files_class = NerFiles
    auto_model = AutoModelForTokenClassification

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
            scheme=self.files.scheme or labelled.scheme,
        )

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
        self, model, tokenizer, rows, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"text", "entities": [{"type", "start", "end", "text", "score"}]}` per row
        (`read_input`'s rows); character offsets into `text` (the text column, or the tokens joined
        by spaces)."""
        prefix, suffix = special_tokens(tokenizer)
        content = content_length(data, len(prefix) + len(suffix))
        return _predictions(
            model, tokenizer, rows, (prefix, suffix, content, data.stride), batch_size
        )


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
    """[start, end) sub-token spans of at most `content` tokens, consecutive ones sharing
    `stride`."""
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
    """Windows padded on the tokenizer's side (labels with IGNORE_INDEX); no labels where none are
    known."""
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
    """Records for `rows`, `batch_size` rows at a time (their windows in batches of
    `batch_size`)."""
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
