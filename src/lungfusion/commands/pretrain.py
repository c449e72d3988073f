"""``lungfusion pretrain``: label-free pretraining of one modality's encoder on one fold."""

from __future__ import annotations

import argparse

from lungfusion.training.pretrain import MODALITIES, pretrain_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--folds", required=True, help="folds.tsv from `lungfusion splits`")
    parser.add_argument(
        "--cohort", default=None,
        help="cohort.tsv from `lungfusion splits` (its patients without a label are pretrained "
        "on too); default: every ROI file in --roi-dir",
    )  # fmt: skip
    parser.add_argument("--roi-dir", required=True, help="folder of {pid}.npz")
    parser.add_argument(
        "--radiomics-features", default=None,
        help="the radiomics stage's features.tsv (pretrain.objective descriptors)",
    )  # fmt: skip
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, config: dict) -> int:
    pretrain_encoder(
        modality=args.modality, fold=args.fold, folds_path=args.folds, roi_dir=args.roi_dir,
        out_dir=args.out_dir, config=config, cohort_path=args.cohort,
        radiomics_features=args.radiomics_features, progress=not args.no_progress,
    )  # fmt: skip
    return 0
