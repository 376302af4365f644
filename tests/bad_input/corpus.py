"""The bad-input corpus: the cases of `cases.yaml`, and what is wrong with a case's record.

`runner.py` runs the cases and records what each did; `check` holds the promise every record
must keep (exit code 2, the message naming the key or file and the value, no traceback, nothing
written, nothing heavy loaded); `test_bad_input.py` asserts it per case. Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
CASES_FILE = HERE / "cases.yaml"
CASE_TIMEOUT_S = 120.0  # one case, however slow the machine (a bad input takes about a second)


# ---- the case list -------------------------------------------------------------------------


@dataclass
class Case:
    """One bad command line, the files its working folder holds, and what its message names."""

    id: str
    argv: list[str]
    expect: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # destination -> source or {text: ...}
    env: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)

    @property
    def category(self) -> str:
        return self.id.split("-", 1)[0]


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    """The cases of `cases.yaml`, bundles merged in; raises ValueError on a malformed entry."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    bundles = raw.get("bundles") or {}
    cases, seen = [], set()
    for entry in raw["cases"]:
        files: dict[str, Any] = {}
        for name in entry.get("with", []):
            files.update(bundles[name])
        files.update(entry.get("files") or {})
        case = Case(
            id=entry["id"],
            argv=[str(arg) for arg in entry["argv"]],
            expect=[str(item) for item in entry["expect"]],
            files=files,
            env={k: str(v) for k, v in (entry.get("env") or {}).items()},
            absent=[str(item) for item in entry.get("absent", [])],
        )
        _validate(case, seen, path)
        seen.add(case.id)
        cases.append(case)
    return cases


def _validate(case: Case, seen: set[str], path: Path) -> None:
    if case.id in seen:
        raise ValueError(f"{path}: case id {case.id!r} is given twice")
    if not case.expect:
        raise ValueError(f"{path}: case {case.id!r} expects nothing in stderr")
    for destination, source in case.files.items():
        if isinstance(source, dict):
            if set(source) != {"text"}:
                raise ValueError(f"{case.id}: {destination}: an inline file is {{text: ...}}")
        elif not (FILES / source).exists():
            raise ValueError(f"{case.id}: {destination}: {FILES / source} does not exist")


# ---- what is wrong with a result -----------------------------------------------------------


def check(result: dict[str, Any] | None) -> list[str]:
    """Every way a case's result breaks the bad-input promise (empty when it keeps it). Each
    line starts with its kind, e.g. "heavy import: torch", so failures can be grouped."""
    if result is None:
        return ["not run: the runner has no result for this case"]
    problems = []
    if result.get("timed_out"):
        problems.append(f"timed out: after {result['seconds']:.0f} s")
    if result.get("crash"):
        last = result["crash"].strip().splitlines()[-1]
        problems.append(f"crash: {last}")
    if result.get("exit_code") != 2:
        problems.append(f"exit code: {result.get('exit_code')}, not 2")
    stderr, stdout = result.get("stderr", ""), result.get("stdout", "")
    missing = [item for item in result["expect"] if item not in stderr]
    if missing:
        problems.append(f"message lacks: {missing}")
    everything = stderr + stdout + result.get("fd_output", "")
    shown = [item for item in result.get("absent", []) if item in everything]
    if shown:
        problems.append(f"message shows: {shown}")
    streams = {"stderr": stderr, "stdout": stdout, "fd output": result.get("fd_output", "")}
    traced = [name for name, text in streams.items() if "Traceback" in text]
    if traced:
        problems.append(f"traceback: in {', '.join(traced)}")
    if result.get("written"):
        problems.append(f"wrote: {result['written'][:8]}")
    if result.get("heavy_imports"):
        problems.append(f"heavy import: {', '.join(result['heavy_imports'])}")
    if result.get("heavy_opens"):
        problems.append(f"heavy open: {result['heavy_opens'][:8]}")
    if result.get("refused"):
        problems.append(f"refused: {result['refused'][:8]}")
    if result.get("leftover_processes"):
        problems.append("left processes: still running after the case (killed)")
    return problems


def summary(cases: list[Case], run: dict[str, Any]) -> str:
    """The results in words: how many keep the promise, and the failures grouped by kind."""
    groups: dict[str, list[str]] = {}
    passed = 0
    for case in cases:
        problems = check(run["results"].get(case.id))
        passed += not problems
        for problem in problems:
            kind, _, detail = problem.partition(": ")
            key = f"heavy import {detail}" if kind == "heavy import" else kind
            groups.setdefault(key, []).append(case.id)
    meta = run["meta"]
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.category] = counts.get(case.category, 0) + 1
    lines = [
        f"{passed} of {len(cases)} cases keep the promise ({meta['seconds']} s)",
        "cases: " + ", ".join(f"{name} {count}" for name, count in counts.items()),
    ]
    if meta["preload_error"]:
        lines.append("importing the CLI failed:\n" + meta["preload_error"])
    for kind, ids in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"{kind}: {len(ids)} cases ({', '.join(ids)})")
    return "\n".join(lines)


def selected(cases: list[Case], patterns: list[str]) -> list[Case]:
    """The cases named by ids or id prefixes: "data-csv" selects data-csv-*, "config-inf" itself."""
    return [
        case
        for case in cases
        if any(case.id == p or case.id.startswith(p.rstrip("-") + "-") for p in patterns)
    ]
