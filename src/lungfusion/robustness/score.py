"""Score trained CT+PET networks on perturbed test inputs: each fold's model on its own test
patients, as in training, once per perturbation level.

Writes nothing itself; :func:`score_model` returns the predictions table
(``patient_id, fold, label, perturbation, level, prob_<class>...``) that
``lungfusion robustness`` writes and :func:`summarise` turns into AUROC with bootstrap intervals
per model, perturbation and level. A withheld PET reaches a network as zeros with
``has_pet`` false (the input a CT-only patient gives), not as a learned token.
Imports torch.
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
) -> pd.DataFrame:
    """Score every image CT+PET network of ``models`` at every level; write ``scores.tsv``
    (per patient) and, last, ``summary.tsv`` (AUROC with intervals) under ``out_dir``."""
    from lungfusion.evaluation.tables import write_tsv
    from lungfusion.folds import read_folds

    folds = read_folds(folds_path)
    scores, summaries = [], []
    for name in image_fusion_networks(models):
        table = score_model(
            name, train_dir=train_dir, folds=folds, roi_dir=roi_dir, register_dir=register_dir,
            segment_dir=segment_dir, settings=settings, roi_settings=roi_settings,
            classes=classes, device=device,
        )  # fmt: skip
        scores.append(table.assign(model=name))
        summaries.append(
            summarise(
                table,
                model=name,
                classes=classes,
                n_bootstrap=int(evaluate_settings["n_bootstrap"]),
                seed=int(evaluate_settings["seed"]),
                ci=float(evaluate_settings["ci"]),
            )  # fmt: skip
        )
    columns = ["model", "perturbation", "level", "n", "auroc", "ci_low", "ci_high"]
    summary = (
        pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=columns)
    )
    write_tsv(
        pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(), out_dir / "scores.tsv"
    )
    write_tsv(summary, out_dir / "summary.tsv")
    return summary
