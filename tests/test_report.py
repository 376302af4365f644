"""The sweep report, rendered headless in a real browser (Debian's Chromium)."""

import json
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from sft_tune.cli import main
from sft_tune.report import PLOTS, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
LONG_PATH = "/runs/" + "very_long_folder_name_without_spaces_" * 8 + "error.txt"


def chromium(page, profile, *args):
    """Run headless Chromium on a local page; returns its stdout."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
    ]
    done = subprocess.run(
        [CHROMIUM, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render(html_file, profile, *args):
    """The DOM after the page's scripts ran, from headless Chromium."""
    return chromium(html_file, profile, *args, "--dump-dom")


@pytest.fixture
def doctored_sweep(finished_sweep, tmp_path):
    """A copy of the finished sweep whose two other trials look stopped early (one fold of two)
    and failed (an error text with a long unbroken path), as they would after an ASHA sweep; the
    best one also searched a model path, long and unbroken, as a summary line may show."""
    copy = tmp_path / "basic"
    shutil.copytree(finished_sweep["result"].sweep_dir, copy)
    rows = json.loads((copy / "trials.json").read_text())
    best = finished_sweep["selected"]["trial_id"]
    next(r for r in rows if r["trial_id"] == best)["param:model.name_or_path"] = LONG_PATH
    stopped, failed = [r for r in rows if r["trial_id"] != best][:2]
    stopped.update(status="STOPPED", folds_done=1, fold_scores=stopped["fold_scores"][:1])
    stopped.update(cv_mean=stopped["fold_scores"][0], cv_std=0.0)
    failed.update(status="ERROR", folds_done=0, fold_scores=[], cv_mean=None, cv_std=None)
    failed["error"] = f"RuntimeError: injected (traceback: {LONG_PATH})"
    (copy / "trials.json").write_text(json.dumps(rows))
    return {"dir": copy, "best": best, "stopped": stopped["trial_id"], "failed": failed["trial_id"]}


def test_report_is_self_contained_and_holds_every_plot(finished_sweep, tmp_path, capsys):
    sweep_dir = finished_sweep["result"].sweep_dir
    selected = finished_sweep["selected"]
    assert main(["report", str(sweep_dir), "--output", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "best trial" in out and "optuna-dashboard sqlite:///" in out
    assert "phase 1: " in out and "trials: 3 (3 complete)" in out
    assert f"test metrics: macro_f1 {selected['test']['macro_f1']:.4f}" in out
    page = (tmp_path / "r.html").read_text()
    assert "<script src=" not in page  # plotly.js inlined: opens without a network
    for plot in PLOTS:
        assert f'data-plot="{plot}"' in page
    summary = page[page.index("id='summary'") : page.index("<h2>Trials")]
    assert "phase 1" in summary and selected["trial_id"] in summary and "macro_f1" in summary
    for trial in finished_sweep["result"].trials:
        assert f">{trial.trial_id}" in page  # a row of the trials table


def test_report_marks_partial_means_and_errors_and_says_when_select_has_not_run(
    doctored_sweep, tmp_path
):
    shutil.rmtree(doctored_sweep["dir"] / "best_model")
    path, summary = build_report(doctored_sweep["dir"], tmp_path / "r.html")
    assert "trials: 3 (1 complete, 1 stopped early, 1 error)" in summary
    assert "test metrics: none yet: `sft-tune select` has not run" in summary
    assert f"trial {doctored_sweep['failed']} ERROR: RuntimeError: injected" in summary
    page = path.read_text()
    table = page[page.index('<table class="trials">') : page.index("</table>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
    by_trial = {
        re.search(r'<td class="">(\w+)', r).group(1): r for r in rows if '<td class="">' in r
    }
    assert "★ best" in by_trial[doctored_sweep["best"]]
    assert "1 of 2" in by_trial[doctored_sweep["stopped"]]
    assert "partial" in by_trial[doctored_sweep["stopped"]]
    assert "stopped early" in by_trial[doctored_sweep["stopped"]]
    assert "error" in by_trial[doctored_sweep["failed"]] and LONG_PATH in table
    # the partial trial's mean is drawn, and drawn apart from the complete ones
    history = page[page.index('data-plot="history"') : page.index('data-plot="params"')]
    assert "partial mean (stopped early)" in history


@needs_chromium
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
    assert "L_task" in sections["losses"]
    if finished_sweep["selected"]["params"]["phase1.steps"] > 0:
        assert "L_lm" in sections["losses"] and "α·L_task" in sections["losses"]
    else:
        assert "phase 1 skipped" in sections["losses"]


MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const right = (selector) => document.querySelector(selector).getBoundingClientRect().right;
  const table = document.querySelector(".scroll");
  document.body.dataset.layout = JSON.stringify({
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    summaryRight: right("#summary"),
    tableFits: table.scrollWidth <= table.clientWidth,
  });
}, 1000));
</script></body>"""


def png_rows(path):
    """Width, height and the (filtered) pixel rows of an 8-bit PNG, read without Pillow."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert depth == 8
    stride = 1 + width * {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    return width, height, [raw[i : i + stride] for i in range(0, len(raw), stride)]


@needs_chromium
def test_report_summary_fits_the_page_width_in_a_screenshot(doctored_sweep, tmp_path):
    path, _ = build_report(doctored_sweep["dir"], tmp_path / "report.html")
    probe = tmp_path / "probe.html"  # the report plus a script that records its layout
    probe.write_text(path.read_text().replace("</body>", MEASURE))
    for width in (1200, 560):
        dom = render(probe, tmp_path / f"profile-{width}", f"--window-size={width},2000")
        found = re.search(r'data-layout="([^"]+)"', dom)
        assert found, "the layout probe did not run"
        layout = json.loads(found.group(1).replace("&quot;", '"'))
        assert layout["innerWidth"] == width
        assert layout["scrollWidth"] <= width, f"the page scrolls sideways at {width} px"
        assert layout["summaryRight"] <= width, f"the summary is cut off at {width} px"
        if width == 1200:  # the table too, its long error text wrapped
            assert layout["tableFits"], layout
    shot = tmp_path / "report.png"
    chromium(path, tmp_path / "profile-shot", "--window-size=1200,2000", f"--screenshot={shot}")
    width, height, rows = png_rows(shot)
    assert (width, height) == (1200, 2000) and len(rows) == height
    assert len(set(rows)) > 200, "the screenshot is blank"  # a blank page has a few distinct rows


def test_report_on_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "SWEEP_DIR" in capsys.readouterr().err


def test_report_on_a_sweep_folder_without_its_study_writes_nothing(
    finished_sweep, tmp_path, capsys
):
    # A read-only command: the missing study.db is an input error, not a new empty database.
    copy = tmp_path / "basic"
    shutil.copytree(finished_sweep["result"].sweep_dir, copy)
    (copy / "study.db").unlink()
    before = sorted(p.name for p in copy.iterdir())
    assert main(["report", str(copy), "--output", str(tmp_path / "r.html")]) == 2
    assert "study.db" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "r.html").exists()
