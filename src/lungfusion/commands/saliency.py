"""``lungfusion saliency``: occlusion saliency of every trained CT+PET network, per modality, on
its test patients; see :func:`lungfusion.saliency.run_saliency`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.saliency import run_saliency
from lungfusion.training.device import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, help="trained models (train.models)")
    parser.add_argument("--train-dir", required=True, type=Path, help="results/train")
    parser.add_argument("--folds", required=True, type=Path, help="results/splits/folds.tsv")
    parser.add_argument("--roi-dir", required=True, type=Path, help="results/roi")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/saliency")


def run(args: argparse.Namespace, config: dict) -> int:
    if config["task"] != "classification":
        raise SystemExit(
            f"lungfusion saliency: classification only, the config's task is {config['task']}"
        )
    run_saliency(
        args.models,
        train_dir=args.train_dir,
        folds_path=args.folds,
        roi_dir=args.roi_dir,
        out_dir=args.out_dir,
        mask_size=int(section_with_defaults(config, "saliency")["mask_size"]),
        ct_window=section_with_defaults(config, "roi")["ct_window"],
        max_offset_mm=float(section_with_defaults(config, "radiomics")["max_offset_mm"]),
        device=str(resolve_device(section_with_defaults(config, "train")["device"])),
    )
    return 0
