"""The bad-input corpus (issue 20): each case of `cases.yaml` must end in exit code 2 with a
message naming the key or file and the value received, no traceback, nothing written and
nothing heavy loaded (torch, transformers, Ray, weights, tokenizer files).

`runner.py` runs every case once, in one subprocess (one interpreter, a fork per case), and the
test asserts on its records, so the corpus costs about one CLI start plus the checks themselves.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load_corpus():
    """`corpus.py` as a module, by path (the tests folders are not packages)."""
    spec = importlib.util.spec_from_file_location("bad_input_corpus", HERE / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
CASES = corpus.load_cases()


@pytest.fixture(scope="module")
def corpus_results(request, tmp_path_factory) -> dict:
    """The runner's records of the selected cases (all, unless `-k` or ids narrow them), from
    one run in a subprocess."""
    output = tmp_path_factory.mktemp("bad_input") / "results.json"
    selected = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if item.path == Path(__file__) and hasattr(item, "callspec")
    }
    only = ["--only", *sorted(selected)] if len(selected) < len(CASES) else []
    done = subprocess.run(
        [sys.executable, str(HERE / "runner.py"), "--output", str(output), *only],
        capture_output=True,
        text=True,
        cwd=HERE.parents[1],
        timeout=len(CASES) * corpus.CASE_TIMEOUT_S + 120,
    )
    if done.returncode != 0 or not output.is_file():
        pytest.fail(
            "runner.py failed (exit "
            f"{done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return json.loads(output.read_text())


def _explain(case_id: str, result: dict | None, problems: list[str], meta: dict) -> str:
    """What went wrong with one case, with what it printed."""
    lines = [f"bad-input case {case_id}: " + "; ".join(problems)]
    if result is not None:
        lines.append("command: sft-tune " + " ".join(result.get("argv", [])))
        lines.append(f"expected in stderr: {result.get('expect')}")
        lines.append("stderr:\n" + (result.get("stderr") or "(empty)")[-3000:])
        if result.get("crash"):
            lines.append("crash (caught by the runner):\n" + result["crash"][-3000:])
        if result.get("fd_output", "").strip():
            lines.append("output below Python (fd 1/2):\n" + result["fd_output"][-1500:])
    if meta.get("preload_error"):
        lines.append("importing the CLI failed in the runner:\n" + meta["preload_error"][-2000:])
    return "\n".join(lines)


@pytest.mark.parametrize("case_id", [case.id for case in CASES])
def test_bad_input(case_id: str, corpus_results: dict) -> None:
    result = corpus_results["results"].get(case_id)
    problems = corpus.check(result)
    if problems:
        pytest.fail(_explain(case_id, result, problems, corpus_results["meta"]), pytrace=False)
