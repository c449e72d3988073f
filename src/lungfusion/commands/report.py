"""``lungfusion report``: one self-contained HTML page, Markdown, CSV/LaTeX tables and figures.

Reads ``--results`` (metrics, predictions, cohort table, sidecars, QC pictures) and writes under
``--out-dir``: ``tables/*.{csv,tex,md}``, ``figures/*.png``, ``report.md`` and, last,
``index.html``. Config: ``task``, ``cohort.classes`` and an optional ``report`` section (keys in
:data:`lungfusion.report.build.REPORT_DEFAULTS`). Never imports torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungfusion.report.build import REPORT_DEFAULTS, build_report

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="default: %(default)s"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="default: RESULTS/report")


def run(args: argparse.Namespace, config: dict) -> int:
    settings = {**REPORT_DEFAULTS, **(config.get("report") or {})}
    unknown = sorted(set(settings) - set(REPORT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown report settings {unknown}; known: {sorted(REPORT_DEFAULTS)}")
    out_dir = args.out_dir or args.results / "report"
    index = build_report(
        args.results,
        out_dir,
        task=config["task"],
        classes=list(config["cohort"]["classes"]),
        settings=settings,
    )
    log.info("wrote %s", index)
    return 0
