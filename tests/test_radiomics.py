"""The radiomics stage and model: the lesion mask, pyradiomics features, the cohort table, the
fold fits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from lungfusion.cli import main
from lungfusion.imaging.lesion import segment_lesion
from lungfusion.imaging.lesion_context import (
    ctpet_offsets,
    lesion_points_physical,
    lung_location,
    semantic_descriptors,
)
from lungfusion.imaging.radiomics import lesion_features, radiomics_settings

SPACING_XYZ = np.array([0.977, 0.977, 3.27])
SHAPE = (16, 32, 32)  # z, y, x
CT_WINDOW, SUV_WINDOW = (-1024.0, 1024.0), (0.0, 20.0)


def _distance_mm(centre_zyx) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    spacing_zyx = SPACING_XYZ[::-1]
    return np.sqrt(
        sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_zyx, spacing_zyx, strict=True))
    )


def lung_roi(*, radius_mm=7.0, centre_zyx=(7.5, 15.5, 15.5), lesion_hu=30.0, seed=0):
    """Aerated lung (-850 HU) holding a spherical solid lesion and, beside it, a 1 mm vessel
    that touches it; the region is the whole box. Returns hu, suv, region, lesion truth."""
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -850.0) + rng.normal(0, 10, SHAPE)
    lesion = _distance_mm(centre_zyx) <= radius_mm
    hu[lesion] = lesion_hu + rng.normal(0, 10, int(lesion.sum()))
    cz, cy, _ = (int(round(c)) for c in centre_zyx)
    hu[cz, cy, :] = np.where(lesion[cz, cy, :], hu[cz, cy, :], 40.0)  # a vessel along x
    suv = np.where(lesion, 6.0, 0.5)
    return hu, suv, np.ones(SHAPE, np.uint8), lesion


def test_the_lesion_mask_is_the_blob_at_the_centre_without_its_vessel():
    hu, _, region, truth = lung_roi()
    mask = segment_lesion(hu, region, SPACING_XYZ[::-1], max_offset_mm=10.0)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.85
    assert not mask[7, 15, :3].any() and not mask[7, 15, -3:].any()  # the vessel's far ends


def test_a_lesion_far_from_the_centre_is_not_taken():
    hu, _, region, _ = lung_roi(radius_mm=4.0, centre_zyx=(7.5, 4.0, 4.0))
    assert not segment_lesion(hu, region, SPACING_XYZ[::-1], max_offset_mm=5.0).any()
    assert segment_lesion(hu, region, SPACING_XYZ[::-1], max_offset_mm=25.0).any()


def test_a_lesion_two_slices_thin_is_found_without_the_opening():
    hu = np.full(SHAPE, -850.0)
    hu[7:9, 12:20, 12:20] = 20.0  # 6.5 mm thick: the opening's ellipsoid spans three slices
    mask = segment_lesion(hu, np.ones(SHAPE, np.uint8), SPACING_XYZ[::-1], max_offset_mm=10.0)
    assert mask.sum() == 2 * 8 * 8


def test_features_of_a_sphere_match_its_volume_and_intensities():
    hu, suv, region, truth = lung_roi(radius_mm=7.0)
    features, status = lesion_features(hu, suv, region, SPACING_XYZ, radiomics_settings({}))
    assert status == "ok"
    volume_ml = 4 / 3 * math.pi * 7.0**3 / 1e3
    assert features["ct_shape_VoxelVolume"] / 1e3 == pytest.approx(volume_ml, rel=0.25)
    assert features["lesion_ml"] == pytest.approx(features["ct_shape_VoxelVolume"] / 1e3)
    assert features["ct_firstorder_Mean"] == pytest.approx(30.0, abs=15.0)
    assert features["pet_firstorder_Maximum"] == pytest.approx(6.0)
    assert {"ct_glcm_Contrast", "ct_glrlm_RunEntropy", "ct_glszm_ZoneEntropy"} <= set(features)
    assert not any(k.startswith("pet_shape") for k in features)  # the shape is the CT's


def test_features_without_pet_or_without_a_lesion():
    hu, _, region, _ = lung_roi()
    features, status = lesion_features(hu, None, region, SPACING_XYZ, radiomics_settings({}))
    assert status == "ok" and not any(k.startswith("pet_") for k in features)
    empty = np.full(SHAPE, -850.0)
    assert lesion_features(empty, None, region, SPACING_XYZ, radiomics_settings({})) == (
        {},
        "no_lesion",
    )
    flat = empty.copy()
    flat[7, 10:20, 10:20] = 20.0  # one slice
    assert lesion_features(flat, None, region, SPACING_XYZ, radiomics_settings({}))[1] == (
        "flat_lesion"
    )


def test_unknown_feature_classes_are_refused():
    with pytest.raises(ValueError, match="texture"):
        radiomics_settings({"ct_features": ["texture"]})
    with pytest.raises(ValueError, match="context"):
        radiomics_settings({"context": ["hilum"]})


def _hot_and_dense_lesion(*, concordant: bool, direction=(0.0, 0.6, 0.8)):
    """A 9 mm solid lesion whose dense part (+60 HU) sits 0.45 radii along ``direction`` and
    whose PET hot spot sits on the same side (``concordant``) or the opposite one."""
    radius, centre = 9.0, np.array((7.5, 15.5, 15.5))
    hu, _, region, lesion = lung_roi(radius_mm=radius, centre_zyx=centre)
    unit = np.asarray(direction) / np.linalg.norm(direction)
    spacing_zyx = SPACING_XYZ[::-1]
    dense_at = centre + 0.45 * radius * unit / spacing_zyx
    hu = np.where(lesion & (_distance_mm(dense_at) <= 0.35 * radius), hu + 60.0, hu)
    hot_at = centre + (1 if concordant else -1) * 0.45 * radius * unit / spacing_zyx
    suv = np.where(lesion, 2.0 + 8.0 * np.exp(-(_distance_mm(hot_at) ** 2) / (2 * 2.7**2)), 0.5)
    return hu, suv, region, lesion


@pytest.mark.parametrize("concordant", [True, False])
def test_the_pet_hot_spot_is_found_on_the_dense_side_or_opposite(concordant):
    hu, suv, _, lesion = _hot_and_dense_lesion(concordant=concordant)
    features = ctpet_offsets(hu, suv, lesion, SPACING_XYZ[::-1])
    if concordant:
        assert features["ctpet_offset_cosine"] > 0.8
        assert features["ctpet_dense_hot_distance"] < 0.3
    else:
        assert features["ctpet_offset_cosine"] < -0.8
        assert features["ctpet_dense_hot_distance"] > 0.6
    assert features["pet_hot_offset"] == pytest.approx(0.45, abs=0.15)  # in lesion radii
    assert features["ct_dense_offset"] == pytest.approx(0.45, abs=0.15)


def test_semantic_descriptors_of_a_part_solid_cavitating_necrotic_lesion():
    hu, _, _, lesion = lung_roi(radius_mm=9.0)
    distance = _distance_mm((7.5, 15.5, 15.5))
    hu = np.where(lesion & (distance > 7.0), -520.0, hu)  # a ground-glass rim
    solid_share = (lesion & (distance <= 7.0)).sum() / lesion.sum()
    hu = np.where(distance <= 3.0, -960.0, hu)  # an air cavity
    cavity_share = (distance <= 3.0).sum() / lesion.sum()
    suv = np.where(lesion, 8.0, 0.5)
    suv = np.where(distance <= 4.0, 0.6, suv)  # a photopenic core
    features = semantic_descriptors(hu, suv, lesion, SPACING_XYZ[::-1])
    assert features["sem_log_volume_ml"] == pytest.approx(
        math.log(lesion.sum() * SPACING_XYZ.prod() / 1e3)
    )
    assert features["sem_solid_fraction"] == pytest.approx(solid_share, abs=0.08)
    assert features["sem_cavity_fraction"] == pytest.approx(cavity_share, abs=0.02)
    assert features["sem_log_suvmax"] == pytest.approx(math.log(8.0))
    assert features["sem_pet_core_ratio"] < 0.3
    uniform = semantic_descriptors(hu, np.where(lesion, 8.0, 0.5), lesion, SPACING_XYZ[::-1])
    assert uniform["sem_pet_core_ratio"] == pytest.approx(1.0)
    assert not any(
        "suv" in k or "pet" in k for k in semantic_descriptors(hu, None, lesion, SPACING_XYZ[::-1])
    )


def _two_lungs(origin=(-100.0, -50.0, 0.0)) -> sitk.Image:
    """Lung labels on a 2 mm grid: right lung x in [-90, -10) mm, left lung [10, 90) mm."""
    labels = np.zeros((20, 50, 100), np.uint8)  # z, y, x
    x = origin[0] + 2.0 * np.arange(100)
    labels[:, 5:45, (x >= -90) & (x < -10)] = 1
    labels[:, 5:45, (x >= 10) & (x < 90)] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(origin)
    image.SetSpacing((2.0, 2.0, 3.0))
    return image


@pytest.mark.parametrize(
    ("x_mm", "fraction", "inner_third"),
    [(-15.0, 0.06, 1.0), (-50.0, 0.5, 0.0), (-85.0, 0.94, 0.0), (70.0, 0.75, 0.0)],
)
def test_the_lesion_location_runs_from_the_mediastinum_to_the_chest_wall(
    x_mm, fraction, inner_third
):
    location = lung_location(_two_lungs(), (x_mm, 0.0, 30.0))
    assert location["loc_lateral_fraction"] == pytest.approx(fraction, abs=0.04)
    assert location["loc_inner_third"] == inner_third


def test_the_lesion_location_comes_from_the_roi_grid_and_is_nan_off_the_lungs():
    lesion = np.zeros(SHAPE, bool)
    lesion[8, 10, 20] = True  # z, y, x
    direction = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    points = lesion_points_physical(lesion, (-80.0, 0.0, 10.0), SPACING_XYZ, direction)
    assert points.tolist() == [pytest.approx([-80.0 + 20 * 0.977, 10 * 0.977, 10.0 + 8 * 3.27])]
    below = lung_location(_two_lungs(), np.array([[-50.0, 0.0, -40.0]]))
    assert math.isnan(below["loc_lateral_fraction"]) and math.isnan(below["loc_inner_third"])


def test_a_large_hilar_mass_centred_mid_lung_reaches_the_inner_third():
    """From the mediastinal edge of the right lung (-12 mm) out to -70 mm: its centre (-41 mm)
    sits beyond the inner third, at 0.37 of the lung's width; its inner edge at 0."""
    points = np.array([[x, 0.0, 30.0] for x in np.linspace(-70.0, -12.0, 30)])
    location = lung_location(_two_lungs(), points)
    assert location["loc_lateral_fraction"] == pytest.approx(0.37, abs=0.03)
    assert location["loc_inner_third"] == 1.0


# --- the stage and the model through the command line ------------------------------------------


def _write_roi(roi_dir: Path, pid: str, hu, suv) -> None:
    scale = lambda a, w: np.clip((a - w[0]) / (w[1] - w[0]), 0, 1).astype(np.float32)  # noqa: E731
    np.savez(
        roi_dir / f"{pid}.npz", ct=scale(hu, CT_WINDOW),
        pet=scale(suv, SUV_WINDOW) if suv is not None else np.zeros(SHAPE, np.float32),
        lungs=np.ones(SHAPE, np.uint8), has_pet=np.bool_(suv is not None),
        spacing=SPACING_XYZ, origin=np.zeros(3),
    )  # fmt: skip
    (roi_dir / f"{pid}.json").write_text(json.dumps({"status": "ok", "has_pet": suv is not None}))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """40 patients whose SQC lesions are larger and hotter; P001 has no PET, P002's ROI file
    is corrupt, P003's ROI stage failed, P004's ROI shows no lesion, P005's lung labels are
    corrupt and P006 has none."""
    root = tmp_path_factory.mktemp("radiomics")
    roi_dir, segment_dir = root / "roi", root / "segment"
    roi_dir.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        pid, label = f"P{i:03d}", ("SQC" if i % 2 else "ADC")
        rows.append({"patient_id": pid, "label": label})
        radius = rng.normal(8.5 if label == "SQC" else 6.0, 0.8)
        hu, suv, _, lesion = lung_roi(radius_mm=radius, seed=i)
        suv = np.where(lesion, 9.0 if label == "SQC" else 5.0, 0.5) + rng.normal(0, 0.3, SHAPE)
        if i == 4:
            hu = np.full(SHAPE, -850.0)
        _write_roi(roi_dir, pid, hu, None if i == 1 else suv)
        if i != 6:
            (segment_dir / pid).mkdir(parents=True)
            sitk.WriteImage(_two_lungs(), str(segment_dir / pid / "lungs.nii.gz"))
    (segment_dir / "P005" / "lungs.nii.gz").write_bytes(b"not a nifti")
    (roi_dir / "P002.npz").write_bytes(b"not an npz")
    (roi_dir / "P003.json").write_text(json.dumps({"status": "failed"}))
    sheet = root / "clinical.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    out = root / "radiomics" / "features.tsv"
    argv = ["radiomics", "--sample-sheet", str(sheet), "--roi-dir", str(roi_dir)]
    argv += ["--segment-dir", str(segment_dir)]
    assert main([*argv, "--out", str(out), "--threads", "2"]) == 0
    return {"root": root, "sheet": sheet, "roi_dir": roi_dir, "features": out}


def test_the_stage_writes_a_row_per_patient_and_names_those_without_features(cohort):
    table = pd.read_csv(cohort["features"], sep="\t", dtype={"patient_id": str})
    assert len(table) == 40
    status = table.set_index("patient_id").status
    failed = ["P002", "P003", "P004", "P005"]
    assert status[failed].to_list() == ["failed", "skipped", "no_lesion", "failed"]
    assert (status.drop(failed) == "ok").all()
    rows = table.set_index("patient_id")
    assert "P002" in rows.error["P002"] and "P002.npz" in rows.error["P002"]
    assert "P005" in rows.error["P005"] and "lungs.nii.gz" in rows.error["P005"]
    assert rows.has_pet["P001"] == False  # noqa: E712
    assert pd.isna(rows.loc["P001", "pet_firstorder_Mean"])
    assert pd.isna(rows.loc["P001", "ctpet_offset_cosine"])  # no PET
    # the ROIs sit at x = 0-31 mm: the left lung's inner quarter
    assert rows.loc["P007", "loc_lateral_fraction"] == pytest.approx(0.1, abs=0.1)
    assert pd.isna(rows.loc["P006", "loc_lateral_fraction"])  # no lung labels: imputed
    assert -1.0 <= rows.loc["P000", "ctpet_offset_cosine"] <= 1.0
    summary = json.loads(cohort["features"].with_suffix(".json").read_text())
    assert summary["counts"] == {"ok": 36, "failed": 2, "skipped": 1, "no_lesion": 1}
    assert summary["patients_without_features"]["failed"] == ["P002", "P005"]


def test_the_model_learns_the_lesion_size_and_uptake_on_every_fold(cohort, tmp_path):
    folds = tmp_path / "folds.tsv"
    params = {"splits": {"n_folds": 2, "validation_fraction": 0.25, "seed": 0}}
    common = ["--params", json.dumps(params)]
    io = ["--sample-sheet", str(cohort["sheet"]), "--roi-dir", str(cohort["roi_dir"])]
    assert main([*common, "splits", *io, "--out", str(folds)]) == 0
    has_pet = pd.read_csv(folds, sep="\t").query("fold == 0").set_index("patient_id").has_pet
    assert not has_pet["P001"]  # the splits read it from the ROI sidecar
    scored = []
    for fold in (0, 1):
        out = tmp_path / f"fold{fold}"
        argv = [*common, "train", "--model", "radiomics", "--fold", str(fold), "--folds"]
        argv += [str(folds), *io, "--radiomics-features", str(cohort["features"])]
        assert main([*argv, "--out-dir", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["modalities"] == ["ct", "pet"]
        assert summary["excluded_missing_modality"]["count"] == 1  # P001 in each fold
        assert "P001" not in pd.read_csv(out / "predictions.tsv", sep="\t").patient_id.to_list()
        assert {"P002", "P003", "P004", "P005"} >= set(summary["imputed_without_features"])
        assert len(summary["features"]) > 100
        predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
        assert list(predictions.columns) == ["patient_id", "fold", "label", "prob_ADC", "prob_SQC"]
        assert np.allclose(predictions[["prob_ADC", "prob_SQC"]].sum(axis=1), 1.0)
        assert (out / "model.joblib").stat().st_size > 0
        assert (out / "val_predictions.tsv").is_file() and (out / "history.tsv").is_file()
        scored.append(predictions)
    pooled = pd.concat(scored)
    ok = pooled[~pooled.patient_id.isin(["P002", "P003", "P004", "P005"])]
    assert roc_auc_score(ok.label == "SQC", ok.prob_SQC) > 0.9


def test_the_semantic_model_fits_the_seven_descriptors(cohort, tmp_path):
    folds = tmp_path / "folds.tsv"
    io = ["--sample-sheet", str(cohort["sheet"]), "--roi-dir", str(cohort["roi_dir"])]
    assert main(["splits", *io, "--out", str(folds)]) == 0
    out = tmp_path / "semantic"
    argv = ["train", "--model", "semantic", "--fold", "0", "--folds", str(folds), *io]
    assert (
        main([*argv, "--radiomics-features", str(cohort["features"]), "--out-dir", str(out)]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "semantic" and summary["model_options"]["C"] == 0.1
    assert summary["features"][:2] == ["sem_log_volume_ml", "sem_solid_fraction"]
    assert len(summary["features"]) == 7
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    ok = predictions[~predictions.patient_id.isin(["P002", "P003", "P004", "P005"])]
    assert roc_auc_score(ok.label == "SQC", ok.prob_SQC) > 0.9  # larger and hotter SQC lesions


@pytest.mark.parametrize("model", ["radiomics", "semantic"])
def test_a_ct_only_lesion_model_reads_no_pet_and_keeps_the_patients_without_it(
    cohort, tmp_path, model
):
    folds = tmp_path / "folds.tsv"
    io = ["--sample-sheet", str(cohort["sheet"]), "--roi-dir", str(cohort["roi_dir"])]
    params = {"train": {model: {"modalities": ["ct"]}}}
    assert main(["--params", json.dumps(params), "splits", *io, "--out", str(folds)]) == 0
    out = tmp_path / model
    argv = ["--params", json.dumps(params), "train", "--model", model, "--fold", "0"]
    argv += ["--folds", str(folds), *io, "--radiomics-features", str(cohort["features"])]
    assert main([*argv, "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modalities"] == ["ct"] and summary["excluded_missing_modality"]["count"] == 0
    assert not any(c.startswith(("pet_", "ctpet_")) or "suv" in c for c in summary["features"])
    if model == "semantic":
        assert summary["features"] == [
            "sem_log_volume_ml", "sem_solid_fraction", "sem_cavity_fraction",
            "loc_lateral_fraction",
        ]  # fmt: skip
    else:
        assert sum(c.startswith("ct_") for c in summary["features"]) > 50
    tested = pd.read_csv(folds, sep="\t").query("fold == 0 and role == 'test'").patient_id
    predicted = pd.read_csv(out / "predictions.tsv", sep="\t").patient_id
    assert set(predicted) == set(tested)  # P001, without PET, is scored where it is tested


def test_the_semantic_model_names_the_missing_descriptors(cohort, tmp_path):
    from lungfusion.estimators.radiomics import fit_radiomics_model

    table = pd.read_csv(cohort["features"], sep="\t").drop(columns=["loc_lateral_fraction"])
    with pytest.raises(ValueError, match="loc_lateral_fraction.*radiomics.context"):
        fit_radiomics_model(table, fit_ids=table.patient_id, task="classification",
                            classes=["ADC", "SQC"], model="semantic")  # fmt: skip


def test_the_model_needs_the_features_table(cohort, tmp_path):
    folds = tmp_path / "folds.tsv"
    io = ["--sample-sheet", str(cohort["sheet"]), "--roi-dir", str(cohort["roi_dir"])]
    assert main(["splits", *io, "--out", str(folds)]) == 0
    argv = ["train", "--model", "radiomics", "--fold", "0", "--folds", str(folds), *io]
    with pytest.raises(ValueError, match="--radiomics-features"):
        main([*argv, "--out-dir", str(tmp_path / "out")])


# --- LUNG1-001: a real hilar tumour against the clinicians' GTV --------------------------------


def test_lung1_lesion_mask_covers_the_clinicians_gtv(fixtures_dir):
    """The default ROI box (64 x 64 x 32) on the GTV's centre of the NSCLC-Radiomics CT: the
    mask holds nearly all of the GTV in the box; at the hilum it also takes some of the vessels
    and mediastinal fat the tumour touches, hence a Dice below the coverage."""
    from scipy import ndimage as ndi

    from lungfusion.imaging.segment import segment_lungs, tumour_inclusive_region
    from lungfusion.ingest.rtstruct import rtstruct_to_mask

    folder = fixtures_dir / "dicom" / "nsclc-radiomics-LUNG1-001"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "ct")))
    ct = reader.Execute()
    gtv = sitk.GetArrayFromImage(rtstruct_to_mask(folder / "rtstruct/1-1.dcm", ct, "GTV-1")) > 0
    labels, _ = segment_lungs(ct, threshold_hu=-320, closing_mm=3.0)
    region = sitk.GetArrayFromImage(tumour_inclusive_region(ct, labels, margin_mm=20.0))
    centre = np.round(ndi.center_of_mass(gtv)).astype(int)
    box = tuple(slice(c - h, c + h) for c, h in zip(centre, (16, 32, 32), strict=True))
    hu = sitk.GetArrayFromImage(ct)[box].astype(np.float32)
    spacing_xyz = np.array(ct.GetSpacing())
    mask, truth = segment_lesion(hu, region[box], spacing_xyz[::-1], max_offset_mm=10.0), gtv[box]
    assert (mask & truth).sum() / truth.sum() >= 0.95
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) >= 0.78
    features, status = lesion_features(hu, None, region[box], spacing_xyz, radiomics_settings({}))
    assert status == "ok"
    assert features["lesion_ml"] == pytest.approx(mask.sum() * spacing_xyz.prod() / 1e3)
    assert 0 < features["ct_firstorder_Median"] < 80  # soft tissue HU


def test_survival_radiomics_model_ranks_the_larger_lesions_at_higher_risk():
    from sksurv.metrics import concordance_index_censored

    from lungfusion.estimators.radiomics import fit_radiomics_model

    rng = np.random.default_rng(3)
    n = 120
    size = rng.normal(2.0, 0.7, n)
    days = rng.exponential(1000 * np.exp(-2.0 * size))
    event = rng.random(n) < 0.8
    table = pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(n)], "survival_days": days, "event": event.astype(int),
        "lesion_ml": size, "ct_firstorder_Mean": rng.normal(size=n),
        "pet_firstorder_Maximum": np.nan,  # every PET value missing: imputed, then constant
    })  # fmt: skip
    model = fit_radiomics_model(table, fit_ids=table.patient_id[:80], task="survival", alpha=1.0)
    risk = model.score(table.iloc[80:])["risk"]
    test = table.iloc[80:]
    cindex = concordance_index_censored(test.event.astype(bool), test.survival_days, risk)[0]
    assert risk.shape == (40,) and cindex > 0.7
