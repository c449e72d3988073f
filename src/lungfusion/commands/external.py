"""``lungfusion external``: the external collection scored by every trained model (mean of its
fold models) and the late-fusion integrator, then evaluated; see :mod:`lungfusion.external`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.external import run_external


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-dir", required=True, type=Path, help="results/train")
    parser.add_argument(
        "--integrator-dir", required=True, type=Path, help="results/integrate/late_logistic"
    )
    parser.add_argument("--roi-dir", required=True, type=Path, help="results/external/roi")
    parser.add_argument(
        "--features", required=True, type=Path, help="results/external/radiomics/features.tsv"
    )
    parser.add_argument("--sample-sheet", required=True, type=Path, help="the external sheet")
    parser.add_argument("--models", nargs="+", required=True, help="the trained models to score")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/external")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def run(args: argparse.Namespace, config: dict) -> int:
    run_external(
        train_dir=args.train_dir,
        integrator_dir=args.integrator_dir,
        roi_dir=args.roi_dir,
        features_path=args.features,
        sample_sheet=args.sample_sheet,
        models=args.models,
        out_dir=args.out_dir,
        config=config,
        device=args.device,
    )
    return 0
