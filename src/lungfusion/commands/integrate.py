"""``lungfusion integrate``: late-fusion logistic / Cox integration of the submodels' scores.

Writes ``{out}/predictions.tsv`` (the model-prediction layout plus ``pattern``),
``val_predictions.tsv`` (the validation patients, by inner cross-validation), the clinical
submodel's own predictions under ``submodels/clinical_logistic/fold{k}/`` (or
``clinical_cox``) when it was fit here, so ``evaluate`` scores it like any model under a name
that cannot clash with a clinical model of the training engine, and last ``summary.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import Timer, software_versions, write_json_atomic
from lungfusion.config import section_settings
from lungfusion.evaluation.integrate import INTEGRATORS, late_fusion
from lungfusion.evaluation.tables import write_tsv
from lungfusion.folds import read_folds
from lungfusion.samplesheet import read_sample_sheet

log = logging.getLogger(__name__)

# the name the clinical submodel fit here gets in results/metrics
CLINICAL_NAMES = {"late_logistic": "clinical_logistic", "late_cox": "clinical_cox"}


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
    settings = section_settings(config, "integrate")
    if INTEGRATORS[args.name] != config["task"]:
        raise ValueError(
            f"integrator {args.name} is for task {INTEGRATORS[args.name]}, config task is {config['task']}"
        )
    cohort = config["cohort"]
    classes = list(cohort["classes"])
    sheet = read_sample_sheet(
        args.sample_sheet, sheet_format=cohort["sheet_format"], sheet_name=cohort["sheet_name"],
        columns=cohort["columns"], label_from_id=cohort["label_from_id"], classes=classes,
    )  # fmt: skip
    folds = read_folds(args.folds)
    timer = Timer()
    with timer("integrate"):
        result = late_fusion(
            name=args.name, train_dir=args.train_dir, folds=folds, sheet=sheet, classes=classes,
            submodels=args.submodels or settings["submodels"],
            C=float(settings["logistic_C"]), alpha=float(settings["cox_alpha"]),
            clinical_C=float(settings["clinical_C"]), clinical_alpha=float(settings["clinical_alpha"]),
            min_fit=int(settings["min_fit_patients"]),
        )  # fmt: skip
    out = args.out_dir
    write_tsv(result["predictions"], out / "predictions.tsv")
    write_tsv(result["val_predictions"], out / "val_predictions.tsv")
    for fold, (test, val) in result["clinical"].items():
        folder = out / "submodels" / CLINICAL_NAMES[args.name] / f"fold{fold}"
        write_tsv(_submodel_layout(test, sheet, fold, config["task"]), folder / "predictions.tsv")
        write_tsv(
            _submodel_layout(val, sheet, fold, config["task"]), folder / "val_predictions.tsv"
        )
    summary = result["summary"]
    summary.update(
        inputs={"train_dir": str(args.train_dir), "folds": str(args.folds), "sample_sheet": str(args.sample_sheet)},
        parameters=settings, timings_s=timer.seconds, software=software_versions(),
    )  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    log.info(
        "%s: %d patients; patterns %s", args.name, summary["n_patients"], summary["pattern_counts"]
    )
    return 0


def _submodel_layout(
    scored: pd.DataFrame, sheet: pd.DataFrame, fold: int, task: str
) -> pd.DataFrame:
    """The clinical submodel's scores in the training engine's predictions layout."""
    table = sheet.set_index(sheet["patient_id"].astype(str))
    out = scored.copy()
    out.insert(1, "fold", fold)
    out.insert(2, "label", table["label"].reindex(out["patient_id"].astype(str)).to_numpy())
    if task == "survival":
        for column in ("survival_days", "event"):
            values = pd.to_numeric(table[column], errors="coerce")
            out[column] = values.reindex(out["patient_id"].astype(str)).to_numpy()
    return out
