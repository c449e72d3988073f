"""External validation: a second collection scored by the trained models, never fit on.

The external patients' ROIs and lesion features come from the same imaging stages as the
internal ones, run under ``results/external/``. Each trained model scores them with the mean of
its fold models, as ``predict`` does: the networks through
:func:`lungfusion.inference.predict_model` (clinical values from the external sheet), the
radiomics and semantic models on the external features table, the clinical model on the
external sheet. The late-fusion integrator scores them fold by fold, each fold's saved
integrators (``integrate/{name}/fold{k}/model.joblib``) on that fold's submodels' scores, then
the mean over the folds. Only saved models are loaded and applied: nothing here fits.

Writes ``{out}/predictions/{model}/predictions.tsv`` (``patient_id, fold, label``, then
``prob_<class>...`` or ``risk, survival_days, event``; fold -1: the mean of the folds),
``{out}/predictions/summary.json`` (patients scored and skipped per model, and why) and the
metric tables of :func:`lungfusion.evaluation.evaluate.evaluate_models` under
``{out}/metrics/``. Imports torch (it runs the networks).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import write_json_atomic
from lungfusion.evaluation.evaluate import evaluate_models, evaluate_settings
from lungfusion.evaluation.integrate import (
    fold_integrator_scores,
    predictions_layout,
)
from lungfusion.evaluation.tables import write_tsv
from lungfusion.inference import find_checkpoints, fold_mean, predict_model, score_record
from lungfusion.samplesheet import read_sheet

log = logging.getLogger(__name__)
MEAN_FOLD = -1  # the fold column of a mean over the fold models


def read_rois(roi_dir: Path, patients: list[str]) -> pd.DataFrame:
    """The patients whose ROI stage succeeded: ``npz`` and ``has_pet``, indexed by patient_id."""
    rows = []
    for patient in patients:
        sidecar = roi_dir / f"{patient}.json"
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if record.get("status") == "ok":
            npz = sidecar.with_suffix(".npz")
            rows.append({"patient_id": patient, "npz": npz, "has_pet": bool(record["has_pet"])})
        else:
            log.warning("external patient %s left out: no usable ROI", patient)
    return pd.DataFrame(rows, columns=["patient_id", "npz", "has_pet"]).set_index("patient_id")


def score_networks(
    checkpoints: list[Path], rois: pd.DataFrame, sheet: pd.DataFrame, *, device: str
) -> dict[str, dict]:
    """One network's record per patient (fold predictions and their mean, or why skipped)."""
    clinical = sheet.set_index("patient_id", drop=False)
    return {
        patient: predict_model(
            checkpoints,
            roi.npz,
            has_pet=roi.has_pet,
            tab_context=clinical.loc[patient].to_dict(),
            device=device,
        )
        for patient, roi in rois.iterrows()
    }


def score_table_model(fold_models: list[Path], rows: pd.DataFrame) -> dict[str, dict]:
    """A clinical, radiomics or semantic model's record per patient: each fold's saved
    estimator scores ``rows`` (the sheet with the lesion features and ``has_pet``, indexed by
    patient_id), then the mean. Patients without a PET the model reads are skipped."""
    import joblib

    models = {path.parent.name: joblib.load(path) for path in fold_models}
    reads_pet = any("pet" in getattr(m, "modalities", ()) for m in models.values())
    scored = rows[rows["has_pet"]] if reads_pet else rows
    records = {p: {"skipped": "the model reads PET and this patient has none"} for p in rows.index}
    if scored.empty:
        return records
    per_fold = {fold: model.score(scored) for fold, model in models.items()}
    for i, patient in enumerate(scored.index):
        records[patient] = fold_mean({f: score_record(s, i) for f, s in per_fold.items()})
    return records


def fold_table(records: dict[str, dict], fold: str | None) -> pd.DataFrame:
    """The scored patients' ``prob_<class>`` (or ``risk``) of one fold (``fold0``...), or of
    the mean over the folds (``fold`` None), with ``patient_id``."""
    rows = []
    for patient, record in records.items():
        if "skipped" in record:
            continue
        chosen = record if fold is None else record["folds"][fold]
        values = (
            {"risk": chosen["risk"]} if "risk" in chosen
            else {f"prob_{c}": p for c, p in chosen["probabilities"].items()}
        )  # fmt: skip
        rows.append({"patient_id": patient, **values})
    return pd.DataFrame(rows)


def score_integrator(
    integrator_dir: Path, records: dict[str, dict], flags: pd.DataFrame, *, train_dir: Path,
    classes: list[str],
) -> dict[str, dict]:  # fmt: skip
    """The late-fusion integrator's record per patient: fold k's saved integrators applied to
    the submodels' fold-k scores (masked by the modality each needs, as in integration), then
    the mean over the folds. ``records``: the submodels' records per patient."""
    import joblib

    per_fold: dict[str, pd.DataFrame] = {}
    for path in sorted(integrator_dir.glob("fold*/model.joblib")):
        fold = path.parent.name
        tables = {
            name: fold_table(scored, fold)
            for name, scored in records.items()
            if any("skipped" not in r for r in scored.values())
        }
        per_fold[fold] = fold_integrator_scores(
            joblib.load(path), tables, flags, train_dir=train_dir, fold=fold, classes=classes
        )
    if not per_fold:
        raise FileNotFoundError(f"no fold*/model.joblib under {integrator_dir}: rerun integrate")
    result = {}
    for patient in flags.index:
        folds = {f: table.loc[patient] for f, table in per_fold.items() if patient in table.index}
        if not folds:
            result[patient] = {"skipped": "no submodel scored this patient"}
            continue
        result[patient] = fold_mean(
            {f: _integrator_record(row, classes) for f, row in folds.items()}
        )
        result[patient]["pattern"] = next(iter(folds.values()))["pattern"]
    return result


def _integrator_record(row: pd.Series, classes: list[str]) -> dict:
    if "risk" in row.index:
        return {"risk": float(row["risk"])}
    return {"probabilities": {c: float(row[f"prob_{c}"]) for c in classes}}


def run_external(
    *, train_dir: Path, integrator_dir: Path, roi_dir: Path, features_path: Path,
    sample_sheet: Path, models: list[str], out_dir: Path, config: dict, device: str = "cpu",
) -> dict:  # fmt: skip
    """Score the external patients with every model in ``models`` and the integrator, write
    the prediction tables and evaluate them; returns the evaluation's summary."""
    from lungfusion.training.device import resolve_device

    task, classes = config["task"], list(config["cohort"]["classes"])
    sheet = read_sheet(sample_sheet, config["cohort"])
    rois = read_rois(roi_dir, list(sheet["patient_id"]))
    features = pd.read_csv(features_path, sep="\t", dtype={"patient_id": str})
    features = features.drop(columns=["has_pet"], errors="ignore")  # the ROI's flag decides
    rows = sheet.merge(features, on="patient_id", how="left", validate="one_to_one")
    rows = pd.concat(
        [rows.set_index("patient_id", drop=False).loc[rois.index], rois.has_pet], axis=1
    )
    device = resolve_device(device).type
    scored = list(dict.fromkeys([*models, *config["integrate"]["submodels"]]))
    records = {
        name: score_networks(paths, rois, sheet, device=device)
        for name, paths in find_checkpoints(train_dir, scored).items()
    }
    for name, paths in find_checkpoints(train_dir, scored, file_name="model.joblib").items():
        records.setdefault(name, score_table_model(paths, rows))
    integrator = integrator_dir.name
    submodels = {n: r for n, r in records.items() if n in config["integrate"]["submodels"]}
    flags = rois[["has_pet"]].assign(has_ct=True)
    records[integrator] = score_integrator(
        integrator_dir, submodels, flags, train_dir=train_dir, classes=classes
    )
    written = write_predictions(records, sheet, out_dir / "predictions", task=task)
    return evaluate_models(
        [str(path) for path in written], out_dir / "metrics", task=task, classes=classes,
        settings=evaluate_settings(config),
    )  # fmt: skip


def write_predictions(
    records: dict[str, dict], sheet: pd.DataFrame, out_dir: Path, *, task: str
) -> list[Path]:
    """Each model's table (models that scored nobody have none) and, last, ``summary.json``:
    per model the patients scored and those skipped with why. Returns the tables' paths."""
    written, summary = [], {}
    for name, scored in records.items():
        skipped = {p: r["skipped"] for p, r in scored.items() if "skipped" in r}
        summary[name] = {"n_scored": len(scored) - len(skipped), "skipped": skipped}
        if len(skipped) < len(scored):
            path = out_dir / name / "predictions.tsv"
            table = predictions_layout(fold_table(scored, None), sheet, MEAN_FOLD, task)
            write_tsv(table, path)
            written.append(path)
    write_json_atomic(
        out_dir / "summary.json", {"averaging": "mean over the fold models", "models": summary}
    )
    return written
