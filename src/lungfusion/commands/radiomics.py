"""``lungfusion radiomics``: the lesion's IBSI radiomics features for every patient's ROI; see
:func:`lungfusion.imaging.radiomics.run_radiomics_stage` for what it reads and writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.imaging.radiomics import radiomics_settings, run_radiomics_stage
from lungfusion.samplesheet import read_sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-sheet", required=True, type=Path)
    parser.add_argument("--roi-dir", required=True, type=Path, help="results/roi")
    parser.add_argument("--segment-dir", type=Path, help="results/segment: the lung labels")
    parser.add_argument(
        "--register-dir", type=Path, help="results/register: the GTV contours, where there are"
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="results/radiomics/features.tsv")
    parser.add_argument("--threads", type=int, default=1, help="patients computed at once")


def run(args: argparse.Namespace, config: dict) -> int:
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    run_radiomics_stage(
        sheet["patient_id"].tolist(),
        roi_dir=Path(args.roi_dir),
        register_dir=args.register_dir,
        segment_dir=args.segment_dir,
        out=Path(args.out),
        settings=radiomics_settings(config.get("radiomics")),
        roi_settings=section_with_defaults(config, "roi"),
        threads=args.threads,
    )
    return 0
