"""The HTML report of a benchmark folder and of a run folder: self-contained, with tables, plots and overlays."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.errors import InputError
from partialseg.experiments.benchmark import run_benchmark
from partialseg.experiments.report import write_report
from tests.experiments.test_benchmark import TINY


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, progress=False)
    return out


def test_benchmark_report_is_one_self_contained_page(bench):
    page = write_report(bench).read_text()
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "https://" not in page
    for heading in ("Test DSC and HD95 per organ", "Per-case DSC per organ", "Training curves", "Overlays"):
        assert f"<h2>{heading}</h2>" in page
    assert "marginal (keep0.5)" in page and "full (upper_bound)" in page and "missed / spurious" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 + 1 + 2 and all(len(i) > 1000 for i in images)  # box plots, curves, an overlay per case


def test_run_report_and_cli(bench, tmp_path):
    run = bench / "runs" / "keep0.5" / "marginal"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Configuration</h2>" in page and "<h2>Test evaluation</h2>" in page and "method:" in page
    with pytest.raises(InputError, match="neither a benchmark folder"):
        write_report(tmp_path)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="headless Chromium not installed")
def test_the_page_renders_in_a_real_browser(bench, tmp_path):
    page = write_report(bench)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1400,3000",
                    page.as_uri()], check=True, timeout=120, capture_output=True)
    assert shot.stat().st_size > 20_000
