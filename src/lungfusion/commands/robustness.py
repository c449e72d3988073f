"""``lungfusion robustness``: every trained CT+PET network scored on its test patients with the
PET misaligned (``robustness.misalignment_mm``, ``rotation_deg``) or withheld
(``drop_pet_fraction``, where the late-fusion integrators are scored too); see :func:`lungfusion.robustness.score.run_robustness`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.config import section_with_defaults
from lungfusion.robustness.score import run_robustness
from lungfusion.training.device import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, help="trained models (train.models)")
    parser.add_argument("--train-dir", required=True, type=Path, help="results/train")
    parser.add_argument("--folds", required=True, type=Path, help="results/splits/folds.tsv")
    parser.add_argument("--roi-dir", required=True, type=Path, help="results/roi")
    parser.add_argument("--register-dir", required=True, type=Path, help="results/register")
    parser.add_argument("--segment-dir", required=True, type=Path, help="results/segment")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/robustness")
    parser.add_argument(
        "--integrator-dirs", nargs="*", type=Path, default=[],
        help="late-fusion integrators scored at the drop_pet levels (results/integrate/{name})",
    )  # fmt: skip


def run(args: argparse.Namespace, config: dict) -> int:
    if config["task"] != "classification":
        raise SystemExit(
            f"lungfusion robustness: classification only, the config's task is {config['task']}"
        )
    run_robustness(
        args.models,
        train_dir=args.train_dir,
        folds_path=args.folds,
        roi_dir=args.roi_dir,
        register_dir=args.register_dir,
        segment_dir=args.segment_dir,
        out_dir=args.out_dir,
        settings=section_with_defaults(config, "robustness"),
        roi_settings=section_with_defaults(config, "roi"),
        evaluate_settings=section_with_defaults(config, "evaluate"),
        classes=list(config["cohort"]["classes"]),
        device=str(resolve_device(section_with_defaults(config, "train")["device"])),
        integrator_dirs=args.integrator_dirs,
    )
    return 0
