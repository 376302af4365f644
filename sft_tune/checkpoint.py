"""A local model folder judged before anything loads: its config.json, weights and tokenizer
files, a GGUF file, and what its config.json rules out (a masked-LM loss on a decoder, a task
head its architecture does not have).

Which architectures have which head is transformers' own table (`MODEL_FOR_*_MAPPING_NAMES` in
`transformers/models/auto/modeling_auto.py`). Importing that module imports torch (seconds), so
its literal tables are read from the source instead; where that fails, the check is left to
loading, which fails with transformers' message.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from sft_tune.errors import Problem

# What `from_pretrained` reads weights from (single or sharded files).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "tf_model.h5")
# Tokenizer files: the fast tokenizer's file, or a vocabulary of the slow ones.
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "*.model",
    "*.tiktoken",
)
MASKED = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
CAUSAL = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"


def folder_problems(key: str, written: str, folder: Path, gguf: str | None) -> list[Problem]:
    """What a local model folder lacks: config.json, weights and tokenizer files (or, with
    `gguf`, the GGUF file that holds all three). `key`/`written` name the setting as written."""
    folder = Path(folder)
    if not folder.is_dir():
        return [
            Problem(
                key,
                written,
                f"a local model must be a folder ({folder.resolve()} is not one)",
                "point to the folder holding config.json and the tokenizer files",
            )
        ]
    if gguf is not None:
        if (folder / gguf).is_file():
            return []
        there = sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf")
        return [
            Problem(
                "model.gguf_file",
                gguf,
                f"must be a file in {folder.resolve()} (GGUF files there: {there or 'none'})",
                f"set model.gguf_file to one of {there}" if there else "check the file name",
            )
        ]
    missing = [
        what
        for what, present in (
            ("config.json", (folder / "config.json").is_file()),
            ("weights (model.safetensors or pytorch_model.bin)", _holds(folder, WEIGHT_PATTERNS)),
            (
                "tokenizer files (tokenizer.json, or a vocabulary: vocab.txt, vocab.json with "
                "merges.txt, *.model)",
                _holds(folder, TOKENIZER_PATTERNS),
            ),
        )
        if not present
    ]
    if not missing:
        return []
    return [
        Problem(
            key,
            written,
            "a local model folder must hold config.json, the weights and the tokenizer files; "
            f"{folder.resolve()} has no {', no '.join(missing)}",
            "point to a folder saved by save_pretrained (model and tokenizer), or copy the "
            "missing files in",
        )
    ]


@dataclass(frozen=True)
class Head:
    """The head a task puts on the backbone: transformers' mapping of the model types that have
    it (e.g. MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES), the head in words, and whether it
    needs a decoder (an encoder's causal-LM class does not count)."""

    table: str
    words: str
    decoder_only: bool = False


def hub_problems(
    key: str, name: str, gguf: str | None, objective: str, task: str, head: Head | None = None
) -> list[Problem]:
    """A hub id (not a local folder). Online, loading downloads it: nothing to judge before. With
    Hugging Face offline (HF_HUB_OFFLINE), it must already be in the local cache, or loading fails
    only after every other check passed: looked up there with huggingface_hub (no torch), and a
    cached config.json is judged like a local folder's."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return []
    wanted = gguf or "config.json"
    try:
        found = try_to_load_from_cache(name, wanted)
    except ValueError:  # not a valid repo id (huggingface_hub's HFValidationError)
        found = None
    if isinstance(found, str):
        return [] if gguf else architecture_problems(Path(found), objective, task, head)
    return [
        Problem(
            key,
            name,
            "with Hugging Face offline (HF_HUB_OFFLINE), a hub id must be in the local cache "
            f"({constants.HF_HUB_CACHE}), and its {wanted} is not there",
            "download it once where the hub is reachable (`hf download ID`), point to a local "
            "model folder, or unset HF_HUB_OFFLINE",
        )
    ]


def architecture_problems(
    config_json: Path, objective: str, task: str, head: Head | None = None
) -> list[Problem]:
    """What the checkpoint's config.json already rules out, before any weight loads: a masked-LM
    objective on a model without a masked-LM head, a causal one without a causal-LM head, a task
    whose `head` the architecture lacks (generation on an encoder, QA on GPT-2's family ...)."""
    try:
        checkpoint = json.loads(Path(config_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [
            Problem(
                str(config_json),
                str(err),
                "the model's config.json must be JSON",
                "re-save the model with save_pretrained",
            )
        ]
    kind = checkpoint.get("model_type") if isinstance(checkpoint, dict) else None
    heads = head_tables(*((head.table,) if head else ()))
    if not isinstance(kind, str) or not heads:
        return []  # a custom model, or transformers' tables unreadable: loading decides
    problems = []
    if objective == "masked" and kind not in heads[MASKED]:
        problems.append(
            Problem(
                "model.lm_objective",
                objective,
                f"a masked-LM loss needs an encoder with a masked-LM head; {config_json} is a "
                f"{kind!r} model",
                "set model.lm_objective to causal or auto",
            )
        )
    if objective == "causal" and kind not in heads[CAUSAL]:
        problems.append(
            Problem(
                "model.lm_objective",
                objective,
                f"a next-token loss needs a causal-LM head; {config_json} is a {kind!r} model",
                "set model.lm_objective to masked or auto",
            )
        )
    if head is not None and head.decoder_only:
        # BERT-like encoders also have a causal-LM class (for decoder use): is_decoder tells.
        encoder = kind in heads[MASKED] and not checkpoint.get("is_decoder")
        if encoder or kind not in heads[CAUSAL]:
            problems.append(
                Problem(
                    "model.task",
                    task,
                    f"the {task} task needs a decoder (GPT/Llama-like); {config_json} is the "
                    f"encoder {kind!r}",
                    "use a decoder checkpoint, or another task",
                )
            )
    elif head is not None and kind not in heads[head.table]:
        problems.append(
            Problem(
                "model.task",
                task,
                f"the {task} task needs a {head.words} head, and transformers has none for "
                f"{config_json}'s model type {kind!r}",
                "use a checkpoint of an architecture that has one, or another task",
            )
        )
    return problems


@functools.cache
def head_tables(*tables: str) -> dict[str, set[str]]:
    """transformers' model-type tables of the LM heads and of `tables` (a task's head), read from
    its source without importing it; {} when the source cannot be found or read."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(spec.submodule_search_locations[0]) / "models" / "auto" / "modeling_auto.py"
    wanted = {MASKED, CAUSAL, *tables}
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        tables = {}
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) in wanted
                and isinstance(node.value, ast.Call)
                and node.value.args
            ):
                tables[node.targets[0].id] = {
                    kind for kind, _ in ast.literal_eval(node.value.args[0])
                }
    except (OSError, SyntaxError, ValueError, TypeError):
        return {}
    return tables if set(tables) == wanted else {}


def _holds(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)
