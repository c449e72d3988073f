"""``lungfusion ingest``: read one patient's chosen CT (HU) and PET (SUVbw) into NIfTI; see
:mod:`lungfusion.ingest.patient` for what it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.ingest.patient import run_ingest_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--series", default="results/ingest/series.tsv", help="index table")
    parser.add_argument("--out-dir", required=True, help="e.g. results/ingest/PID")


def run(args: argparse.Namespace, config: dict) -> int:
    run_ingest_stage(
        args.patient,
        series=Path(args.series),
        out_dir=Path(args.out_dir),
        settings=section_with_defaults(config, "ingest"),
    )
    return 0
