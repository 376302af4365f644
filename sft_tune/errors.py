"""User-facing input errors: bad config, search space, data file or CLI argument.

Each problem names the key or file as the user wrote it, the value received, the rule and the fix.
The CLI prints them all at once and exits with code 2, without a traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


class _Missing:
    """The value of a key that is not there at all (shown as "nothing", not as None)."""

    def __repr__(self) -> str:
        return "nothing"


MISSING = _Missing()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input."""

    where: str
    value: object
    rule: str
    fix: str

    def __str__(self) -> str:
        value = _short(self.value)
        return f"{self.where}: got {value}; {self.rule}. Fix: {self.fix}"


class InputError(Exception):
    """Bad user input, reported as a list of problems (all of them, not the first one)."""

    def __init__(self, problems: list[Problem], title: str = "invalid input") -> None:
        self.problems = list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"{self.title}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head] + [f"  - {problem}" for problem in self.problems])


SHOWN = 10  # problems listed for one bad file; the rest are only counted


def first_problems(problems: list[Problem], title: str, limit: int = SHOWN) -> InputError:
    """One `InputError` listing the first `limit` problems of a file (a file can hold thousands
    of bad lines), the title saying how many there are in all."""
    more = f" ({len(problems)} in all, the first {limit} listed)" if len(problems) > limit else ""
    return InputError(list(problems[:limit]), title=title + more)


def fail(
    where: str, value: object, rule: str, fix: str, title: str = "invalid input"
) -> InputError:
    """Build an `InputError` holding one problem (to `raise`)."""
    return InputError([Problem(where, value, rule, fix)], title=title)


def _short(value: object, limit: int = 120) -> str:
    text = "null" if value is None else repr(value)  # YAML's word for it
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- pydantic's errors as problems -----------------------------------------------------------------


def problems_from_validation(
    err: ValidationError, schema: type[BaseModel], prefix: str = ""
) -> list[Problem]:
    """Turn pydantic's errors into `Problem`s that name the key, value, rule and fix."""
    problems = []
    for item in err.errors():
        # an internal alias (a leading "__", e.g. where `data` keeps task sections) is no key
        loc = [str(part) for part in item["loc"] if not str(part).startswith("__")]
        where = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "(top level)"
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            valid = _field_names(schema, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(
                Problem(
                    where,
                    item["input"],
                    "unknown key",
                    f"{hint}valid keys here: {', '.join(valid)}",
                )
            )
        elif kind == "missing":
            problems.append(
                Problem(
                    where,
                    MISSING,
                    "this key is required",
                    f"add `{loc[-1]}:` ({_describe(schema, loc)})",
                )
            )
        else:
            rule = message.removeprefix("Value error, ")
            fix = (
                f"{_what_to_write(schema, loc, kind, item.get('ctx') or {})} "
                f"({_describe(schema, loc)})"
            )
            problems.append(Problem(where, item.get("input"), rule, fix))
    return problems


# What to write instead, by pydantic error type (bounds come from the field's own constraints).
_WRITE = {
    "int_parsing": "write a whole number, e.g. 3",
    "int_type": "write a whole number, e.g. 3",
    "int_from_float": "write a whole number, e.g. 3",
    "float_parsing": "write a number, e.g. 0.1",
    "float_type": "write a number, e.g. 0.1",
    "finite_number": "write a finite number (not .inf or .nan)",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write text",
    "list_type": "write a list, e.g. [a, b]",
    "dict_type": "write a mapping of keys under it",
    "model_type": "write a mapping of keys under it",
    "model_attributes_type": "write a mapping of keys under it",
    "string_pattern_mismatch": "write a value that matches that pattern",
}


def _what_to_write(schema: type[BaseModel], loc: list[str], kind: str, ctx: dict) -> str:
    if kind == "literal_error":
        return f"use one of: {ctx.get('expected', 'the listed values')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        low, high = _bounds(schema, loc)
        if low and high:
            return f"use a value {low[0]} {low[1]} and {high[0]} {high[1]}"
        bound = low or high
        return f"use a value {bound[0]} {bound[1]}" if bound else "use a value within the bounds"
    return _WRITE.get(kind, "fix the value")


def _bounds(schema: type[BaseModel], loc: list[str]) -> tuple[tuple | None, tuple | None]:
    """The field's lower and upper bound in words, e.g. (("of at least", 0), ("at most", 1))."""
    model = _sub_model(schema, loc[:-1])
    field = model.model_fields.get(loc[-1]) if model is not None and loc else None
    low = high = None
    for item in field.metadata if field is not None else []:
        for attr, words, is_low in (
            ("ge", "of at least", True),
            ("gt", "above", True),
            ("le", "at most", False),
            ("lt", "below", False),
        ):
            value = getattr(item, attr, None)
            if value is not None:
                if is_low:
                    low = (words, value)
                else:
                    high = (words, value)
    return low, high


def _field_names(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model = _sub_model(schema, loc)
    if model is not None and hasattr(model, "valid_keys"):
        return model.valid_keys()
    return sorted(model.model_fields) if model else []


def _describe(schema: type[BaseModel], loc: list[str]) -> str:
    model = _sub_model(schema, loc[:-1])
    if model is None or not loc or loc[-1] not in model.model_fields:
        return "see docs/config.md"
    return model.model_fields[loc[-1]].description or "see docs/config.md"


def _sub_model(schema: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    model: Any = schema
    for part in loc:
        field = (
            model.model_fields.get(part)
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
