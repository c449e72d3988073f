"""Test-time robustness: the PET moves where the sweep says, withheld PET reaches the model as
zeros, and the summary scores every level."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lungfusion.imaging.roi import fixed_box_grid
from lungfusion.robustness.perturb import (
    misaligned_roi,
    shift_direction,
    withheld,
    without_pet,
)
from lungfusion.robustness.score import levels, summarise

SPACING = (1.0, 1.0, 2.0)
SIZE = (64, 64, 32)
WINDOWS = {"ct_window": (-1024, 1024), "suv_window": (0, 20)}


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-10.0, 5.0, -30.0))
    return image


def _patient(tmp_path, hot_zyx=(16, 32, 32)):
    """Registered CT, PET with one hot ball, the region, and the ROI sidecar of a centred box."""
    register, segment = tmp_path / "register" / "P1", tmp_path / "segment" / "P1"
    register.mkdir(parents=True)
    segment.mkdir(parents=True)
    z, y, x = np.indices(SIZE[::-1])
    ct = np.full(SIZE[::-1], -800.0, dtype=np.float32)
    distance = np.sqrt(
        ((z - hot_zyx[0]) * 2.0) ** 2 + (y - hot_zyx[1]) ** 2 + (x - hot_zyx[2]) ** 2
    )
    pet = np.where(distance <= 4.0, 10.0, 1.0).astype(np.float32)
    sitk.WriteImage(_image(ct), str(register / "ct.nii.gz"))
    sitk.WriteImage(_image(pet), str(register / "pet.nii.gz"))
    sitk.WriteImage(_image(np.ones(SIZE[::-1], np.uint8)), str(segment / "region.nii.gz"))
    grid = fixed_box_grid(_image(ct), [32.0, 32.0, 16.0], (32, 32, 16))
    sidecar = {
        "box": {
            "physical_first_mm": list(grid.origin),
            "spacing_mm": list(grid.spacing),
            "size_voxels": list(grid.size),
        }
    }
    return register, segment, sidecar


def _hot_centre_mm(payload: dict) -> np.ndarray:
    pet = payload["pet"]
    centre = np.asarray(ndimage.center_of_mass(pet - pet.min()))  # z, y, x voxels, by uptake
    return centre[::-1] * np.asarray(SPACING)  # x, y, z mm


@pytest.mark.parametrize("shift", [3.0, 6.0])
def test_the_sweep_moves_the_pet_by_the_shift_along_the_patients_direction(tmp_path, shift):
    register, segment, sidecar = _patient(tmp_path)
    common = dict(
        register_dir=register, segment_dir=segment, roi_sidecar=sidecar, seed=3, **WINDOWS
    )
    still = misaligned_roi("P1", shift_mm=0.0, rotation_deg=0.0, **common)
    moved = misaligned_roi("P1", shift_mm=shift, rotation_deg=0.0, **common)
    offset = _hot_centre_mm(moved) - _hot_centre_mm(still)
    np.testing.assert_allclose(offset, shift * shift_direction("P1", seed=3), atol=0.1)
    np.testing.assert_array_equal(moved["ct"], still["ct"])  # the CT and the box stay
    assert moved["pet"].shape == still["pet"].shape == (16, 32, 32)


def test_a_rotation_turns_an_off_centre_hot_spot_about_the_roi_centre(tmp_path):
    register, segment, sidecar = _patient(tmp_path, hot_zyx=(16, 32, 40))  # 8 mm off centre
    common = dict(
        register_dir=register, segment_dir=segment, roi_sidecar=sidecar, seed=0, **WINDOWS
    )
    still = misaligned_roi("P1", shift_mm=0.0, rotation_deg=0.0, **common)
    turned = misaligned_roi("P1", shift_mm=0.0, rotation_deg=20.0, **common)
    centre = (np.array([32, 32, 16]) - 1) / 2.0 * np.asarray(SPACING)  # the box's centre, mm
    before, after = _hot_centre_mm(still) - centre, _hot_centre_mm(turned) - centre
    assert np.linalg.norm(after) == pytest.approx(np.linalg.norm(before), abs=0.5)
    angle = np.degrees(np.arccos(before @ after / np.linalg.norm(before) / np.linalg.norm(after)))
    assert 5.0 < angle <= 20.5  # the axis is random: the spot turns by at most the rotation


def test_withheld_patients_are_seeded_nested_and_sized(tmp_path):
    patients = [f"P{i}" for i in range(10)]
    half, quarter = withheld(patients, 0.5, seed=1), withheld(patients, 0.25, seed=1)
    assert len(half) == 5 and len(quarter) == 2 and quarter <= half
    assert withheld(patients, 0.5, seed=1) == half
    assert withheld(patients, 1.0, seed=1) == set(patients) and not withheld(patients, 0.0, seed=1)
    with pytest.raises(ValueError, match="drop_pet_fraction"):
        withheld(patients, 1.5, seed=1)
    npz = tmp_path / "P1.npz"
    np.savez(npz, ct=np.ones((4, 4, 4), np.float32), pet=np.ones((4, 4, 4), np.float32),
             has_pet=np.array(True))  # fmt: skip
    dropped = without_pet(npz)
    assert not dropped["pet"].any() and not bool(dropped["has_pet"]) and dropped["ct"].all()


def test_levels_and_summary_cover_every_perturbation():
    settings = {
        "misalignment_mm": [0, 5],
        "rotation_deg": [10],
        "drop_pet_fraction": [0.5],
        "seed": 0,
    }
    assert levels(settings) == [
        ("shift_mm", 0.0),
        ("shift_mm", 5.0),
        ("rotation_deg", 10.0),
        ("drop_pet", 0.5),
    ]
    rng = np.random.default_rng(0)
    rows = []
    for perturbation, level in levels(settings):
        for i in range(40):
            label = "SQC" if i % 2 else "ADC"
            signal = (0.8 if label == "SQC" else 0.2) if level == 0 else rng.random()
            rows.append({"patient_id": f"P{i}", "fold": 0, "label": label, "perturbation": perturbation,
                         "level": level, "prob_ADC": 1 - signal, "prob_SQC": signal})  # fmt: skip
    summary = summarise(
        pd.DataFrame(rows), model="early", classes=["ADC", "SQC"], n_bootstrap=50, seed=0, ci=0.95
    )
    assert list(zip(summary.perturbation, summary.level, strict=True)) == levels(settings)
    assert summary.loc[0, "auroc"] == 1.0 and (summary.n == 40).all()
    assert (summary.ci_low <= summary.auroc).all() and (summary.auroc <= summary.ci_high).all()
    assert summary.loc[1, "auroc"] < 0.9  # random scores at the 5 mm level
