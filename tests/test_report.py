"""The HTML/Markdown report: content, self-containment, rebuild, and rendering in a browser.

The module's one sampling step is the demo's smoke run, ``python -m aniso_gp demo
--quick`` in a child process (nano-brick with a known truth, rotated / ARD / full
fits, hold-out comparison): it tests that command end to end and provides real
fits for every report test. Compiling NUTS dominates its cost, not sampling.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fast_compile_env

from aniso_gp import datasets, report
from aniso_gp.calibration import LONG_AGAINST_GRID
from aniso_gp.inference import Fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
KERNELS = ["rotated", "ard", "full"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``aniso-gp demo --quick``: the run directory and the command's output."""
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "aniso_gp", "demo", "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=fast_compile_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": out, "html": out / "report.html", "md": out / "report.md",
            "stdout": proc.stdout}


@pytest.fixture(scope="module")
def fits(demo):
    return {k: Fit.load(demo["dir"] / report.FITS_DIR / k) for k in KERNELS}


def test_demo_quick_prints_its_result(demo):
    out = demo["stdout"]
    assert "demo finished in" in out and "axis errors vs truth" in out
    assert "By LOO the ranking is" in out
    assert not demo["dir"].with_name("run.partial").exists()


def test_readme_numbers_are_read_from_a_demo_run(demo):
    # What benchmarks/readme_numbers.py quotes, read from this run's CSV files.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_numbers import numbers

    found = numbers(demo["dir"], 123.4)
    assert found["demo wall time"] == "123 s" and found["demo wall time (minutes)"] == "2.1 minutes"
    assert re.fullmatch(r"([\d.]+ \[[\d.]+, [\d.]+\](, | and )){2}[\d.]+ \[[\d.]+, [\d.]+\]",
                        found["rotated length-scales, 90% intervals"])
    comparison = pd.read_csv(demo["dir"] / "comparison.csv", index_col=0)
    assert found["rotated axes to the truth, degrees"].startswith(
        f"{comparison.loc['rotated', 'axis1_err_deg']:.1f}, ")
    assert found["LOO rotated vs full, nats"].endswith(" nats apart")


# --------------------------------------------------------------------------- #
# Content
# --------------------------------------------------------------------------- #
def test_html_has_sections_tables_and_embedded_figures(demo):
    html = demo["html"].read_text()
    assert html.startswith("<!DOCTYPE html>")
    for heading in ("Data", "Orientation (rotated)", "Sampler diagnostics", "Model comparison",
                    "Figures"):
        assert f">{heading}</h2>" in html
    assert html.count("<table>") == 3  # data, orientation, comparison
    for label in ("axis 1 (longest)", "axis 3 (shortest)", "trend / plunge (deg)",
                  "95% cone (deg)", "error (deg)", "elpd LOO", "axis 3 err (deg)",
                  "nano_brick", "whole volume, debiased Whittle likelihood"):
        assert label in html, label
    assert "held-out RMSE" not in html  # a whole volume holds nothing out
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 5  # stereonet, ellipsoid, length-scales, trace/rank, slices
    for img in images:
        data = base64.b64decode(img)
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # Self-contained: nothing is fetched from anywhere.
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_orientation_and_ranking_are_stated_in_words(demo, fits):
    html = demo["html"].read_text()
    assert "By LOO the ranking is" in html
    assert "Against the known truth" in html
    f = fits["rotated"]
    notes = f.orientation().attrs["notes"]
    for text in [*notes, *f.diagnostics()["flags"]]:  # verbatim, HTML-escaped
        assert html_escape(text) in html


def test_markdown_twin_links_figure_files(demo):
    md = demo["md"].read_text()
    html = demo["html"].read_text()
    assert md.startswith("# aniso-gp demo")
    assert md.count("\n## ") == html.count("<h2>")
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(links) == 5
    for link in links:
        png = (demo["dir"] / link).read_bytes()
        assert png.startswith(PNG_MAGIC)
    assert "| axis 1 (longest) |" in md


def test_tables_and_metadata_are_written(demo):
    d = demo["dir"]
    summary = pd.read_csv(d / "summary.csv", index_col=[0, 1])
    assert set(summary.index.get_level_values(0)) == set(KERNELS)
    assert {"mean", "r_hat", "ess_bulk"} <= set(summary.columns)
    orient = pd.read_csv(d / "orientation.csv", index_col=[0, 1])
    assert len(orient) == 9 and "trend_deg" in orient.columns
    diag = json.loads((d / "diagnostics.json").read_text())
    assert set(diag) == set(KERNELS) and isinstance(diag["rotated"]["flags"], list)
    cmp = pd.read_csv(d / "comparison.csv", index_col=0)
    assert set(cmp.index) == set(KERNELS)
    assert {"elpd_loo", "p_loo", "axis3_err_deg"} <= set(cmp.columns)
    meta = json.loads((d / "report.json").read_text())
    assert meta["main"] == "rotated" and meta["fits"] == KERNELS
    truth = datasets.nano_brick(shape=(12, 12, 12)).truth  # the quick demo's volume
    np.testing.assert_allclose(meta["truth"]["metric"], truth.metric)
    assert not (d / "points.csv").exists()  # every voxel was fitted
    settings = json.loads((d / report.FITS_DIR / "rotated" / "settings.json").read_text())
    assert settings["likelihood"] == "whittle" and settings["grid"]["shape"] == [12, 12, 12]
    assert settings["calibration"]["adjusted"]
    # The quick demo's 10-voxel length-scale on a 12-voxel grid is flagged in words.
    assert max(settings["calibration"]["lengthscale_over_extent"]) > LONG_AGAINST_GRID
    html = demo["html"].read_text()
    assert "Draws curvature-adjusted" in html and "measured to under-cover" in html


def test_rebuild_report_from_saved_fits(demo):
    d = demo["dir"]
    before = demo["html"].read_text()
    for f in (d / "report.html", d / "report.md", d / "figures" / "stereonet.png"):
        f.unlink()
    html_path, md_path = report.rebuild_report(d)
    after = html_path.read_text()
    assert md_path.exists() and (d / "figures" / "stereonet.png").exists()
    # Same tables and figures; only the time stamp line may differ.
    strip = lambda s: re.sub(r"Generated [^.]*\.", "", re.sub(r"base64,[^\"]+", "", s))
    assert strip(after) == strip(before)


def test_write_report_directly(fits, tmp_path):
    """The Python API: a chosen main fit, no volume, no truth, no comparison; HTML escaping."""
    html_path, md_path = report.write_report(
        tmp_path / "r", {"ard": fits["ard"], "full": fits["full"]},
        {"source": "a <table> & more", "points": 40}, title="Fits <&>", main="full",
    )
    html = html_path.read_text()
    assert "<title>Fits &lt;&amp;&gt;</title>" in html and "a &lt;table&gt; &amp; more" in html
    assert ">Orientation (full)</h2>" in html and "No model comparison was run." in html
    assert html.count("data:image/png;base64,") == 4  # no slices without a volume
    assert "Against the known truth" not in html
    assert md_path.read_text().startswith("# Fits \\<\\&\\>")  # literal in Markdown too


# --------------------------------------------------------------------------- #
# Errors and small pieces (no sampling)
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise_clear_errors(fits, tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        report.write_report(tmp_path, {}, {})
    with pytest.raises(ValueError, match="not one of the fits"):
        report.write_report(tmp_path, {"ard": fits["ard"]}, {}, main="rotated")
    with pytest.raises(ValueError, match="is not a Fit"):
        report.write_report(tmp_path, {"x": object()}, {})
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        report.rebuild_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        report.rebuild_report(tmp_path / "missing")


def test_ranking_sentence_orders_by_elpd():
    cmp = pd.DataFrame({"elpd_loo": [-10.0, -4.0, -7.5], "elpd_se": [2.0, 1.5, 1.0],
                        "rmse": [0.3, 0.1, 0.2]}, index=["ard", "rotated", "full"])
    text = report.ranking_sentence(cmp)
    assert "rotated > full > ard" in text
    assert "ard by 6.0" in text and "full by 3.5" in text
    assert "rotated < full < ard" in text
    cmp["elpd_dse"] = [2.5, 0.0, 1.25]
    assert "ard by 6.0 +- 2.5" in report.ranking_sentence(cmp)


def test_markdown_table_escapes_pipes():
    blocks = [report.Table(pd.DataFrame({"a": ["x|y"]}, index=pd.Index(["r"], name="k")))]
    md = report.render_markdown(blocks, "t")
    assert "| r | x\\|y |" in md


# --------------------------------------------------------------------------- #
# A real browser
# --------------------------------------------------------------------------- #
def test_report_renders_in_headless_chromium(demo, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
        "--hide-scrollbars", f"--screenshot={shot}", demo["html"].resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1200)
    # Rendered text, tables and figures: a substantial, varied share of non-white pixels.
    assert (img < 200).mean() > 0.02
    assert img.std() > 20
