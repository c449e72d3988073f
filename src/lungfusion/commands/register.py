"""``lungfusion register``: PET onto CT for one patient, both resampled to the target grid; see
:func:`lungfusion.imaging.register.run_register_stage` for what it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.imaging.register import run_register_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--ingest-dir", required=True, help="e.g. results/ingest/PID")
    parser.add_argument("--out-dir", required=True, help="e.g. results/register/PID")


def run(args: argparse.Namespace, config: dict) -> int:
    run_register_stage(
        args.patient,
        ingest_dir=Path(args.ingest_dir),
        out_dir=Path(args.out_dir),
        settings=section_with_defaults(config, "register"),
    )
    return 0
