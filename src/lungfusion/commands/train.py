"""``lungfusion train``: train one model on one fold and score its held-out patients."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.estimators import TABLE_MODELS
from lungfusion.training.run import train_network
from lungfusion.training.table_models import run_clinical, run_radiomics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--folds", required=True, help="folds.tsv from `lungfusion splits`")
    parser.add_argument("--roi-dir", required=True)
    parser.add_argument("--sample-sheet", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--radiomics-features", type=Path, default=None,
        help="features.tsv of `lungfusion radiomics` (radiomics and semantic; the networks' "
        "train.aux_targets)",
    )  # fmt: skip
    parser.add_argument(
        "--pretrain-dir", type=Path, default=None,
        help="results/pretrain of `lungfusion pretrain` (train.init: pretrain)",
    )  # fmt: skip


def run(args: argparse.Namespace, config: dict) -> int:
    paths = {"fold": args.fold, "folds_path": args.folds, "sample_sheet": args.sample_sheet}
    table_model = TABLE_MODELS.get(args.model)
    if table_model is None:
        train_network(
            args.model, **paths, roi_dir=args.roi_dir, out_dir=args.out_dir, config=config,
            progress=not args.no_progress, pretrain_dir=args.pretrain_dir,
            aux_features=args.radiomics_features,
        )  # fmt: skip
    elif table_model.reads_features:
        run_radiomics(
            args.model, **paths, features_path=args.radiomics_features, out_dir=args.out_dir,
            config=config,
        )  # fmt: skip
    else:
        run_clinical(**paths, out_dir=args.out_dir, config=config)
    return 0
