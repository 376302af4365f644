"""User-facing input errors: bad config, search space, data file or CLI argument.

Each problem names the key or file as the user wrote it, the value received, the rule and the fix.
The CLI prints them all at once and exits with code 2, without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
