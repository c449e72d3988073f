"""``lungfusion evaluate``: metric tables with bootstrap intervals for every model; see
:func:`lungfusion.evaluation.evaluate.evaluate_models` for what it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.evaluation.evaluate import evaluate_models, evaluate_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        help="predictions.tsv files or folders holding them (e.g. results/train results/integrate); "
        "NAME=PATH names a model explicitly",
    )
    parser.add_argument(
        "--cohort", type=Path, default=None,
        help="splits/cohort.tsv: its excluded patients go to exclusions.tsv with the stage and why",
    )  # fmt: skip
    parser.add_argument("--out-dir", required=True, type=Path, help="e.g. results/metrics")


def run(args: argparse.Namespace, config: dict) -> int:
    evaluate_models(
        args.predictions,
        args.out_dir,
        task=config["task"],
        classes=list(config["cohort"]["classes"]),
        settings=evaluate_settings(config),
        cohort=getattr(args, "cohort", None),
    )
    return 0
