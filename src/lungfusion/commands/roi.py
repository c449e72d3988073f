"""``lungfusion roi``: crop, window and normalise one patient's model-input tensors; see
:func:`lungfusion.imaging.roi.run_roi_stage` for what it reads and writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.imaging.roi import run_roi_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--register-dir", required=True, type=Path, help="results/register/PID")
    parser.add_argument("--segment-dir", required=True, type=Path, help="results/segment/PID")
    parser.add_argument("--out", required=True, type=Path, help="results/roi/PID.npz")
    parser.add_argument(
        "--ingest-dir", type=Path, default=None, help="results/ingest/PID (annotation strategy)"
    )


def run(args: argparse.Namespace, config: dict) -> int:
    run_roi_stage(
        args.patient,
        register_dir=Path(args.register_dir),
        segment_dir=Path(args.segment_dir),
        out=Path(args.out),
        ingest_dir=None if args.ingest_dir is None else Path(args.ingest_dir),
        settings=section_with_defaults(config, "roi"),
    )
    return 0
