"""``lungfusion report``: one self-contained HTML page, Markdown, CSV/LaTeX tables and figures.

Reads ``--results`` (metrics, predictions, cohort table, sidecars, QC pictures) and writes under
``--out-dir``: ``tables/*.{csv,tex,md}``, ``figures/*.png``, ``report.md`` and, last,
``index.html`` (see :func:`lungfusion.report.build.build_report`). Never imports torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungfusion.report.build import build_report

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="default: %(default)s"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="default: RESULTS/report")


def run(args: argparse.Namespace, config: dict) -> int:
    index = build_report(
        args.results,
        args.out_dir or args.results / "report",
        task=config["task"],
        classes=list(config["cohort"]["classes"]),
        settings=config.get("report"),
    )
    log.info("wrote %s", index)
    return 0
