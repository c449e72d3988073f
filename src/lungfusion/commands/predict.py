"""``lungfusion predict``: one new patient's DICOM folder through the imaging stages and every
trained model; see :mod:`lungfusion.inference`. Prints a table and writes ``--out`` (JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungfusion.artifacts import write_json_atomic
from lungfusion.inference import format_predictions, parse_clinical, predict_patient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dicom", required=True, type=Path, help="the new patient's DICOM folder")
    parser.add_argument("--models-dir", type=Path, default=Path("results/train"))
    parser.add_argument("--models", nargs="+", default=None, help="default: every model found")
    parser.add_argument(
        "--clinical", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. age=64 sex=F"
    )
    parser.add_argument("--patient-id", default="new_patient", help="name used in the output")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the imaging outputs here")
    parser.add_argument("--out", type=Path, default=None, help="predictions JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def run(args: argparse.Namespace, config: dict) -> int:
    record = predict_patient(
        args.dicom,
        models_dir=args.models_dir,
        models=args.models,
        clinical=parse_clinical(args.clinical),
        patient_id=args.patient_id,
        work_dir=args.work_dir,
        device=args.device,
        config=config,
    )
    if record is None:
        return 1
    print(format_predictions(record))
    if args.out is not None:
        write_json_atomic(args.out, record)
    return 0
