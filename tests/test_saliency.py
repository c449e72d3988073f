"""Occlusion saliency: the map has the ROI's shape, finds what the network reads, per modality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from lungfusion.saliency import cohort_summary, inside_share, modality_saliency  # noqa: E402

SHAPE = (8, 16, 16)  # z, y, x


class ReadsPetCorner(torch.nn.Module):
    """SQC's logit is the PET's mean in one corner box; the CT is ignored."""

    def forward(self, batch):
        evidence = batch["pet"][:, 0, :4, :8, :8].mean(dim=(1, 2, 3)) * 10.0
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def _payload():
    rng = np.random.default_rng(0)
    return {
        "ct": rng.random(SHAPE, dtype=np.float32),
        "pet": (
            rng.random(SHAPE, dtype=np.float32) * 0.2
            + np.pad(np.ones((4, 8, 8)), [(0, 4), (0, 8), (0, 8)]) * 0.8
        ).astype(np.float32),
        "has_pet": np.array(True),
    }


def test_saliency_has_the_rois_shape_and_lies_where_the_network_reads():
    model, payload = ReadsPetCorner().eval(), _payload()
    pet = modality_saliency(
        model, payload, modality="pet", class_index=1, mask_size=4, device="cpu"
    )
    ct = modality_saliency(model, payload, modality="ct", class_index=1, mask_size=4, device="cpu")
    assert pet.shape == ct.shape == SHAPE
    assert np.abs(ct).max() < 1e-6  # the CT does not matter to this network
    corner = np.zeros(SHAPE, bool)
    corner[:4, :8, :8] = True
    assert pet.sum() > 0.05 and inside_share(pet, corner) > 0.99


def test_inside_share_and_the_cohort_summary():
    lesion = np.zeros((2, 2, 2), bool)
    lesion[0] = True
    saliency = np.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, -5.0], [0.0, 0.0]]])
    assert inside_share(saliency, lesion) == pytest.approx(4 / 5)
    assert np.isnan(inside_share(-np.abs(saliency), lesion))
    patients = pd.DataFrame({
        "model": ["early", "early", "late"], "ct_share_in_lesion": [0.2, 0.4, 0.9],
        "pet_share_in_lesion": [0.6, 0.8, 0.5], "pet_share_of_saliency": [0.5, 0.7, 0.1],
    })  # fmt: skip
    summary = cohort_summary(patients)
    assert summary.model.tolist() == ["early", "late"] and summary.n.tolist() == [2, 1]
    assert summary.loc[0, "ct_share_in_lesion"] == pytest.approx(0.3)


def test_a_run_without_image_fusion_networks_writes_empty_tables(tmp_path):
    from lungfusion.saliency import run_saliency

    folds = tmp_path / "folds.tsv"
    folds.write_text(
        "patient_id\tlabel\tfold\trole\thas_ct\thas_pet\nP1\tADC\t0\ttest\tTrue\tTrue\n"
    )
    summary = run_saliency(
        ["ct", "clinical"], train_dir=tmp_path, folds_path=folds, roi_dir=tmp_path,
        out_dir=tmp_path / "saliency", mask_size=8, ct_window=(-1024, 1024), max_offset_mm=10.0,
        device="cpu",
    )  # fmt: skip
    assert summary.empty and (tmp_path / "saliency" / "summary.tsv").is_file()
    assert (tmp_path / "saliency" / "patients.tsv").is_file()
