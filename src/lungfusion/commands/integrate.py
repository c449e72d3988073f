"""``lungfusion integrate``: late-fusion logistic / Cox integration of the submodels' scores;
see :func:`lungfusion.evaluation.integrate.run_integration` for what it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.evaluation.integrate import INTEGRATORS, run_integration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, choices=sorted(INTEGRATORS))
    parser.add_argument("--train-dir", required=True, type=Path, help="e.g. results/train")
    parser.add_argument("--folds", required=True, type=Path, help="results/splits/folds.tsv")
    parser.add_argument("--sample-sheet", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path, help="results/integrate/NAME")
    parser.add_argument(
        "--submodels", nargs="+", default=None, help="default: config integrate.submodels"
    )


def run(args: argparse.Namespace, config: dict) -> int:
    run_integration(
        args.name,
        train_dir=args.train_dir,
        folds_path=args.folds,
        sample_sheet=args.sample_sheet,
        out_dir=args.out_dir,
        submodels=args.submodels,
        config=config,
    )
    return 0
