"""``lungfusion splits``: stratified cross-validation folds over the patients whose ROI is ok."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungfusion.artifacts import atomic_path
from lungfusion.samplesheet import read_sheet
from lungfusion.training.splits import cohort_table, make_folds

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-sheet", required=True, help="clinical sample sheet")
    parser.add_argument("--roi-dir", required=True, help="folder of {pid}.npz and {pid}.json")
    parser.add_argument("--out", required=True, help="folds TSV (cohort.tsv is written beside it)")
    parser.add_argument("--cohort-out", default=None, help="cohort TSV (default: beside --out)")


def run(args: argparse.Namespace, config: dict) -> int:
    task, cohort, splits = config["task"], config["cohort"], config["splits"]
    sheet = read_sheet(args.sample_sheet, cohort, keep_all_labels=True)
    table = cohort_table(sheet, args.roi_dir, task=task, classes=cohort["classes"])
    included = table[table.included == "yes"]
    log.info("%d of %d sheet patients included", len(included), len(table))
    folds = make_folds(
        included,
        n_folds=splits["n_folds"],
        validation_fraction=splits["validation_fraction"],
        seed=splits["seed"],
        stratify_column="event" if task == "survival" else "label",
    )
    out = Path(args.out)
    cohort_out = Path(args.cohort_out) if args.cohort_out else out.parent / "cohort.tsv"
    with atomic_path(cohort_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out) as tmp:  # the tracked output, written last
        folds.to_csv(tmp, sep="\t", index=False)
    return 0
