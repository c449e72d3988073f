"""``lungfusion train``: train one model on one fold and score its held-out patients."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lungfusion.commands.splits import read_sheet
from lungfusion.training.data import make_records, roi_shape, split_by_modality, tabular_features
from lungfusion.training.engine import TrainSettings, config_hash, train_model
from lungfusion.training.splits import fold_patients, read_folds

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--folds", required=True, help="folds.tsv from `lungfusion splits`")
    parser.add_argument("--roi-dir", required=True)
    parser.add_argument("--sample-sheet", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def settings_from_config(config: dict, *, progress: bool = True, **overrides) -> TrainSettings:
    train = config["train"]
    values = {
        "task": config["task"],
        "classes": tuple(config["cohort"]["classes"]),
        "augment": dict(train.get("augment", {})),
        "progress": progress,
    }
    for name in (
        "epochs", "batch_size", "lr", "lr_step_epochs", "lr_gamma", "optimizer", "imbalance",
        "selection_metric", "early_stopping_patience", "num_workers", "seed", "device",
        "sgd_momentum",
    ):  # fmt: skip
        if name in train:
            values[name] = train[name]
    values.update(overrides)
    return TrainSettings(**values)


@dataclass
class FoldData:
    """One fold's records for one model, and who was left out for a missing modality."""

    train: list[dict]
    val: list[dict]
    test: list[dict]
    excluded: dict[str, list[str]]
    in_shape: tuple[int, int, int]
    n_tabular: int
    tabular_columns: list[str]


def prepare_fold(
    *,
    folds: pd.DataFrame,
    fold: int,
    roi_dir: str | Path,
    sheet: pd.DataFrame,
    modalities: set[str],
    task: str,
    classes: tuple[str, ...],
) -> FoldData:
    """Records per role, leaving out (and naming) patients without a modality the model reads."""
    roles = fold_patients(folds, fold)
    kept, excluded = {}, {}
    for role, rows in roles.items():
        kept[role], dropped = split_by_modality(rows, modalities)
        excluded[role] = sorted(dropped.patient_id.astype(str))
    clinical = sheet.drop(columns=["label"], errors="ignore")
    tabular = None
    if "tab" in modalities:
        tabular = tabular_features(sheet, fit_ids=list(kept["train"].patient_id.astype(str)))
    records = {}
    for role, rows in kept.items():
        rows = rows.merge(clinical, on="patient_id", how="left", validate="one_to_one")
        records[role] = make_records(rows, roi_dir, task=task, classes=classes, tabular=tabular)
    return FoldData(
        train=records["train"],
        val=records["val"],
        test=records["test"],
        excluded=excluded,
        in_shape=roi_shape(records["train"][0]),
        n_tabular=0 if tabular is None else tabular.shape[1],
        tabular_columns=[] if tabular is None else list(tabular.columns),
    )


def run_hash_payload(name: str, build: dict, settings: TrainSettings, data: FoldData) -> dict:
    return {
        "model": name,
        "build": build,
        "settings": settings.identity(),
        "patients": {
            role: [r["patient_id"] for r in getattr(data, role)]
            for role in ("train", "val", "test")
        },
    }


def run(args: argparse.Namespace, config: dict) -> int:
    from lungfusion.models import build_model, required_modalities

    settings = settings_from_config(config, progress=not args.no_progress)
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    sheet["patient_id"] = sheet.patient_id.astype(str)
    data = prepare_fold(
        folds=read_folds(args.folds),
        fold=args.fold,
        roi_dir=args.roi_dir,
        sheet=sheet,
        modalities=required_modalities(args.model),
        task=settings.task,
        classes=settings.classes,
    )
    build = {
        "n_classes": settings.n_outputs,
        "in_shape": list(data.in_shape),
        "widths": list(config["train"]["widths"]),
        "blocks_per_stage": config["train"]["blocks_per_stage"],
        "n_tabular": data.n_tabular,
    }
    model = build_model(args.model, **build)
    meta = {"name": args.model, "build": build, "tabular_columns": data.tabular_columns}
    n_excluded = sum(len(v) for v in data.excluded.values())
    if n_excluded:
        log.warning(
            "%s fold %d: %d patients lack a modality the model reads",
            args.model,
            args.fold,
            n_excluded,
        )
    train_model(
        model,
        fold=args.fold,
        train_records=data.train,
        val_records=data.val,
        test_records=data.test,
        settings=settings,
        out_dir=args.out_dir,
        run_hash=config_hash(run_hash_payload(args.model, build, settings, data)),
        model_meta=meta,
        summary_extra={
            "excluded_missing_modality": {
                "count": n_excluded,
                "by_role": {k: len(v) for k, v in data.excluded.items()},
                "patients": data.excluded,
            },
            "modalities": sorted(required_modalities(args.model)),
        },
    )
    return 0
