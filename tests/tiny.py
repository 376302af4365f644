"""The tests' tiny random models and toy words, shared with the benches (bench/harness.py puts
this folder on sys.path): a 2-layer BERT-like masked LM with a WordPiece vocabulary and a 2-layer
GPT-2-like causal LM with a byte-level BPE, each saved like a hub checkpoint, so the real
`from_pretrained` path is what loads them. Imports torch and transformers only when a model is
built."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "happy", "love"]
NEGATIVE = ["bad", "awful", "terrible", "sad", "hate"]
NEUTRAL = ["okay", "fine", "average", "normal", "plain"]
FILLER = (
    "the a car road drive today city bus train ride was is it this my our very so and then".split()
)
LABELS = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}


def toy_sentence(rng: random.Random, word: str) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def toy_vocabulary() -> list[str]:
    words = sorted({w for ws in LABELS.values() for w in ws} | set(FILLER))
    return (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + words
        + list("abcdefghijklmnopqrstuvwxyz")
        + list(".,?!'-")  # what the toy texts and the QA fixtures hold besides words
    )


def save_tiny_bert(folder: Path, vocab: list[str]) -> Path:
    """A 2-layer BERT (masked LM) with this WordPiece vocabulary, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_gpt2(
    folder: Path, corpus: list[str], vocab_size: int, min_frequency: int, seed: int | None = 0
) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE trained on `corpus`; no pad token (like GPT-2).
    `seed` None leaves torch's random state as it is."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=["<|endoftext|>"]
    )
    bpe.save_model(str(folder))
    merges = [
        tuple(line.split())
        for line in (folder / "merges.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    tokenizer = GPT2TokenizerFast(
        vocab=json.loads((folder / "vocab.json").read_text()), merges=merges
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
