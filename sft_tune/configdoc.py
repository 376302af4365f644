"""docs/config.md, written from the schemas' field descriptions, so the reference cannot drift from
the code: `python -m sft_tune.configdoc` writes it, `python -m sft_tune.configdoc --check` exits 1
when the file on disk differs (tests/test_docs.py runs the check).

Three schemas: the run config (`config.RunConfig`), each task's own section of `data`
(`TaskFiles.options`, from the task registry) and the search-space file (`space.SearchSpace`).
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sft_tune.config import RunConfig
from sft_tune.sweep.space import Param, SearchSpace
from sft_tune.tasks import TASKS

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

HEADER = """\
# Config reference

Generated from the schemas' field descriptions by `python -m sft_tune.configdoc` (do not edit by
hand; `tests/test_docs.py` fails when this file is stale). Unknown keys are errors, every
problem is reported at once, and relative paths are relative to the file's own folder.
"""


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every field of `model`, nested models flattened into
    dotted keys in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        if (field.json_schema_extra or {}).get("internal"):
            continue  # written as other keys (a task's section of `data`: listed per task)
        key = f"{prefix}{name}"
        if _is_model(field.annotation):
            summary = field.description or _first_line(field.annotation.__doc__)
            out.append((key, "section", "", summary))
            out.extend(rows(field.annotation, key + "."))
            continue
        out.append((key, type_name(field.annotation), _default(field), field.description or ""))
    return out


def type_name(annotation: Any) -> str:
    """A type as a config writer reads it: `int`, `float`, `one of a, b`, `list of path`..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(kinds) + (" or none" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is Any:
        return "any"
    names = {str: "text", int: "int", float: "float", bool: "bool", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "none"
    if value in ([], {}):
        return "`[]`" if value == [] else "`{}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").split("\n\n")[0].split())


def table(entries: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, meaning in entries:
        cells = [f"`{key}`", kind, default, meaning]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole of docs/config.md."""
    parts = [HEADER, "\n## Run config (`sft-tune train --config`, a search's base config)\n\n"]
    parts.append(_first_line(RunConfig.__doc__) + "\n\n" + table(rows(RunConfig)))
    for name, files in TASKS.items():
        if files.options is None:
            continue
        options = files.options
        parts.append(f"\n## `data.{options.section}`: options of the `{name}` task\n\n")
        parts.append(_first_line(options.__doc__) + "\n\n")
        parts.append(table(rows(options, f"data.{options.section}.")))
    parts.append("\n## Search-space file (`sft-tune search --space`)\n\n")
    parts.append(_first_line(SearchSpace.__doc__) + "\n\n" + table(rows(SearchSpace)))
    parts.append("\n### One searched parameter (`params.<dotted config path>`)\n\n")
    parts.append(_first_line(Param.__doc__) + "\n\n" + table(rows(Param)))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sft_tune.configdoc", description="Write or check docs/config.md."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run `python -m sft_tune.configdoc`", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
