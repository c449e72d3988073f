"""Where each network looks: occlusion sensitivity per modality on each fold's test patients.

For one patient, one modality at a time, MONAI's :class:`~monai.visualize.OcclusionSensitivity`
slides a box (``saliency.mask_size`` voxels, no overlap) over that modality's ROI tensor and
replaces it with the tensor's mean while the other modality stays as it is; the saliency of a
voxel is how much the probability of the second class (SQC against ADC) falls when its box is
occluded (positive: the region supports that class; negative: it argues against it). Each
fold's network is explained on its own test patients with PET.

The cohort summary asks whether a network looks at the tumour, and with which modality: the
share of the positive saliency inside the lesion (the radiomics stage's lesion: the CT blob at
the ROI's centre, :func:`lungfusion.imaging.lesion.segment_lesion`) per modality, and the PET's
share of all positive saliency. Imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungfusion.artifacts import atomic_path
from lungfusion.imaging.lesion import segment_lesion
from lungfusion.imaging.roi import unscale

log = logging.getLogger(__name__)
MODALITIES = ("ct", "pet")
SHARES = ("ct_share_in_lesion", "pet_share_in_lesion", "pet_share_of_saliency")


def _one_modality(model, batch: dict, modality: str):
    """The network as a function of one modality's tensor, the other held fixed (MONAI's
    visualisers take a model of one tensor)."""
    import torch

    class OneModality(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            n = x.shape[0]
            fixed = {k: v.expand(n, *v.shape[1:]) for k, v in batch.items()}
            return self.model({**fixed, modality: x})

    return OneModality()


def modality_saliency(
    model, payload: dict, *, modality: str, class_index: int, mask_size: int, device: str
) -> np.ndarray:
    """Occlusion saliency (z, y, x) of ``modality``: the fall of class ``class_index``'s
    probability when each box of that modality is occluded."""
    import torch
    from monai.visualize import OcclusionSensitivity

    batch = {
        "ct": torch.as_tensor(payload["ct"], dtype=torch.float32)[None, None].to(device),
        "pet": torch.as_tensor(payload["pet"], dtype=torch.float32)[None, None].to(device),
        "has_pet": torch.as_tensor([bool(payload["has_pet"])]).to(device),
    }
    wrapped = _one_modality(model, batch, modality).eval()
    occlusion = OcclusionSensitivity(
        wrapped, mask_size=mask_size, n_batch=32, verbose=False, mode="mean_img", overlap=0.0,
        activate=lambda logits: torch.softmax(logits, dim=1),  # its own default is a sigmoid
    )  # fmt: skip
    with torch.no_grad():
        unoccluded = torch.softmax(wrapped(batch[modality]).float(), dim=1)[0, class_index]
        occluded, _ = occlusion(batch[modality])
    return (unoccluded - occluded[0, class_index]).cpu().numpy().astype(np.float32)


def lesion_of(payload: dict, *, ct_window, max_offset_mm: float) -> np.ndarray:
    """The lesion at the ROI's centre (z, y, x), as the radiomics stage finds it."""
    hu = unscale(payload["ct"], ct_window)
    spacing_zyx = np.asarray(payload["spacing"], dtype=float)[::-1]
    return segment_lesion(hu, payload["lungs"], spacing_zyx, max_offset_mm=max_offset_mm)


def inside_share(saliency: np.ndarray, lesion: np.ndarray) -> float:
    """The share of the positive saliency inside ``lesion`` (NaN when none is positive)."""
    positive = np.clip(saliency, 0.0, None)
    total = float(positive.sum())
    return float(positive[lesion].sum() / total) if total > 0 else float("nan")


def saliency_png(path: Path, payload: dict, maps: dict, lesion: np.ndarray, title: str) -> Path:
    """CT and PET through the lesion's centre (or the ROI's), each with its saliency over it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = int(np.argwhere(lesion)[:, 0].mean()) if lesion.any() else payload["ct"].shape[0] // 2
    figure = Figure(figsize=(6.0, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    limit = max(float(np.abs(m[k]).max()) for m in maps.values()) or 1.0
    for ax, modality in zip(figure.subplots(1, 2), MODALITIES, strict=True):
        ax.imshow(payload[modality][k], cmap="gray", vmin=0, vmax=1)
        ax.imshow(maps[modality][k], cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.5)
        if lesion[k].any():
            ax.contour(lesion[k], levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(modality.upper(), fontsize=9)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    return path


def explain_model(
    model_name: str,
    *,
    train_dir: Path,
    folds: pd.DataFrame,
    roi_dir: Path,
    out_dir: Path,
    mask_size: int,
    ct_window,
    max_offset_mm: float,
    device: str,
) -> pd.DataFrame:
    """Saliency of every fold's network on its test patients with PET: one PNG and one row
    (lesion shares, totals) per patient."""
    from lungfusion.training.checkpoint import load_checkpoint

    rows = []
    for fold in sorted(folds["fold"].unique()):
        model, _ = load_checkpoint(
            train_dir / model_name / f"fold{fold}" / "model.pt", device=device
        )
        test = folds[(folds.fold == fold) & (folds.role == "test") & folds.has_pet]
        for patient in test["patient_id"]:
            with np.load(roi_dir / f"{patient}.npz") as roi:
                payload = {key: roi[key] for key in roi.files}
            maps = {
                modality: modality_saliency(
                    model,
                    payload,
                    modality=modality,
                    class_index=1,
                    mask_size=mask_size,
                    device=device,
                )  # fmt: skip
                for modality in MODALITIES
            }
            lesion = lesion_of(payload, ct_window=ct_window, max_offset_mm=max_offset_mm)
            saliency_png(out_dir / model_name / f"{patient}.png", payload, maps, lesion,
                         f"{patient}: {model_name} (fold {fold})")  # fmt: skip
            totals = {m: float(np.clip(maps[m], 0, None).sum()) for m in MODALITIES}
            rows.append({
                "model": model_name, "fold": int(fold), "patient_id": patient,
                "lesion_voxels": int(lesion.sum()),
                **{f"{m}_share_in_lesion": inside_share(maps[m], lesion) for m in MODALITIES},
                "pet_share_of_saliency": totals["pet"] / (sum(totals.values()) or np.nan),
            })  # fmt: skip
    return pd.DataFrame(rows)


def cohort_summary(patients: pd.DataFrame) -> pd.DataFrame:
    """Per model: patients explained, and the median of each share over them."""
    summary = patients.groupby("model", sort=False)[list(SHARES)].median().reset_index()
    summary.insert(1, "n", patients.groupby("model", sort=False).size().to_numpy())
    return summary


def run_saliency(
    models: list[str],
    *,
    train_dir: Path,
    folds_path: Path,
    roi_dir: Path,
    out_dir: Path,
    mask_size: int,
    ct_window,
    max_offset_mm: float,
    device: str,
) -> pd.DataFrame:
    """Explain every image CT+PET network of ``models``; write ``patients.tsv``, the PNGs and,
    last, ``summary.tsv`` under ``out_dir``; returns the summary."""
    from lungfusion.evaluation.tables import write_tsv
    from lungfusion.folds import read_folds
    from lungfusion.robustness.score import image_fusion_networks

    folds = read_folds(folds_path)
    tables = [
        explain_model(
            name,
            train_dir=train_dir,
            folds=folds,
            roi_dir=roi_dir,
            out_dir=out_dir,
            mask_size=mask_size,
            ct_window=ct_window,
            max_offset_mm=max_offset_mm,
            device=device,
        )  # fmt: skip
        for name in image_fusion_networks(models)
    ]
    columns = ["model", "fold", "patient_id", "lesion_voxels", *SHARES]
    patients = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
    write_tsv(patients, out_dir / "patients.tsv")
    summary = cohort_summary(patients)
    write_tsv(summary, out_dir / "summary.tsv")
    log.info("saliency of %d networks on %d patient-models", len(tables), len(patients))
    return summary
