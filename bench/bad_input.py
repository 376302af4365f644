"""How long every bad-input message takes, as a user waits for it (goal: within 2 s).

    .venv/bin/python bench/bad_input.py [--rounds 3] [--only PATTERN ...] [--save FILE]

What it measures, how, and its goals: bench/README.md, section `bad_input.py`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py)
    ROOT,
    OtherCPU,
    command_line,
    machine,
    others_text,
    parser,
    save_report,
    table,
    versions,
    watched,
)

CORPUS = ROOT / "tests" / "bad_input"
GOAL_S = 2.0
PROBE_TIMEOUT_ENV = "SFT_TUNE_PROBE_TIMEOUT_S"


def load(name: str, path: Path) -> ModuleType:
    """A module by path (the tests folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


corpus = load("corpus", CORPUS / "corpus.py")  # the name runner.py imports it by
runner = load("bad_input_runner", CORPUS / "runner.py")


def environment(case: corpus.Case, folder: Path, ports: dict, probe: str | None) -> dict:
    """This process's environment as runner.py gives a case: its fixed settings, its own HOME,
    caches and TMPDIR, the case's variables; the probe timeout sft-tune's default unless given."""
    env = {k: v for k, v in os.environ.items() if k not in runner.CLEARED_ENV}
    env.update(runner.FIXED_ENV)
    env.pop(PROBE_TIMEOUT_ENV, None)
    if probe is not None:
        env[PROBE_TIMEOUT_ENV] = probe
    env.update(runner.case_env(folder))
    env.update({key: runner.fill(value, ports) for key, value in case.env.items()})
    return env


def run_case(case: corpus.Case, folder: Path, ports: dict, probe: str | None) -> tuple:
    """(wall seconds of `python -m sft_tune ARGS` in a fresh process, what was wrong or None)."""
    runner.prepare(case, folder)
    argv = [sys.executable, "-m", "sft_tune", *(runner.fill(arg, ports) for arg in case.argv)]
    env = environment(case, folder, ports, probe)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=folder / "work",
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=corpus.CASE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"killed after {corpus.CASE_TIMEOUT_S:.0f} s"
    seconds = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    last = (done.stderr.strip().splitlines() or [""])[-1][:160]
    if done.returncode != 2:
        return seconds, f"exit {done.returncode}, not 2: {last}"
    if "Traceback" in done.stderr + done.stdout:
        return seconds, f"a traceback: {last}"
    return seconds, None


def measure(cases: list, rounds: int, probe: str | None, root: Path) -> tuple:
    """Every case once per round, rounds interleaved: (seconds per case id, failures, the
    load meter's `watched` figures)."""
    times: dict[str, list[float]] = {case.id: [] for case in cases}
    failures: list[str] = []
    ports, server, silent = runner.start_servers()  # forks: before the meter's thread starts
    try:
        run_case(cases[0], root / "warm-up", ports, probe)
        meter, window = OtherCPU(), {}
        with watched(window, meter):
            for r in range(rounds):
                shift = r * len(cases) // rounds  # each round starts a further 1/rounds along
                started = time.perf_counter()
                for case in cases[shift:] + cases[:shift]:
                    seconds, problem = run_case(case, root / f"{r}-{case.id}", ports, probe)
                    times[case.id].append(seconds)
                    if problem:
                        failures.append(f"{case.id} (round {r + 1}): {problem}")
                took = time.perf_counter() - started
                print(f"round {r + 1} of {rounds}: {len(cases)} runs in {took:.0f} s", flush=True)
        meter.stop()
    finally:
        os.kill(server, signal.SIGKILL)
        os.waitpid(server, 0)
        silent.close()
    return times, failures, window


def report(cases: list, times: dict, window: dict) -> tuple[list[str], dict]:
    """The tables and the verdict in lines, and the per-case figures."""
    figures = {
        case.id: {
            "category": case.category,
            "median_s": statistics.median(times[case.id]),
            "min_s": min(times[case.id]),
            "max_s": max(times[case.id]),
            "seconds": times[case.id],
        }
        for case in cases
    }
    by_category: dict[str, list[float]] = {}
    for case in cases:
        by_category.setdefault(case.category, []).append(figures[case.id]["median_s"])
    rows = [
        [name, len(medians), f"{statistics.median(medians):.2f}", f"{max(medians):.2f}"]
        for name, medians in by_category.items()
    ]
    medians = [f["median_s"] for f in figures.values()]
    rows.append(["all", len(medians), f"{statistics.median(medians):.2f}", f"{max(medians):.2f}"])
    slow = sorted(figures, key=lambda name: -figures[name]["median_s"])
    top = [
        [name, *(f"{figures[name][key]:.2f}" for key in ("median_s", "min_s", "max_s"))]
        for name in slow[:10]
    ]
    over = sum(m > GOAL_S for m in medians)
    worst = figures[slow[0]]["median_s"]
    verdict = "MET" if not over else "NOT MET"
    busy = window["others"]
    idle = "" if busy != busy or busy < 0.1 else " (the machine was not idle: rerun when it is)"
    lines = [
        f"load: {others_text(busy)} on average; load average {window['load']}",
        "",
        table(["category", "cases", "median of medians s", "max median s"], rows),
        "",
        "the 10 slowest cases:",
        table(["case", "median s", "min s", "max s"], top),
        "",
        f"cases {len(cases)}, slowest median {worst:.2f} s ({slow[0]}), cases over the "
        f"{GOAL_S:.0f}-s goal: {over}; goal (every message within {GOAL_S:.0f} s): {verdict}{idle}",
    ]
    return lines, figures


def main() -> None:
    options = [("--rounds", 3, "runs of every case"), ("--save", Path, "the figures as JSON")]
    options += [("--only", str, "ids or id prefixes", {"nargs": "+", "metavar": "PATTERN"})]
    options += [("--probe-timeout", None, f"set {PROBE_TIMEOUT_ENV} (default: unset)")]
    args = parser(__doc__, options).parse_args()
    cases = corpus.load_cases()
    if args.only:
        cases = corpus.selected(cases, args.only)
    if not cases:
        raise SystemExit(f"no case matches {args.only}")
    probe = f"{args.probe_timeout} s" if args.probe_timeout else "sft-tune's default"
    print(f"command: {command_line()}\nmachine: {machine()}", *versions(), sep="\n")
    print(f"{len(cases)} cases x {args.rounds} rounds, fresh processes; address probes: {probe}")
    with tempfile.TemporaryDirectory(prefix="sft-tune-bench-bad-input-") as tmp:
        times, failures, window = measure(cases, args.rounds, args.probe_timeout, Path(tmp))
    lines, figures = report(cases, times, window)
    print(*lines, sep="\n")
    if failures:
        print(
            f"\nFAILED: {len(failures)} runs did not end in a bad-input message:",
            *failures,
            sep="\n",
        )
    if args.save:
        meta = {"command": command_line(), "machine": machine(), "versions": versions()}
        meta.update(rounds=args.rounds, probe_timeout=args.probe_timeout, **window)
        text = json.dumps({"meta": meta, "cases": figures, "failures": failures}, indent=1)
        save_report(args.save, text + "\n")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
