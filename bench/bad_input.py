"""How long a bad-input message takes: each case runs `sft-tune ...` in a fresh process (what a
user waits for), a few rounds interleaved, and prints the median wall time per case and the
slowest. Goal (issue 20): every bad-input message within 2 s on an idle machine.

    .venv/bin/python bench/bad_input.py              # 3 rounds
    .venv/bin/python bench/bad_input.py --rounds 5

Each case must exit 2 (checked). The load meter says how busy other processes kept the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import OtherCPU, command_line, machine, others_text, table, versions, watched  # noqa: E402


def cases(folder: Path) -> dict[str, list[str]]:
    """name -> sft-tune arguments; every one is bad input."""
    (folder / "train.csv").write_text("text,label\na,b\nc,d\n")
    (folder / "model").mkdir()
    configs = {
        "schema": "model: {name_or_path: m}\ndata: {train: train.csv}\nphase1: {alpha: -1, stepz: 3}\n",
        "inf alpha": "model: {name_or_path: m}\ndata: {train: train.csv}\nphase1: {alpha: .inf}\n",
        "duplicate key": "model: {name_or_path: m}\nmodel: {name_or_path: n}\ndata: {train: train.csv}\n",
        "missing files": "model: {name_or_path: ./model}\ndata: {train: no.csv, test: no2.csv}\n",
    }
    out = {}
    for name, text in configs.items():
        path = folder / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        out[f"train: {name}"] = ["train", "--config", str(path)]
    space = folder / "space.yaml"
    space.write_text(
        "config:\n  model: {name_or_path: m}\n  data: {train: train.csv}\n"
        "params:\n  phase1.alpha: {type: float, low: 0, high: .inf}\n"
    )
    out["search: bad space"] = ["search", "--space", str(space)]
    out["predict: missing input"] = [
        "predict",
        "--model",
        str(folder / "model"),
        "--input",
        "no.csv",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"command: {command_line()}\nmachine: {machine()}\n" + "\n".join(versions()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        todo = cases(folder)
        times: dict[str, list[float]] = {name: [] for name in todo}
        meter = OtherCPU()
        info: dict = {}
        with watched(info, meter):
            for round_ in range(args.rounds):
                names = list(todo)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in names:
                    start = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "sft_tune", *todo[name]],
                        cwd=folder,
                        capture_output=True,
                        text=True,
                    )
                    times[name].append(time.perf_counter() - start)
                    if done.returncode != 2 or "Traceback" in done.stderr:
                        raise SystemExit(
                            f"{name}: exit {done.returncode}, not a bad-input message:\n{done.stderr[-2000:]}"
                        )
        meter.stop()
    rows = [[name, f"{statistics.median(t):.2f}", f"{max(t):.2f}"] for name, t in times.items()]
    print(table(["case", "median s", "max s"], rows))
    slowest = max(times, key=lambda name: statistics.median(times[name]))
    median = statistics.median(times[slowest])
    print(
        f"slowest: {slowest} {median:.2f} s (median of {args.rounds}); goal 2 s: {'MET' if median <= 2 else 'NOT MET'}"
    )
    print(others_text(info.get("others")))


if __name__ == "__main__":
    main()
