"""One fold's patients for one model: records per role, who was left out for a missing
imaging modality, and the clinical preprocessing fit on the fold's training patients only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lungfusion.clinical import clinical_tabular_features
from lungfusion.folds import fold_patients, read_folds
from lungfusion.samplesheet import read_sheet
from lungfusion.training.data import make_records, roi_shape, split_by_modality
from lungfusion.training.engine import TrainSettings


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
    tabular_preprocessor: object = None  # the fitted sklearn ColumnTransformer, or None


def prepare_fold(
    *,
    folds: pd.DataFrame,
    fold: int,
    roi_dir: str | Path,
    sheet: pd.DataFrame,
    modalities: set[str],
    task: str,
    classes: tuple[str, ...],
    clinical_columns: list[str] | None = None,
) -> FoldData:
    """Records per role, leaving out (and naming) patients without a modality the model reads."""
    kept, excluded = fold_roles_with(folds, fold, modalities)
    for role in ("train", "val"):
        if kept[role].empty:
            raise ValueError(
                f"fold {fold}: none of its {len(excluded[role])} {role} patients has "
                f"{' and '.join(sorted(m.upper() for m in modalities - {'tab'}))} (left out: "
                f"{', '.join(excluded[role][:5])}); a model reading these needs some; "
                "add patients or lower splits.n_folds"
            )
    clinical = sheet.drop(columns=["label"], errors="ignore")
    tabular, preprocessor = None, None
    if "tab" in modalities:  # imputation and scaling fit on the training patients only
        tabular, preprocessor = clinical_tabular_features(
            sheet, fit_ids=list(kept["train"].patient_id), columns=clinical_columns
        )
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
        tabular_preprocessor=preprocessor,
    )


def load_fold(
    *, sample_sheet: str | Path, folds_path: str | Path, fold: int, roi_dir: str | Path,
    modalities: set[str], settings: TrainSettings, config: dict,
    clinical_columns: list[str] | None = None,
) -> FoldData:  # fmt: skip
    """:func:`prepare_fold` on the sample sheet and the folds table read from their files."""
    sheet = read_sheet(sample_sheet, config["cohort"])
    return prepare_fold(
        folds=read_folds(folds_path),
        fold=fold,
        roi_dir=roi_dir,
        sheet=sheet,
        modalities=modalities,
        task=settings.task,
        classes=settings.classes,
        clinical_columns=clinical_columns,
    )


def fold_roles_with(
    folds: pd.DataFrame, fold: int, modalities: set[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """The fold's patients per role who have every imaging modality in ``modalities``, and the
    IDs of those left out for lacking one."""
    kept, excluded = {}, {}
    for role, rows in fold_patients(folds, fold).items():
        kept[role], dropped = split_by_modality(rows, modalities)
        excluded[role] = sorted(dropped.patient_id)
    return kept, excluded


def excluded_summary(excluded: dict[str, list[str]]) -> dict:
    """``summary.json``'s ``excluded_missing_modality``: who was left out of each role."""
    return {
        "count": sum(len(v) for v in excluded.values()),
        "by_role": {k: len(v) for k, v in excluded.items()},
        "patients": excluded,
    }


def run_hash_payload(name: str, build: dict, settings: TrainSettings, data: FoldData) -> dict:
    """What a network's run hash covers (a checkpoint resumes only under the same hash): the
    model, its build, the settings that change the result and the fold's patients."""
    return {
        "model": name,
        "build": build,
        "settings": settings.identity(),
        "patients": {
            role: [r["patient_id"] for r in getattr(data, role)]
            for role in ("train", "val", "test")
        },
    }
