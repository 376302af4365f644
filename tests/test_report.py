"""The sweep report, rendered headless in a real browser (Debian's Chromium)."""

import re
import shutil
import subprocess

import pytest

from sft_tune.cli import main
from sft_tune.report import PLOTS, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.ray


def render(html_file, profile):
    """The DOM after the page's scripts ran, from headless Chromium."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
    ]
    done = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", html_file.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_is_self_contained_and_holds_every_plot(finished_sweep, tmp_path, capsys):
    sweep_dir = finished_sweep["result"].sweep_dir
    assert main(["report", str(sweep_dir), "--output", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "best trial" in out and "optuna-dashboard sqlite:///" in out
    page = (tmp_path / "r.html").read_text()
    assert "<script src=" not in page  # plotly.js inlined: opens without a network
    for plot in PLOTS:
        assert f'data-plot="{plot}"' in page


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
def test_report_plots_draw_in_headless_chromium(finished_sweep, tmp_path):
    path, _ = build_report(finished_sweep["result"].sweep_dir, tmp_path / "report.html")
    dom = render(path, tmp_path / "profile")
    sections = dict(re.findall(r'data-plot="(\w+)">(.*?)</section>', dom, flags=re.S))
    assert set(sections) == set(PLOTS)
    for plot, body in sections.items():
        assert "js-plotly-plot" in body and 'class="main-svg"' in body, f"{plot} did not draw"
        assert re.search(r'class="(trace|scatterlayer|parcoords|boxlayer)', body), (
            f"{plot} has no traces"
        )
    assert "L_task (phase 2)" in sections["losses"]
    if finished_sweep["selected"]["params"]["phase1.steps"] > 0:
        assert "L_lm (phase 1)" in sections["losses"]


def test_report_on_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "SWEEP_DIR" in capsys.readouterr().err


def test_report_on_a_sweep_folder_without_its_study_writes_nothing(
    finished_sweep, tmp_path, capsys
):
    # A read-only command: the missing study.db is an input error, not a new empty database.
    import shutil

    from sft_tune.cli import main

    copy = tmp_path / "basic"
    shutil.copytree(finished_sweep["result"].sweep_dir, copy)
    (copy / "study.db").unlink()
    before = sorted(p.name for p in copy.iterdir())
    assert main(["report", str(copy), "--output", str(tmp_path / "r.html")]) == 2
    assert "study.db" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "r.html").exists()
