"""``lungfusion segment``: lungs and the tumour-inclusive region of one patient; see
:func:`lungfusion.imaging.segment.run_segment_stage` for what it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.imaging.segment import run_segment_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--register-dir", required=True, type=Path, help="results/register/PID")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/segment/PID")


def run(args: argparse.Namespace, config: dict) -> int:
    run_segment_stage(
        args.patient,
        register_dir=Path(args.register_dir),
        out_dir=Path(args.out_dir),
        settings=section_with_defaults(config, "segment"),
    )
    return 0
