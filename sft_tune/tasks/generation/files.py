"""Prompt -> response input: a table with `prompt`/`response` columns or chat `messages`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sft_tune.config import DataConfig, TaskOptions
from sft_tune.core.files import read_table, require_columns, text_column
from sft_tune.errors import fail
from sft_tune.tasks.base import TaskFiles

Prompt = str | list[dict[str, str]]  # plain text, or chat messages before the response


@dataclass
class Conversations:
    """Prompts (text or chat messages) and the responses to learn, as read from a file."""

    prompts: list[Prompt]
    responses: list[str]
    path: Path


class GenerationOptions(TaskOptions):
    """How prompt->response files are read and rendered (task: generation)."""

    section = "generation"
    # What a search may vary per trial (the data is encoded again for each value); the other
    # fields decide how the files are read, which a sweep keeps fixed.
    encoding_fields = ("chat_template", "max_new_tokens")

    prompt_column: str = Field("prompt", description="Column with the prompt text.")
    response_column: str = Field(
        "response", description="Column with the response text (trained on)."
    )
    messages_column: str = Field(
        "messages",
        description="Column with chat messages [{role, content}, ...], used when the file has it: "
        "the last assistant message is the response, everything before it the prompt.",
    )
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Render prompts with the tokenizer's chat template: auto = when it has one "
        "(always for `messages`).",
    )
    max_new_tokens: int = Field(
        32, ge=1, description="Longest greedy generation in evaluation (exact match) and predict."
    )


class GenerationFiles(TaskFiles):
    name = "generation"
    metric = "token_accuracy"
    metrics = ("loss", "perplexity", "token_accuracy", "exact_match")
    options = GenerationOptions

    def read(self, path: Path, data: DataConfig, what: str) -> Conversations:
        table = read_table(path, what)
        settings = GenerationOptions.of(data)
        if settings.messages_column in table.column_names:
            prompts, responses = _split_messages(
                table[settings.messages_column], path, settings.messages_column
            )
        else:
            require_columns(
                table,
                {
                    "data.generation.prompt_column": settings.prompt_column,
                    "data.generation.response_column": settings.response_column,
                },
                path,
                what,
            )
            prompts = text_column(
                table, settings.prompt_column, path, what, "data.generation.prompt_column"
            )
            responses = text_column(
                table, settings.response_column, path, what, "data.generation.response_column"
            )
        return Conversations(list(prompts), list(responses), Path(path))

    def label_names(self, train: Conversations, data: DataConfig) -> list[str]:
        if data.labels is not None:
            raise fail(
                "data.labels",
                data.labels,
                "the generation task has no label set (responses are free text)",
                "remove `data.labels`",
            )
        return []

    def check_labels(self, labelled: Conversations, names: Sequence[str], path: Path) -> None:
        return None  # any response text is valid

    def texts(self, labelled: Conversations) -> list[str]:
        return [
            f"{prompt_text(prompt)}\n{response}"
            for prompt, response in zip(labelled.prompts, labelled.responses)
        ]

    def held_out_texts(self, labelled: Conversations) -> list[list[str]]:
        """The prompt alone too: an unlabelled pool of the same domain holds prompts (e.g. the
        tweets whose label word is the response), not prompt-response pairs."""
        return [
            [prompt_text(prompt), text]
            for prompt, text in zip(labelled.prompts, self.texts(labelled))
        ]

    def strata(self, labelled: Conversations) -> list[str]:
        return [
            response.strip().casefold() for response in labelled.responses
        ]  # label words stay balanced

    def groups(self, labelled: Conversations) -> list[str]:
        return [
            prompt_text(prompt) for prompt in labelled.prompts
        ]  # a repeated prompt stays on one side

    def read_input(self, path: Path, data: DataConfig) -> Conversations:
        """The prompts to answer (text, or chat messages), checked; no responses."""
        settings = GenerationOptions.of(data)
        table = read_table(path, "input file")
        if settings.messages_column in table.column_names:
            prompts = list(table[settings.messages_column])
            for row, messages in enumerate(prompts):
                _check_messages(messages, path, settings.messages_column, row)
        else:
            require_columns(
                table, {"data.generation.prompt_column": settings.prompt_column}, path, "input file"
            )
            prompts = text_column(
                table, settings.prompt_column, path, "input file", "data.generation.prompt_column"
            )
        return Conversations(list(prompts), [], Path(path))


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt (the message contents, in order)."""
    return (
        prompt if isinstance(prompt, str) else "\n".join(message["content"] for message in prompt)
    )


def _check_messages(messages: Any, path: Path, column: str, row: int) -> None:
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise fail(
            f"{path} column {column!r} row {row + 1}",
            messages,
            "must be a non-empty list of {role, content} messages",
            'write messages as [{"role": "user", "content": "..."}, ...]',
        )


def _split_messages(
    column: list[Any], path: Path, name: str
) -> tuple[list[list[dict[str, str]]], list[str]]:
    """(messages before the last assistant message, that message's content) per row."""
    prompts, responses = [], []
    for row, messages in enumerate(column):
        _check_messages(messages, path, name, row)
        if (
            messages[-1]["role"] != "assistant"
            or len(messages) < 2
            or not messages[-1]["content"].strip()
        ):
            raise fail(
                f"{path} column {name!r} row {row + 1}",
                [m["role"] for m in messages],
                "a training conversation must end with a non-empty assistant message after at "
                "least one other message",
                "end each conversation with the assistant reply to learn",
            )
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages[:-1]])
        responses.append(messages[-1]["content"])
    return prompts, responses
