"""What the ROI tensors show of the generator's latents: a diagnostic for bench_quality.py.

The image-only oracle is a Bayes classifier on the *latents* (docs/synthetic_cohort.md). How
close a network can come to it depends on how much of each latent survives the rendering at
the pipeline's grid (0.977 x 0.977 x 3.27 mm, a 4-5 mm PET PSF). This module measures each
latent from the ROI by hand, with knowledge of how the generator paints it, and fits two
logistic regressions on the same folds and patients as the networks:

- on the true latents: the finite-sample ceiling of a simple model on perfect features;
- on the measured features: what a simple model gets from what the ROI tensors show.

The gap between the two is what the rendering hides, not what a network fails to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

GGO_HU, SOLID_HU, DENSE_HU, CAVITY_HU = -700.0, -300.0, 70.0, -900.0  # boundaries between parts
MEASURED = ["solid_ratio", "dense_hot_cosine", "log_suvmax", "log_volume", "cavity", "cold_core"]
# how each measurement is compared with its latent: rank correlation or AUROC for a flag
AGREEMENT = {
    "solid_ratio": ("ggo_fraction", "spearman", -1),
    "dense_hot_cosine": ("concordant", "auc", 1),
    "log_suvmax": ("suvmax", "spearman", 1),
    "log_volume": ("diameter_mm", "spearman", 1),
    "cavity": ("cavitation", "auc", 1),
    "cold_core": ("necrosis", "auc", 1),
}


def tumour_mask(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The lesion the box is centred on: per slice, the blob above ground-glass HU inside the
    (hole-filled) lungs nearest the box's axis, kept where it reaches within 3 voxels of it;
    then the largest 3D component."""
    z_size, y_size, x_size = hu.shape
    axis = np.array([y_size // 2, x_size // 2])
    mask = np.zeros(hu.shape, bool)
    for z in range(z_size):
        inside = ndi.binary_fill_holes(ndi.binary_closing(lungs[z], iterations=4))
        labels, n = ndi.label((hu[z] > GGO_HU) & inside)
        if n == 0:
            continue
        nearest = ndi.distance_transform_edt(labels == 0, return_indices=True)[1]
        blob = ndi.binary_fill_holes(labels == labels[tuple(nearest[:, axis[0], axis[1]])])
        if ((np.argwhere(blob) - axis) ** 2).sum(axis=1).min() <= 9:
            mask[z] = blob
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def measure(
    hu: np.ndarray, suv: np.ndarray, lungs: np.ndarray, spacing_zyx: np.ndarray
) -> dict | None:
    """The six measurements of one ROI (HU and SUV arrays, z-y-x), or None without a lesion."""
    tumour = tumour_mask(hu, lungs)
    if not tumour.any():
        return None
    smooth = ndi.median_filter(hu, size=(1, 3, 3))
    solid = tumour & (smooth > SOLID_HU)
    widest = int(np.argmax(tumour.sum(axis=(1, 2))))  # in-plane: the 3.27 mm slices blur z
    centre = np.argwhere(tumour).mean(axis=0)
    dense = solid & (smooth > DENSE_HU)
    dense_centre = np.argwhere(dense).mean(axis=0) if dense.sum() > 3 else centre
    uptake = np.where(tumour, suv, 0.0)
    hot_centre = np.argwhere(uptake >= 0.8 * uptake.max()).mean(axis=0)
    to_dense, to_hot = (dense_centre - centre) * spacing_zyx, (hot_centre - centre) * spacing_zyx
    norms = np.linalg.norm(to_dense) * np.linalg.norm(to_hot)
    inner = tumour & (ndi.distance_transform_edt(tumour, sampling=spacing_zyx) > 2.5)
    suv_max = max(float(uptake.max()), 1e-2)
    return {
        "solid_ratio": float(np.sqrt(solid[widest].sum() / tumour[widest].sum())),
        "dense_hot_cosine": float(to_dense @ to_hot / norms) if norms > 0 else 0.0,
        "log_suvmax": float(np.log(suv_max)),
        "log_volume": float(np.log(tumour.sum())),
        "cavity": float(np.log1p((tumour & (hu < CAVITY_HU)).sum())),
        # a necrotic core is cold: the inner uptake over the peak, inverted
        "cold_core": -float(np.median(suv[inner]) / suv_max) if inner.any() else -1.0,
    }


def _out_of_fold_auc(table: pd.DataFrame, columns: list[str], positive: str) -> float:
    scores, labels = [], []
    for _, fold in table.groupby("fold"):
        fit, test = fold[fold.role != "test"], fold[fold.role == "test"]
        y_fit = (fit.label == positive).to_numpy(int)
        if len(set(y_fit)) < 2 or test.empty:
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
        model.fit(fit[columns].to_numpy(float), y_fit)
        scores += list(model.predict_proba(test[columns].to_numpy(float))[:, 1])
        labels += list((test.label == positive).astype(int))
    return float(roc_auc_score(labels, scores)) if len(set(labels)) > 1 else float("nan")


def information_ladder(
    results: Path, synthetic_dir: Path, config: dict, roi_dir: Path | None = None
) -> dict | None:
    """Logistic regressions on true and on measured latents, and how well each is measured,
    from the ROIs in ``roi_dir`` (default: the pipeline's, ``results/roi``)."""
    folds_path = results / "splits" / "folds.tsv"
    latents_path = synthetic_dir / "ground_truth" / "latents.tsv"
    if not folds_path.is_file() or not latents_path.is_file():
        return None
    folds = pd.read_csv(folds_path, sep="\t", dtype={"patient_id": str})
    folds = folds[folds.has_pet.astype(str).str.lower().isin(["true", "1"])]
    latents = pd.read_csv(latents_path, sep="\t", dtype={"patient_id": str})
    (ct_low, ct_high), (suv_low, suv_high) = config["roi"]["ct_window"], config["roi"]["suv_window"]
    rows = []
    for pid in sorted(set(folds.patient_id)):
        path = Path(roi_dir or results / "roi") / f"{pid}.npz"
        if not path.is_file():
            continue
        with np.load(path) as roi:
            hu = roi["ct"] * (ct_high - ct_low) + ct_low
            suv = roi["pet"] * (suv_high - suv_low) + suv_low
            found = measure(hu, suv, roi["lungs"] > 0, roi["spacing"][::-1])  # spacing is x, y, z
        if found is not None:
            rows.append({"patient_id": pid, **found})
    if not rows:
        return None
    table = (
        pd.DataFrame(rows)
        .merge(latents, on="patient_id")
        .merge(folds[["patient_id", "fold", "role"]], on="patient_id")
    )
    for flag in ("concordant", "cavitation", "necrosis"):
        table[f"{flag}_true"] = (
            table[flag].astype(str).str.lower().isin(["true", "1"]).astype(float)
        )
    table["log_diameter"] = np.log(table.diameter_mm)
    table["log_suvmax_true"] = np.log(table.suvmax)
    true_columns = ["ggo_fraction", "concordant_true", "log_suvmax_true", "log_diameter",
                    "cavitation_true", "necrosis_true"]  # fmt: skip
    agreement, patients = {}, table.drop_duplicates("patient_id")  # a row per patient and fold
    for name, (latent, kind, sign) in AGREEMENT.items():
        truth = patients[f"{latent}_true"] if kind == "auc" else patients[latent]
        measured = sign * patients[name]
        value = roc_auc_score(truth, measured) if kind == "auc" else spearmanr(measured, truth)[0]
        agreement[name] = {"latent": latent, "kind": kind, "value": float(value)}
    positive = config["cohort"]["classes"][-1]
    return {
        "n": len(patients),
        "auc_true_latents": _out_of_fold_auc(table, true_columns, positive),
        "auc_measured": _out_of_fold_auc(table, MEASURED, positive),
        "agreement": agreement,
    }
