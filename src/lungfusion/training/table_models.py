"""The table models' runs on one fold (``lungfusion train --model clinical|radiomics|semantic``):
fit a scikit-learn estimator of :mod:`lungfusion.estimators` on the fold's training patients
and write what the networks' runs write, so evaluation and late fusion treat them alike."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from lungfusion.config import section_settings
from lungfusion.estimators import TABLE_MODELS
from lungfusion.estimators.clinical import fit_clinical_model
from lungfusion.estimators.radiomics import fit_radiomics_model
from lungfusion.evaluation.metrics import auc_score, gmean_score
from lungfusion.evaluation.survival import harrell_c
from lungfusion.folds import fold_patients, read_folds
from lungfusion.samplesheet import read_sheet
from lungfusion.training.fold import excluded_summary, fold_roles_with
from lungfusion.training.run import settings_from_config


def run_clinical(
    *, fold: int, folds_path: str | Path, sample_sheet: str | Path, out_dir: str | Path,
    config: dict,
) -> None:  # fmt: skip
    """Logistic regression (or Cox PH) on the clinical table, written like the networks' runs:
    ``model.joblib``, ``history.tsv`` (one row), ``val_predictions.tsv``, ``predictions.tsv`` and,
    last, ``summary.json``."""
    started = time.perf_counter()
    settings = settings_from_config(config, progress=False)
    section = table_model_section(config, "clinical")
    columns = config["train"].get("clinical_columns")
    sheet = read_sheet(sample_sheet, config["cohort"])
    roles = _table_model_roles(folds_path, fold)
    out_dir = _fresh_out_dir(out_dir)
    model = fit_clinical_model(
        sheet, fit_ids=roles["train"], task=settings.task, classes=list(settings.classes),
        C=float(section["C"]), alpha=float(section["alpha"]), columns=columns,
    )  # fmt: skip
    table = sheet.set_index("patient_id", drop=False)
    _write_table_model_run(
        out_dir, model, table, roles, fold=fold, settings=settings, started=started,
        summary={
            "model": "clinical",
            "estimator": type(model.estimator).__name__,
            "features": [str(n) for n in model.preprocessor.get_feature_names_out()],
            "model_options": {
                "C": section["C"],
                "alpha": section["alpha"],
                "clinical_columns": columns,
            },
            "excluded_missing_modality": excluded_summary({}),
            "modalities": list(TABLE_MODELS["clinical"].modalities),
        },
    )  # fmt: skip


def run_radiomics(
    model_name: str, *, fold: int, folds_path: str | Path, sample_sheet: str | Path,
    features_path: str | Path | None, out_dir: str | Path, config: dict,
) -> None:  # fmt: skip
    """Penalised logistic regression (or ridge Cox) on the lesion's CT and PET features (all of
    them for ``radiomics``, the descriptors for ``semantic``), written like the clinical model's
    runs. Patients without an imaging modality the model reads (``train.<model>.modalities``:
    CT and PET, or CT alone) are left out and counted, as for the networks; those whose ROI
    showed no lesion are imputed."""
    started = time.perf_counter()
    settings = settings_from_config(config, progress=False)
    section = table_model_section(config, model_name)
    if features_path is None:
        raise ValueError(f"model {model_name} needs --radiomics-features (lungfusion radiomics)")
    features = pd.read_csv(features_path, sep="\t", dtype={"patient_id": str})
    sheet = read_sheet(sample_sheet, config["cohort"])
    features = features.drop(columns=["has_pet"], errors="ignore")  # the folds' flag decides
    table = sheet.merge(features, on="patient_id", how="left", validate="one_to_one")
    table = table.set_index("patient_id", drop=False)
    modalities = sorted(section["modalities"])
    if "ct" not in modalities:
        raise ValueError(f"train.{model_name}.modalities must include ct (the lesion is the CT's)")
    kept, excluded = fold_roles_with(read_folds(folds_path), fold, set(modalities))
    roles = {role: list(rows.patient_id) for role, rows in kept.items()}
    if not roles["train"] or not roles["val"]:
        raise ValueError(
            f"fold {fold}: need training and validation patients with {'+'.join(modalities)}"
        )
    out_dir = _fresh_out_dir(out_dir)
    C, alpha = float(section["C"]), float(section["alpha"])
    model = fit_radiomics_model(
        table, fit_ids=roles["train"], task=settings.task, classes=list(settings.classes),
        C=C, alpha=alpha, model=model_name, modalities=modalities,
    )  # fmt: skip
    used = sorted({p for ids in roles.values() for p in ids})
    status = table.loc[used, "status"].fillna("missing")
    _write_table_model_run(
        out_dir, model, table, roles, fold=fold, settings=settings, started=started,
        summary={
            "model": model_name,
            "estimator": type(model.pipeline[-1]).__name__,
            "features": model.columns,
            "model_options": {"C": C, "alpha": alpha, "modalities": modalities},
            "imputed_without_features": sorted(status.index[status != "ok"]),
            "excluded_missing_modality": excluded_summary(excluded),
            "modalities": modalities,
        },
    )  # fmt: skip


def table_model_section(config: dict, model: str) -> dict:
    """``train.<model>`` of a table model with the schema's defaults filled in."""
    return section_settings(config, "train")[model]


def _table_model_roles(folds_path: str | Path, fold: int) -> dict[str, list[str]]:
    """The fold's patient IDs per role; a table model needs training and validation patients."""
    roles = {
        role: list(rows.patient_id)
        for role, rows in fold_patients(read_folds(folds_path), fold).items()
    }
    if not roles["train"] or not roles["val"]:
        raise ValueError(f"fold {fold}: need training and validation patients")
    return roles


def _fresh_out_dir(out_dir) -> Path:
    """``out_dir``, created, without the ``summary.json`` that marks a finished run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # the run is not complete until rewritten
    return out_dir


def _write_table_model_run(
    out_dir: Path, model, table: pd.DataFrame, roles: dict, *, fold: int, settings, started: float,
    summary: dict,
) -> None:  # fmt: skip
    """``model.joblib``, ``history.tsv`` (one row), ``val_predictions.tsv``,
    ``predictions.tsv`` and, last, ``summary.json`` of a fitted table model (``model.score``)."""
    import joblib

    from lungfusion.artifacts import atomic_path, software_versions, write_json_atomic
    from lungfusion.training.engine import _empty_predictions, write_table

    with atomic_path(out_dir / "model.joblib") as tmp:
        joblib.dump(model, tmp)
    tables = {
        role: table_model_predictions(model, table.loc[ids], fold=fold, settings=settings)
        if ids else _empty_predictions(settings)
        for role, ids in roles.items()
    }  # fmt: skip
    row = {"epoch": 1, "train_loss": _clinical_loss(tables["train"], settings)}
    row["val_loss"] = _clinical_loss(tables["val"], settings)
    val = tables["val"]
    if settings.task == "survival":
        row["val_cindex"] = harrell_c(
            val.survival_days.to_numpy(float), val.event.to_numpy(float), val.risk.to_numpy(float)
        )
        row.update(val_auc=float("nan"), val_gmean=float("nan"))
    else:
        labels, probs = _labels_probs(val, settings)
        row.update(val_auc=auc_score(labels, probs), val_gmean=gmean_score(labels, probs))
    row.update(lr=float("nan"), seconds=round(time.perf_counter() - started, 3))
    write_table(pd.DataFrame([row]), out_dir / "history.tsv")
    write_table(tables["val"], out_dir / "val_predictions.tsv")
    write_table(tables["test"], out_dir / "predictions.tsv")
    write_json_atomic(
        out_dir / "summary.json",
        {
            "status": "ok",
            "model": summary["model"],
            "fold": fold,
            "task": settings.task,
            "n_patients": {role: len(ids) for role, ids in roles.items()},
            "best_epoch": 1,
            "selection_metric": settings.selection_metric,
            "best_val_loss": row["val_loss"],
            **summary,
            "timings_s": {"fit_and_predict": round(time.perf_counter() - started, 3)},
            "software": software_versions(),
        },
    )


def table_model_predictions(model, rows: pd.DataFrame, *, fold: int, settings) -> pd.DataFrame:
    """The engine's prediction table columns for a table model's scores of ``rows``."""
    scores = model.score(rows)
    table = pd.DataFrame({"patient_id": rows["patient_id"].to_list(), "fold": fold})
    if settings.task == "survival":
        table["risk"] = scores["risk"]
        table["survival_days"] = pd.to_numeric(rows["survival_days"], errors="coerce").to_numpy()
        table["event"] = pd.to_numeric(rows["event"], errors="coerce").astype("Int64").to_numpy()
    else:
        table["label"] = rows["label"].to_numpy()
        for name in settings.classes:
            table[f"prob_{name}"] = scores[f"prob_{name}"]
    return table


def _labels_probs(table: pd.DataFrame, settings):
    """Class indices and probabilities of the rows whose label is among the classes."""
    known = table["label"].isin(settings.classes).to_numpy()
    labels = table["label"][known].map({c: i for i, c in enumerate(settings.classes)}).to_numpy(int)
    probs = table.loc[known, [f"prob_{c}" for c in settings.classes]].to_numpy(float)
    return labels, probs


def _clinical_loss(table: pd.DataFrame, settings) -> float:
    """Mean cross-entropy (classification) or NaN (survival: no per-patient loss)."""
    import numpy as np

    if settings.task == "survival" or table.empty:
        return float("nan")
    labels, probs = _labels_probs(table, settings)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(picked).mean())
