"""Prompt -> response supervised fine-tuning of a causal LM (decoders: GPT-2, Llama, SmolLM2).

Each example is a prompt and the response to train on: a `prompt`/`response` pair or a chat
`messages` list (the last assistant message is the response, everything before it the prompt,
rendered with the tokenizer's chat template). The task loss is next-token cross-entropy on the
response tokens only (prompt positions carry the ignore label -100), so phase 1 trains
`L_lm(unlabelled) + alpha * L_response` and phase 2 `L_response`. Batches group examples of similar
length (`Task.lengths`), so padding does not dominate the cost.

Metrics on held-out examples: response loss and perplexity, teacher-forced next-token accuracy
on the response, and exact-match accuracy: the share of greedy generations that reproduce the
response's tokens exactly (up to EOS) — the score to search on when responses are label words.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from sft_tune.config import DataConfig
from sft_tune.core.batches import pad
from sft_tune.core.data import cached
from sft_tune.core.losses import IGNORE_INDEX
from sft_tune.errors import fail
from sft_tune.tasks.base import Task
from sft_tune.tasks.generation.files import (
    Conversations,
    GenerationFiles,
    GenerationOptions,
    Prompt,
)


@dataclass
class EncodedConversations:
    """Token ids of prompts (as rendered) and responses (ending in EOS), plus what evaluation
    needs."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    responses: list[str]
    max_new_tokens: int
    eos_id: int

    def __len__(self) -> int:
        return len(self.responses)

    def subset(self, indices: Sequence[int]) -> EncodedConversations:
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return EncodedConversations(
            pick(self.prompt_ids),
            pick(self.response_ids),
            pick(self.responses),
            self.max_new_tokens,
            self.eos_id,
        )


class GenerationTask(Task):
    files_class = GenerationFiles
    auto_model = AutoModelForCausalLM

    def encode(
        self, labelled: Conversations, tokenizer, names: Sequence[str], data: DataConfig
    ) -> EncodedConversations:
        settings = GenerationOptions.of(data)
        rendered = [
            render_prompt(prompt, tokenizer, settings, labelled.path) for prompt in labelled.prompts
        ]
        templated = any(flag for _, flag in rendered)  # the template writes its own BOS

        def compute() -> list[list[list[int]]]:
            prompts = tokenizer([text for text, _ in rendered], add_special_tokens=not templated)[
                "input_ids"
            ]
            responses = tokenizer(labelled.responses, add_special_tokens=False)["input_ids"]
            pairs = [
                fit_length(p, r + [tokenizer.eos_token_id], data.max_length)
                for p, r in zip(prompts, responses)
            ]
            return [[p for p, _ in pairs], [r for _, r in pairs]]

        items = [[text, response] for (text, _), response in zip(rendered, labelled.responses)]
        prompt_ids, response_ids = cached(
            "generation",
            tokenizer,
            {"max_length": data.max_length, "templated": templated},
            items,
            compute,
            data.cache_dir,
        )
        return EncodedConversations(
            prompt_ids,
            response_ids,
            labelled.responses,
            settings.max_new_tokens,
            tokenizer.eos_token_id,
        )

    def lengths(self, examples: EncodedConversations) -> list[int]:
        return [len(p) + len(r) for p, r in zip(examples.prompt_ids, examples.response_ids)]

    def collate(
        self, examples: EncodedConversations, indices: Sequence[int], pad_id: int, side: str
    ) -> dict[str, torch.Tensor]:
        sequences = [examples.prompt_ids[i] + examples.response_ids[i] for i in indices]
        targets = [
            [IGNORE_INDEX] * len(examples.prompt_ids[i]) + examples.response_ids[i] for i in indices
        ]
        input_ids, attention_mask = pad(sequences, pad_id, side)
        labels, _ = pad(targets, IGNORE_INDEX, side)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def evaluate(
        self, model, examples: EncodedConversations, batches, pad_id: int, side: str, device
    ) -> dict[str, float]:
        total_loss, total_tokens, correct, matches = 0.0, 0, 0, 0
        for indices in batches:
            batch = {
                k: v.to(device) for k, v in self.collate(examples, indices, pad_id, side).items()
            }
            logits = (
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                .logits[:, :-1]
                .float()
            )
            targets = batch["labels"][:, 1:]
            scored = targets != IGNORE_INDEX
            total_loss += torch.nn.functional.cross_entropy(
                logits[scored], targets[scored], reduction="sum"
            ).item()
            correct += (logits.argmax(-1)[scored] == targets[scored]).sum().item()
            total_tokens += int(scored.sum())
            longest = max(len(examples.response_ids[i]) for i in indices)
            prompts = [examples.prompt_ids[i] for i in indices]
            for i, ids in zip(
                indices,
                generate(
                    model,
                    prompts,
                    pad_id,
                    examples.eos_id,
                    min(longest, examples.max_new_tokens),
                    device,
                ),
            ):
                matches += ids == without_eos(examples.response_ids[i], examples.eos_id)
        count = sum(len(indices) for indices in batches)
        loss = total_loss / max(total_tokens, 1)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": correct / max(total_tokens, 1),
            "exact_match": matches / max(count, 1),
        }

    def predict(
        self, model, tokenizer, rows: Conversations, data: DataConfig, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """`{"prompt", "response"}` per row (`read_input`'s prompts): a greedy generation of at
        most max_new_tokens."""
        settings = GenerationOptions.of(data)
        prompts = rows.prompts
        rendered = [render_prompt(prompt, tokenizer, settings, rows.path) for prompt in prompts]
        ids = tokenizer(
            [text for text, _ in rendered], add_special_tokens=not any(flag for _, flag in rendered)
        )["input_ids"]
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

        def records() -> Iterator[dict[str, Any]]:
            for start in range(0, len(prompts), batch_size):
                texts = generate(
                    model,
                    ids[start : start + batch_size],
                    pad_id,
                    tokenizer.eos_token_id,
                    settings.max_new_tokens,
                    torch.device("cpu"),
                    tokenizer,
                )
                for prompt, text in zip(prompts[start : start + batch_size], texts):
                    yield {"prompt": prompt, "response": text}

        return records()


def generate(
    model,
    prompts: list[list[int]],
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
    device,
    tokenizer=None,
) -> list[str] | list[list[int]]:
    """Greedy continuations of left-padded prompts: decoded text with a tokenizer, else token ids
    (EOS and what follows dropped)."""
    input_ids, attention_mask = pad(prompts, pad_id, "left")
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max(max_new_tokens, 1),
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    continuations = []
    for row in output[:, input_ids.shape[1] :].tolist():
        continuations.append(row[: row.index(eos_id)] if eos_id in row else row)
    if tokenizer is not None:
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in continuations]
    return continuations


def without_eos(ids: list[int], eos_id: int) -> list[int]:
    """A response's token ids as a generation would produce them (before its EOS)."""
    return ids[:-1] if ids and ids[-1] == eos_id else ids


def fit_length(
    prompt: list[int], response: list[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Cut a (prompt, response) pair to `max_length` tokens: the prompt loses its start first (the
    end, next to the response, matters most), keeping at least a quarter of the budget; then the
    response loses its end."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_prompt = max(max_length - len(response), max_length // 4, 1)
    prompt = prompt[-keep_prompt:]
    return prompt, response[: max_length - len(prompt)]


def _use_template(tokenizer, settings: GenerationOptions) -> bool:
    return settings.chat_template == "always" or (
        settings.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    )


def render_prompt(
    prompt: Prompt, tokenizer, settings: GenerationOptions, path: Path
) -> tuple[str, bool]:
    """The prompt as the model sees it (chat template with a generation prompt, or plain text)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) or _use_template(tokenizer, settings):
        if not getattr(tokenizer, "chat_template", None):
            what = (
                "chat `messages`"
                if isinstance(prompt, list)
                else "data.generation.chat_template: always"
            )
            raise fail(
                f"{path}",
                what,
                "rendering chat messages needs a tokenizer with a chat template",
                "use an instruct/chat checkpoint, or give plain `prompt`/`response` columns with "
                "chat_template: never",
            )
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        ), True
    return prompt, False
