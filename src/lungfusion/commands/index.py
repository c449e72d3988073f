"""``lungfusion index``: index a DICOM tree (headers only) and choose each patient's CT, PET and
RTSTRUCT; see :func:`lungfusion.ingest.index.build_series_table` for what it writes."""

from __future__ import annotations

import argparse
import logging

from lungfusion.ingest.index import build_series_table
from lungfusion.ingest.select import read_overrides
from lungfusion.samplesheet import read_sheet

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dicom-root", default=None, help="DICOM tree (default: cohort.dicom_root)"
    )
    parser.add_argument("--sample-sheet", default=None, help="default: cohort.sample_sheet")
    parser.add_argument("--out", default="results/ingest/series.tsv", help="default: %(default)s")


def run(args: argparse.Namespace, config: dict) -> int:
    cohort, ingest = config["cohort"], config["ingest"]
    sheet = read_sheet(args.sample_sheet or cohort["sample_sheet"], cohort)
    overrides = cohort["series_overrides"]
    table = build_series_table(
        args.dicom_root or cohort["dicom_root"],
        sheet["patient_id"].tolist(),
        args.out,
        ct_slice_thickness_mm=ingest["ct_slice_thickness_mm"],
        study_choice=ingest["study_choice"],
        overrides=read_overrides(overrides) if overrides else None,
    )
    n_ct, n_pt = int((table["chosen"] == "CT").sum()), int((table["chosen"] == "PT").sum())
    log.info("chose %d CT and %d PET series; wrote %s", n_ct, n_pt, args.out)
    return 0
