"""Open the report page in a real headless browser (Debian's chromium) and check what it shows.

Skipped when /usr/bin/chromium is absent (install: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import CLASSES, PNG_MAGIC, make_fake_results

from lungfusion.report.build import build_report

CHROMIUM = Path("/usr/bin/chromium")


def _chromium_flags(profile: Path) -> list[str]:
    return [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
    ]  # fmt: skip


def _screenshot(page: Path, tmp_path: Path, *, height: int) -> Path:
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [*_chromium_flags(tmp_path / "profile"), "--hide-scrollbars",
         f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return shot


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(
            f"chromium not installed at {CHROMIUM} (apt-get install chromium chromium-driver)"
        )
    root = tmp_path_factory.mktemp("browser")
    results = make_fake_results(root)
    return build_report(results, results / "report", task="classification", classes=CLASSES)


def test_browser_dom_has_tables_and_figures(page: Path, tmp_path: Path):
    done = subprocess.run(
        [*_chromium_flags(tmp_path / "profile"), "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = done.stdout
    assert done.returncode == 0 and "<table" in dom, done.stderr[-2000:]
    # the metric table as the browser parsed it: model names and metric headers
    metrics = re.search(r'<table class="metrics">(.*?)</table>', dom, re.S)
    assert metrics is not None, "metric table missing from the rendered DOM"
    for text in (
        "AUROC",
        "ACC",
        "G-mean",
        "BACC",
        "DeLong p vs best",
        "ct",
        "pet",
        "late_logistic",
    ):
        assert f">{text}<" in metrics.group(1), text
    assert "<strong>0.800</strong>" in metrics.group(1) and "<u>0.700</u>" in metrics.group(1)
    for section in ("performance", "figures", "cohort", "exclusions", "registration", "qc"):
        assert f'id="{section}"' in dom, section
    # figures: img elements whose data: URIs decode to PNG
    sources = re.findall(r'<img[^>]*src="(data:[^"]+)"', dom)
    assert len(sources) >= 15
    for source in sources:
        header, data = source.split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert len(re.findall(r"<img", dom)) == len(sources), "an image without a data: URI"


def test_browser_screenshot(page: Path, tmp_path: Path):
    data = _screenshot(page, tmp_path, height=2400).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000  # a page with content, not blank


@pytest.fixture(scope="module")
def page_of_the_main_job(tmp_path_factory) -> Path:
    """A report with the main job's 14 models and integrators, one calling a single class."""
    if not CHROMIUM.is_file():
        pytest.skip(f"chromium not installed at {CHROMIUM}")
    from test_report_figures import MODELS

    results = make_fake_results(tmp_path_factory.mktemp("many"), n=40, models=MODELS)
    metrics = pd.read_csv(results / "metrics" / "all.tsv", sep="\t")
    flags = pd.DataFrame({"model": MODELS, "metric": "predicted_classes",
                          "value": [1.0 if m == "pet" else 2.0 for m in MODELS]})  # fmt: skip
    pd.concat([metrics, flags]).to_csv(results / "metrics" / "all.tsv", sep="\t", index=False)
    return build_report(results, results / "report", task="classification", classes=CLASSES)


def test_browser_shows_every_model_in_figures_that_fit_the_page(page_of_the_main_job, tmp_path):
    from PIL import Image

    done = subprocess.run(
        [*_chromium_flags(tmp_path / "profile"), "--dump-dom", page_of_the_main_job.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = re.search(r'<table class="metrics">(.*?)</table>', dom, re.S).group(1)
    assert metrics.count("<tr>") == 1 + 14 and ">pet (one class)<" in metrics
    assert "calls every test patient the same class" in dom
    figures = dict(
        re.findall(r'<img[^>]*alt="([a-z_]+)"[^>]*src="data:image/png;base64,([^"]+)"', dom)
    )
    assert {"roc", "pr", "calibration", "confusion"} <= set(figures)
    for name in ("roc", "pr", "calibration", "confusion"):
        with Image.open(io.BytesIO(base64.b64decode(figures[name]))) as image:
            width, height = image.size
        # small multiples of a few panels, not one giant plot or a sliver
        assert 600 <= width <= 2200 and 300 <= height <= 2600, (name, image.size)
    with Image.open(_screenshot(page_of_the_main_job, tmp_path, height=4000)) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (4000, 1280) and pixels.std() > 20  # a page with content, not blank
