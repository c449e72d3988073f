"""``lungfusion splits``: stratified cross-validation folds over the patients whose ROI is ok."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.samplesheet import read_sheet
from lungfusion.training.splits import write_splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-sheet", required=True, help="clinical sample sheet")
    parser.add_argument("--roi-dir", required=True, help="folder of {pid}.npz and {pid}.json")
    parser.add_argument("--out", required=True, help="folds TSV (cohort.tsv is written beside it)")
    parser.add_argument("--cohort-out", default=None, help="cohort TSV (default: beside --out)")


def run(args: argparse.Namespace, config: dict) -> int:
    out = Path(args.out)
    write_splits(
        read_sheet(args.sample_sheet, config["cohort"], keep_all_labels=True),
        roi_dir=args.roi_dir,
        out=out,
        cohort_out=Path(args.cohort_out) if args.cohort_out else out.parent / "cohort.tsv",
        task=config["task"],
        classes=config["cohort"]["classes"],
        **config["splits"],
    )
    return 0
