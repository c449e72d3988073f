"""One new patient's DICOM folder through the imaging stages and every
trained model.

The DICOM folder is indexed, ingested, registered, segmented and cropped with the same library
functions and config parameters as the pipeline, in a temporary folder (``--work-dir`` keeps
it). Each model's prediction is the MEAN of its fold models (``{models-dir}/{model}/fold{k}/
model.pt``): the mean softmax probability per class, each fold's calibrated on its validation
patients as in training (``calibration.json`` beside ``model.pt``), or the mean risk for
survival (risk scales differ between folds, so compare a survival risk with its own model's
training risks only).
The radiomics and semantic models (``{model}/fold{k}/model.joblib``) score the lesion features
of the same ROI (and the segment stage's lung labels), computed with the config's
``radiomics`` settings, with the fold models' mean probability.
Models that read a modality the patient lacks (PET) are skipped with the reason. Models that
read clinical values need ``--clinical key=value``; each fold model's checkpoint holds the
clinical preprocessing fit on that fold's training patients, which turns them into its features.

``lungfusion predict`` prints the record as a table and writes it as JSON. Imports torch (it
runs the models).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lungfusion.artifacts import Timer
from lungfusion.config import section_with_defaults
from lungfusion.errors import PatientInputError
from lungfusion.estimators import LESION_FEATURE_MODELS
from lungfusion.training.checkpoint import calibrated, load_checkpoint

log = logging.getLogger(__name__)
FOLD_DIR = re.compile(r"^fold(\d+)$")
AVERAGING = "mean over the fold models (calibrated softmax probabilities; raw risk for survival)"


# ------------------------------------------------------------------------------ imaging


def prepare_roi(dicom_dir: Path, work_dir: Path, config: dict, patient: str) -> dict:
    """Run index -> ingest -> register -> segment -> roi; return the ROI path and the facts."""
    from lungfusion.imaging.register import register_patient
    from lungfusion.imaging.roi import make_roi
    from lungfusion.imaging.segment import segment_patient
    from lungfusion.ingest.index import index_one_patient
    from lungfusion.ingest.patient import ingest_patient

    settings = {
        name: section_with_defaults(config, name)
        for name in ("ingest", "register", "segment", "roi")
    }
    timer = Timer()
    dirs = {name: work_dir / name / patient for name in ("ingest", "register", "segment")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    with timer("index"):
        series = index_one_patient(
            dicom_dir, work_dir / "ingest" / "series.tsv", patient,
            ct_slice_thickness_mm=settings["ingest"]["ct_slice_thickness_mm"],
            study_choice=settings["ingest"]["study_choice"],
        )  # fmt: skip
    with timer("ingest"):
        ingested = ingest_patient(patient, series, dirs["ingest"], settings["ingest"])
    with timer("register"):
        registered = register_patient(
            patient, dirs["ingest"], dirs["register"], settings["register"], Timer(),
            has_pet=bool(ingested["has_pet"]),
        )  # fmt: skip
    with timer("segment"):
        segmented = segment_patient(
            dirs["register"] / "ct.nii.gz",
            dirs["segment"],
            settings=settings["segment"],
            timer=Timer(),
        )
    npz = work_dir / "roi" / f"{patient}.npz"
    with timer("roi"):
        roi = make_roi(
            patient, register_dir=dirs["register"], segment_dir=dirs["segment"],
            ingest_dir=dirs["ingest"], settings=settings["roi"], timer=Timer(),
            npz_path=npz, png_path=npz.with_suffix(".png"),
        )  # fmt: skip
    registration = registered.get("registration") or {}
    return {
        "npz": npz,
        "lungs": dirs["segment"] / "lungs.nii.gz",
        "register_dir": dirs["register"],
        "has_pet": bool(ingested["has_pet"]),
        "registration_kept": registration.get("kept"),
        "lung_volume_ml": segmented["volumes_ml"].get("total_ml"),
        "crop_used": roi["crop_used"],
        "warnings": [
            *ingested["warnings"],
            *registered.get("warnings", []),
            *segmented["warnings"],
            *roi["warnings"],
        ],  # fmt: skip
        "timings_s": timer.seconds,
    }


# ------------------------------------------------------------------------------- models


def find_checkpoints(
    models_dir: Path, names: list[str] | None = None, *, file_name: str = "model.pt"
) -> dict[str, list[Path]]:
    """``{model: [fold0/model.pt, fold1/model.pt, ...]}`` under ``models_dir``."""
    found: dict[str, list[Path]] = {}
    for path in sorted(models_dir.glob(f"*/fold*/{file_name}")):
        if FOLD_DIR.match(path.parent.name) and (names is None or path.parent.parent.name in names):
            found.setdefault(path.parent.parent.name, []).append(path)
    return found


def roi_batch(npz: Path, *, tab: np.ndarray | None = None, device: str = "cpu") -> dict:
    """The one-patient batch a model's ``forward`` reads, loaded as training loads it."""
    import torch

    from lungfusion.training.data import LoadRoid

    sample = LoadRoid()({"path": str(npz)})
    batch = {
        "ct": torch.as_tensor(sample["ct"])[None].to(device),
        "pet": torch.as_tensor(sample["pet"])[None].to(device),
        "has_pet": torch.as_tensor([bool(sample["has_pet"])]).to(device),
    }
    if tab is not None:
        batch["tab"] = torch.as_tensor(tab, dtype=torch.float32)[None].to(device)
    return batch


def parse_clinical(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--clinical expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def tabular_vector(meta: dict, clinical: dict) -> np.ndarray:
    """The patient's clinical features in the checkpoint's ``tabular_columns``, through the
    preprocessing fit on the fold's training patients (``clinical_preprocessor``), as in
    training."""
    from lungfusion.clinical import parse_clinical_table, transform_features

    row = parse_clinical_table(pd.DataFrame([clinical]))
    features = transform_features(meta["clinical_preprocessor"], row)
    return features.iloc[0].reindex(meta["tabular_columns"]).fillna(0.0).to_numpy(np.float32)


def predict_model(
    checkpoints: list[Path], npz: Path, *, has_pet: bool, tab_context, device: str
) -> dict:
    """One model's fold predictions and their mean (or why it was skipped). ``tab_context``:
    the patient's ``--clinical`` values, None when none were given."""
    import torch

    from lungfusion.models import required_modalities
    from lungfusion.training.engine import forward_logits

    folds = {}
    for path in checkpoints:
        model, payload = load_checkpoint(path, device=device)
        meta = payload["model"]
        modalities = required_modalities(meta["name"])
        if "pet" in modalities and not has_pet:
            return {"skipped": "the model reads PET and this patient has none"}
        tab = None
        if meta.get("tabular_columns"):
            if tab_context is None:
                return {"skipped": "the model reads clinical values: give --clinical"}
            if meta.get("clinical_preprocessor") is None:
                return {"skipped": "the checkpoint has no clinical preprocessing: retrain it"}
            tab = tabular_vector(meta, tab_context)
        with torch.no_grad():
            batch = roi_batch(npz, tab=tab, device=device)
            output = forward_logits(model, batch, tta=bool(payload.get("tta"))).float().cpu()
        if payload.get("task") == "survival":
            folds[path.parent.name] = {"risk": float(output.reshape(-1)[0])}
        else:
            probs = torch.softmax(output, dim=1)[0].numpy()
            folds[path.parent.name] = {
                "probabilities": calibrated(path.parent, payload["classes"], probs)
            }
    return fold_mean(folds)


def fold_mean(folds: dict) -> dict:
    """The mean risk or per-class probability over the fold predictions, with the folds."""
    first = next(iter(folds.values()))
    if "risk" in first:
        result = {"risk": float(np.mean([f["risk"] for f in folds.values()]))}
    else:
        classes = list(first["probabilities"])
        result = {
            "probabilities": {
                c: float(np.mean([f["probabilities"][c] for f in folds.values()])) for c in classes
            }
        }
    return {**result, "n_folds": len(folds), "averaging": AVERAGING, "folds": folds}


def score_record(scores: dict[str, np.ndarray], row: int) -> dict:
    """Row ``row`` of a table model's ``score`` output as a fold prediction: ``{"risk"}`` or
    ``{"probabilities": {class: p}}``."""
    if "risk" in scores:
        return {"risk": float(scores["risk"][row])}
    return {"probabilities": {c.removeprefix("prob_"): float(v[row]) for c, v in scores.items()}}


def predict_radiomics(
    fold_models: list[Path], npz: Path, *, lungs: Path, register_dir: Path, has_pet: bool,
    config: dict,
) -> dict:  # fmt: skip
    """The radiomics or semantic model's fold predictions of the patient's ROI and their mean."""
    import joblib

    from lungfusion.imaging.radiomics import (
        lesion_features,
        radiomics_settings,
        read_lesion_inputs,
        read_lungs,
    )

    models = {path.parent.name: joblib.load(path) for path in fold_models}
    reads_pet = any("pet" in getattr(m, "modalities", ("ct", "pet")) for m in models.values())
    if reads_pet and not has_pet:
        return {"skipped": "the model reads PET and this patient has none"}
    roi_settings, settings = config["roi"], radiomics_settings(config.get("radiomics"))
    roi = read_lesion_inputs(
        npz, register_dir=register_dir, segment_dir=lungs.parent, settings=settings,
        ct_window=roi_settings["ct_window"], suv_window=roi_settings["suv_window"],
    )  # fmt: skip
    roi["lungs"] = read_lungs(lungs)
    features, status = lesion_features(**roi, settings=settings)
    folds = {}
    for fold, model in models.items():
        scores = model.score(pd.DataFrame([{c: features.get(c, np.nan) for c in model.columns}]))
        folds[fold] = score_record(scores, 0)
    result = fold_mean(folds)
    if status != "ok":
        result["warning"] = f"lesion features {status}: imputed with the training patients' medians"
    return result


def predict_patient(
    dicom: Path,
    *,
    models_dir: Path,
    models: list[str] | None,
    clinical: dict[str, str],
    patient_id: str,
    work_dir: Path | None,
    device: str,
    config: dict,
) -> dict | None:
    """Run one patient's DICOM folder through the imaging stages and every trained model;
    returns the prediction record (None when the imaging failed, which is logged). The imaging
    outputs stay in ``work_dir`` when one is given."""
    from lungfusion.training.device import resolve_device

    checkpoints = find_checkpoints(models_dir, models)
    tables = find_checkpoints(models_dir, models, file_name="model.joblib")
    tables = {name: paths for name, paths in tables.items() if name in LESION_FEATURE_MODELS}
    if not checkpoints and not tables:
        raise SystemExit(f"no trained models (*/fold*/model.pt) under {models_dir}")
    keep = work_dir is not None
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="lungfusion-predict-"))
    try:
        try:
            imaging = prepare_roi(dicom, work_dir, config, patient_id)
        except PatientInputError as error:
            log.error("imaging failed: %s", error)
            return None
        device = resolve_device(device).type
        scored = {
            name: predict_model(
                paths,
                imaging["npz"],
                has_pet=imaging["has_pet"],
                tab_context=clinical or None,
                device=device,
            )  # fmt: skip
            for name, paths in checkpoints.items()
        }
        for name, paths in tables.items():
            scored[name] = predict_radiomics(
                paths, imaging["npz"], lungs=imaging["lungs"],
                register_dir=imaging["register_dir"], has_pet=imaging["has_pet"], config=config,
            )  # fmt: skip
        record = {
            "patient_id": patient_id,
            "task": config["task"],
            "averaging": AVERAGING,
            "imaging": {
                k: v for k, v in imaging.items() if k not in ("npz", "lungs", "register_dir")
            },
            "models": scored,
        }
        if keep:
            record["imaging"]["roi"] = str(imaging["npz"])
        return record
    finally:
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)


def format_predictions(record: dict) -> str:
    """A short text table: one line per model."""
    lines = [
        f"patient {record['patient_id']} ({'PET/CT' if record['imaging']['has_pet'] else 'CT only'}); "
        f"each model: {AVERAGING}"
    ]
    for name, result in record["models"].items():
        if "skipped" in result:
            lines.append(f"  {name:<14} skipped: {result['skipped']}")
        elif "risk" in result:
            lines.append(f"  {name:<14} risk {result['risk']:.4f} ({result['n_folds']} folds)")
        else:
            probs = "  ".join(f"P({c})={p:.3f}" for c, p in result["probabilities"].items())
            lines.append(f"  {name:<14} {probs} ({result['n_folds']} folds)")
    return "\n".join(lines)
