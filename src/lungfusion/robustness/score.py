"""Score trained CT+PET networks on perturbed test inputs: each fold's model on its own test
patients, as in training, once per perturbation level.

Writes nothing itself; :func:`score_model` returns the predictions table
(``patient_id, fold, label, perturbation, level, prob_<class>...``) that
``lungfusion robustness`` writes and :func:`summarise` turns into AUROC with bootstrap intervals
per model, perturbation and level. A withheld PET reaches a network as zeros with
``has_pet`` false (the input a CT-only patient gives), not as a learned token. The late-fusion
integrators are scored at the ``drop_pet`` levels too (:func:`score_integrator`): there a
withheld PET means the PET-reading submodels' scores are missing, so each fold's integrator
for the pattern without them scores the patient. Imports torch (the networks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungfusion.evaluation.bootstrap import bootstrap_ci
from lungfusion.evaluation.metrics import auroc
from lungfusion.robustness.perturb import misaligned_roi, read_roi_sidecar, withheld, without_pet

log = logging.getLogger(__name__)
PERTURBATIONS = ("shift_mm", "rotation_deg", "drop_pet")
# how a withheld PET reaches each kind of model (the summary's and the report's note)
WITHHELD_AS = {
    "network": "zero PET, has_pet false",
    "integrator": "no-PET pattern model (PET-reading submodels missing)",
}


def levels(settings: dict) -> list[tuple[str, float]]:
    """(perturbation, level) pairs the ``robustness`` settings ask for, in config order."""
    pairs = [("shift_mm", float(v)) for v in settings["misalignment_mm"]]
    pairs += [("rotation_deg", float(v)) for v in settings["rotation_deg"]]
    pairs += [("drop_pet", float(v)) for v in settings["drop_pet_fraction"]]
    return pairs


def _batch(payload: dict, device: str) -> dict:
    import torch

    return {
        "ct": torch.as_tensor(payload["ct"], dtype=torch.float32)[None, None].to(device),
        "pet": torch.as_tensor(payload["pet"], dtype=torch.float32)[None, None].to(device),
        "has_pet": torch.as_tensor([bool(payload["has_pet"])]).to(device),
    }


def score_model(
    model_name: str,
    *,
    train_dir: Path,
    folds: pd.DataFrame,
    roi_dir: Path,
    register_dir: Path,
    segment_dir: Path,
    settings: dict,
    roi_settings: dict,
    classes: list[str],
    device: str = "cpu",
) -> pd.DataFrame:
    """Every fold model of ``model_name`` on its test patients with PET, at every level."""
    import torch

    from lungfusion.training.checkpoint import calibrated, load_checkpoint
    from lungfusion.training.engine import forward_logits

    windows = {"ct_window": roi_settings["ct_window"], "suv_window": roi_settings["suv_window"]}
    rows = []
    for fold in sorted(folds["fold"].unique()):
        fold_dir = train_dir / model_name / f"fold{fold}"
        model, payload = load_checkpoint(fold_dir / "model.pt", device=device)
        test = folds[(folds.fold == fold) & (folds.role == "test") & folds.has_pet]
        patients = test["patient_id"].tolist()
        labels = dict(zip(test["patient_id"], test["label"], strict=True))
        for perturbation, level in levels(settings):
            dropped = (
                withheld(patients, level, seed=settings["seed"])
                if perturbation == "drop_pet"
                else set()
            )
            for patient in patients:
                roi = _perturbed(
                    patient,
                    perturbation,
                    level,
                    dropped,
                    roi_dir,
                    register_dir,
                    segment_dir,
                    settings,
                    windows,
                )
                with torch.no_grad():
                    logits = forward_logits(
                        model, _batch(roi, device), tta=bool(payload.get("tta"))
                    )
                probs = torch.softmax(logits.float().cpu(), dim=1)[0].numpy()
                rows.append({
                    "patient_id": patient, "fold": int(fold), "label": labels[patient],
                    "perturbation": perturbation, "level": level,
                    **{f"prob_{c}": p for c, p in calibrated(fold_dir, classes, probs).items()},
                })  # fmt: skip
        log.info(
            "%s fold %s: %d test patients scored at %d levels",
            model_name,
            fold,
            len(patients),
            len(levels(settings)),
        )
    return pd.DataFrame(rows)


def score_integrator(
    integrator_dir: Path, *, train_dir: Path, folds: pd.DataFrame, settings: dict,
    classes: list[str],
) -> pd.DataFrame:  # fmt: skip
    """Each fold's saved late-fusion integrators on its test patients with PET at every
    ``drop_pet`` level, the same patients withheld as for the networks: a withheld patient's
    PET-reading submodels count as missing, so the fold's no-PET pattern model (or the mean of
    the remaining scores, where the fold had none) scores it. The submodels' own test scores
    are reused, nothing is fit; the misalignment levels do not apply (the integrator reads
    scores, not images). Same columns as :func:`score_model`, plus ``pattern``."""
    import joblib

    from lungfusion.evaluation.integrate import fold_integrator_scores, fold_submodel_predictions

    drops = [level for perturbation, level in levels(settings) if perturbation == "drop_pet"]
    rows = []
    for fold in sorted(folds["fold"].unique()) if drops else []:
        saved = joblib.load(integrator_dir / f"fold{fold}" / "model.joblib")
        tables = fold_submodel_predictions(integrator_dir, train_dir=train_dir, fold=int(fold))
        test = folds[(folds.fold == fold) & (folds.role == "test") & folds.has_pet]
        patients = test["patient_id"].tolist()
        for level in drops:
            dropped = withheld(patients, level, seed=settings["seed"])
            flags = test.set_index("patient_id")[["has_ct", "has_pet"]]
            flags = flags.assign(has_pet=~flags.index.isin(dropped))
            scored = fold_integrator_scores(
                saved, tables, flags, train_dir=train_dir, fold=f"fold{fold}", classes=classes
            )
            labels = test.set_index("patient_id").loc[scored.index, "label"]
            rows.append(
                scored.assign(
                    fold=int(fold), label=labels, perturbation="drop_pet", level=level
                ).rename_axis("patient_id").reset_index()
            )  # fmt: skip
    columns = ["patient_id", "fold", "label", "perturbation", "level",
               *[f"prob_{c}" for c in classes], "pattern"]  # fmt: skip
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def _perturbed(
    patient, perturbation, level, dropped, roi_dir, register_dir, segment_dir, settings, windows
) -> dict:
    if perturbation == "drop_pet":
        npz = roi_dir / f"{patient}.npz"
        if patient in dropped:
            return without_pet(npz)
        with np.load(npz) as roi:
            return {key: roi[key] for key in roi.files}
    return misaligned_roi(
        patient,
        register_dir=register_dir / patient,
        segment_dir=segment_dir / patient,
        roi_sidecar=read_roi_sidecar(roi_dir, patient),
        shift_mm=level if perturbation == "shift_mm" else 0.0,
        rotation_deg=level if perturbation == "rotation_deg" else 0.0,
        seed=settings["seed"],
        **windows,
    )


def summarise(
    scores: pd.DataFrame, *, model: str, classes: list[str], n_bootstrap: int, seed: int, ci: float
) -> pd.DataFrame:
    """AUROC (the second class positive) with a stratified bootstrap interval per
    perturbation and level: ``model, perturbation, level, n, auroc, ci_low, ci_high``."""
    rows = []
    positive = f"prob_{classes[1]}"
    for (perturbation, level), part in scores.groupby(["perturbation", "level"], sort=False):
        known = part[part["label"].isin(classes)]
        y = (known["label"] == classes[1]).to_numpy(int)
        score = known[positive].to_numpy(float)
        value = auroc(y, score)
        interval = bootstrap_ci(
            lambda i, y=y, score=score: {"auroc": auroc(y[i], score[i])},
            y, n_resamples=n_bootstrap, seed=seed, ci=ci,
        )["auroc"]  # fmt: skip
        rows.append({
            "model": model, "perturbation": perturbation, "level": level, "n": len(known),
            "auroc": value, "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def image_fusion_networks(models: list[str]) -> list[str]:
    """The CT+PET networks among ``models`` whose inputs are images only (``mmcaf`` also reads
    the clinical table, the table models no image tensor)."""
    from lungfusion.models import required_modalities

    networks = []
    for name in models:
        try:
            if required_modalities(name) == {"ct", "pet"}:
                networks.append(name)
        except KeyError:  # a table model (clinical, radiomics, semantic): not a network
            continue
    return networks


def run_robustness(
    models: list[str],
    *,
    train_dir: Path,
    folds_path: Path,
    roi_dir: Path,
    register_dir: Path,
    segment_dir: Path,
    out_dir: Path,
    settings: dict,
    roi_settings: dict,
    evaluate_settings: dict,
    classes: list[str],
    device: str,
    integrator_dirs: list[Path] = (),
) -> pd.DataFrame:
    """Score every image CT+PET network of ``models`` at every level, and each late-fusion
    integrator of ``integrator_dirs`` (``results/integrate/{name}``) at the ``drop_pet``
    levels; write ``scores.tsv`` (per patient) and, last, ``summary.tsv`` (AUROC with
    intervals, and how a withheld PET reaches the model) under ``out_dir``."""
    from lungfusion.evaluation.tables import write_tsv
    from lungfusion.folds import read_folds

    folds = read_folds(folds_path)
    tables = {
        name: score_model(
            name,
            train_dir=train_dir,
            folds=folds,
            roi_dir=roi_dir,
            register_dir=register_dir,
            segment_dir=segment_dir,
            settings=settings,
            roi_settings=roi_settings,
            classes=classes,
            device=device,
        )  # fmt: skip
        for name in image_fusion_networks(models)
    }
    for folder in map(Path, integrator_dirs):
        tables[folder.name] = score_integrator(
            folder, train_dir=train_dir, folds=folds, settings=settings, classes=classes
        )
    scores, summaries = [], []
    for name, table in tables.items():
        if table.empty:
            continue
        scores.append(table.assign(model=name))
        summary = summarise(
            table,
            model=name,
            classes=classes,
            n_bootstrap=int(evaluate_settings["n_bootstrap"]),
            seed=int(evaluate_settings["seed"]),
            ci=float(evaluate_settings["ci"]),
        )
        withheld_as = WITHHELD_AS["integrator" if "pattern" in table else "network"]
        summaries.append(summary.assign(withheld_pet=withheld_as))
    columns = ["model", "perturbation", "level", "n", "auroc", "ci_low", "ci_high", "withheld_pet"]
    summary = (
        pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=columns)
    )
    write_tsv(
        pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(), out_dir / "scores.tsv"
    )
    write_tsv(summary, out_dir / "summary.tsv")
    return summary
