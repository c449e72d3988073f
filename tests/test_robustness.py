"""Test-time robustness: the PET moves where the sweep says, withheld PET reaches the networks
as zeros and the late-fusion integrator as missing PET submodels, and the summary scores every
level."""

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
from lungfusion.robustness.score import (
    WITHHELD_AS,
    levels,
    run_robustness,
    score_integrator,
    summarise,
)

CLASSES = ["ADC", "SQC"]

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


@pytest.fixture()
def integrated(tmp_path):
    """The late-fusion integrator run on integration's synthetic submodel scores (ct, pet, and
    the clinical submodel that integrate fits itself), its fold models saved."""
    from test_integrate import _folds, _sheet, _write_model

    from lungfusion.config import load_config
    from lungfusion.evaluation.integrate import run_integration
    from lungfusion.folds import read_folds

    rng = np.random.default_rng(0)
    sheet = _sheet(rng)
    folds = _folds(sheet)
    _write_model(tmp_path / "train", "ct", sheet, folds, rng)
    no_pet = folds.patient_id[~folds.has_pet].unique()
    _write_model(tmp_path / "train", "pet", sheet, folds, rng, skip=no_pet)
    folds.to_csv(tmp_path / "folds.tsv", sep="\t", index=False)
    sheet.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    out = tmp_path / "integrate" / "late_logistic"
    run_integration(
        "late_logistic", train_dir=tmp_path / "train", folds_path=tmp_path / "folds.tsv",
        sample_sheet=tmp_path / "clinical.tsv", out_dir=out, submodels=None,
        config=load_config(None),
    )  # fmt: skip
    return {"dir": out, "train": tmp_path / "train", "folds": read_folds(tmp_path / "folds.tsv"),
            "tmp": tmp_path}  # fmt: skip


DROPS = {"misalignment_mm": [5], "rotation_deg": [], "drop_pet_fraction": [0, 0.5, 1], "seed": 2}


def test_the_integrator_unperturbed_gives_its_own_out_of_fold_predictions(integrated):
    scores = score_integrator(
        integrated["dir"], train_dir=integrated["train"], folds=integrated["folds"],
        settings=DROPS, classes=CLASSES,
    )  # fmt: skip
    assert set(scores.perturbation) == {"drop_pet"}  # a shift moves images, not scores
    folds = integrated["folds"]
    n_test = int(((folds.role == "test") & folds.has_pet).sum())
    assert (scores.groupby("level").size() == n_test).all() and len(scores) == 3 * n_test
    still = scores[scores.level == 0].set_index("patient_id")
    own = pd.read_csv(integrated["dir"] / "predictions.tsv", sep="\t", dtype={"patient_id": str})
    own = own.set_index("patient_id").loc[still.index]
    np.testing.assert_allclose(still.prob_SQC, own.prob_SQC, atol=1e-6)
    assert (still.fold == own.fold).all() and (still.label == own.label).all()
    assert set(still.pattern) == {"ct+pet+clinical"} == set(own.pattern)
    half = scores[scores.level == 0.5]
    assert (half.pattern == "ct+clinical").sum() == sum(
        len(withheld(list(part.patient_id), 0.5, seed=2)) for _, part in half.groupby("fold")
    )


def test_withholding_pet_hands_the_patient_to_the_no_pet_pattern_model(integrated):
    """At fraction 1 every test patient is scored by its fold's ``ct+clinical`` integrator on
    the CT and clinical submodels' scores alone, not by the ``ct+pet+clinical`` one."""
    import joblib

    from lungfusion.estimators.integrator import predict_integrator
    from lungfusion.evaluation.integrate import fold_submodel_predictions, score_features

    scores = score_integrator(
        integrated["dir"], train_dir=integrated["train"], folds=integrated["folds"],
        settings=DROPS, classes=CLASSES,
    )  # fmt: skip
    dropped = scores[scores.level == 1].set_index("patient_id")
    kept = scores[scores.level == 0].set_index("patient_id").loc[dropped.index]
    assert set(dropped.pattern) == {"ct+clinical"}
    assert np.abs(dropped.prob_SQC - kept.prob_SQC).max() > 0.01
    for fold, part in dropped.groupby("fold"):
        saved = joblib.load(integrated["dir"] / f"fold{fold}" / "model.joblib")
        no_pet = saved["patterns"]["ct+clinical"]
        assert no_pet["model"] is not None and no_pet["columns"] == ["ct", "clinical"]
        tables = fold_submodel_predictions(integrated["dir"], train_dir=integrated["train"],
                                           fold=int(fold))  # fmt: skip
        features = pd.concat(
            [score_features(tables[s], submodel=s, task="classification", classes=CLASSES)
             for s in ("ct", "clinical")], axis=1,
        ).loc[part.index]  # fmt: skip
        expected = predict_integrator(
            no_pet["model"], features, kind="classification", classes=CLASSES
        )
        np.testing.assert_allclose(part.prob_SQC, expected.prob_SQC, atol=1e-9)


def test_the_summary_lists_the_integrator_with_its_no_pet_note(integrated):
    out = integrated["tmp"] / "robustness"
    summary = run_robustness(
        [], train_dir=integrated["train"], folds_path=integrated["tmp"] / "folds.tsv",
        roi_dir=out, register_dir=out, segment_dir=out, out_dir=out, settings=DROPS,
        roi_settings={}, evaluate_settings={"n_bootstrap": 20, "seed": 0, "ci": 0.95},
        classes=CLASSES, device="cpu", integrator_dirs=[integrated["dir"]],
    )  # fmt: skip
    assert list(summary.model) == ["late_logistic"] * 3
    assert list(summary.level) == [0.0, 0.5, 1.0]
    assert set(summary.withheld_pet) == {WITHHELD_AS["integrator"]}
    assert summary.auroc.iloc[0] > 0.8 and (summary.n == summary.n.iloc[0]).all()
    written = pd.read_csv(out / "scores.tsv", sep="\t")
    assert set(written.model) == {"late_logistic"} and len(written) == 3 * summary.n.iloc[0]
