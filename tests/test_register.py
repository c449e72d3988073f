"""Tests of PET-to-CT registration and resampling (lungfusion.imaging.register / .resample)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lungfusion.commands import register as command
from lungfusion.imaging.register import (
    _field_mask,
    crop_to_extent,
    image_centre,
    mask_points,
    register_pet_to_ct,
    transform_error_mm,
    transform_motion,
)
from lungfusion.imaging.resample import (
    resample_mask,
    resample_onto,
    resample_to_spacing,
    target_grid,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
STS = FIXTURES / "dicom" / "sts-001"
needs_sts = pytest.mark.skipif(
    not (STS / "ct-cropped").is_dir(), reason=f"STS_001 fixtures not found under {STS}"
)


def _image(array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _rtstruct_mask(path: Path, reference: sitk.Image) -> sitk.Image:
    """First ROI of an RTSTRUCT as a mask on ``reference`` (closed planar contours, axial)."""
    from matplotlib.path import Path as Polygon

    mask = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    ny, nx = mask.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    pixels = np.c_[xx.ravel(), yy.ravel()]
    for contour in pydicom.dcmread(path).ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        index = np.array([reference.TransformPhysicalPointToContinuousIndex(p) for p in points])
        k = int(round(index[0, 2]))
        if 0 <= k < mask.shape[0]:
            mask[k] |= Polygon(index[:, :2]).contains_points(pixels).reshape(ny, nx)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _moved(image: sitk.Image, transform: sitk.Euler3DTransform) -> sitk.Image:
    """``image`` with its geometry moved by ``transform``: then ``transform`` maps the old
    physical position of each voxel to its new one, with no resampling loss."""
    moved = sitk.Image(image)
    moved.SetOrigin(transform.TransformPoint(image.GetOrigin()))
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    moved.SetDirection((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return moved


def _rigid(centre, degrees, translation) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre))
    transform.SetRotation(*np.radians(degrees))
    transform.SetTranslation(tuple(float(t) for t in translation))
    return transform


# --- resampling -----------------------------------------------------------------------------


def test_target_grid_keeps_origin_direction_and_extent():
    image = _image(np.zeros((10, 40, 30)), spacing=(0.5, 0.5, 2.0), origin=(-7.0, 3.0, 100.0))
    grid = target_grid(image, [1.0, 1.0, 4.0])
    assert grid.GetSize() == (15, 20, 5)
    assert grid.GetOrigin() == image.GetOrigin()
    assert grid.GetDirection() == image.GetDirection()
    with pytest.raises(ValueError, match="spacing"):
        target_grid(image, [1.0, 0.0, 1.0])


def test_resample_to_spacing_keeps_a_linear_ramp():
    z, y, x = np.mgrid[0:12, 0:20, 0:20]
    image = _image(2.0 * x + 0.5 * z, spacing=(1.0, 1.0, 1.0))
    out = resample_to_spacing(image, [0.5, 0.5, 1.0])
    assert out.GetSize() == (40, 40, 12)
    array = sitk.GetArrayFromImage(out)
    # interior voxel at x = 10.5 mm, z = 3 mm (no extrapolation, no smoothing: upsampling)
    assert array[3, 10, 21] == pytest.approx(2.0 * 10.5 + 0.5 * 3, abs=1e-4)
    assert out.GetPixelID() == sitk.sitkFloat32


def test_resample_onto_applies_the_transform_direction():
    array = np.zeros((10, 10, 10))
    array[5, 5, 5] = 1.0
    image = _image(array, spacing=(1.0, 1.0, 1.0))
    # output point p samples the input at p + (2, 0, 0): the bright voxel appears 2 mm lower in x
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    out = sitk.GetArrayFromImage(resample_onto(image, image, shift))
    assert np.unravel_index(out.argmax(), out.shape) == (5, 5, 3)


def test_resample_mask_keeps_labels():
    labels = np.zeros((8, 16, 16), dtype=np.uint8)
    labels[2:6, 3:9, 3:9] = 1
    labels[2:6, 9:14, 3:9] = 2
    mask = sitk.GetImageFromArray(labels)
    mask.SetSpacing((0.7, 0.7, 2.5))
    out = resample_mask(mask, target_grid(mask, [1.1, 1.1, 3.0]))
    values = set(np.unique(sitk.GetArrayViewFromImage(out)).tolist())
    assert values == {0, 1, 2}
    assert out.GetPixelID() == sitk.sitkUInt8


def test_crop_to_extent_and_no_overlap():
    pet = _image(np.ones((40, 40, 40)), spacing=(4.0, 4.0, 4.0), origin=(-80.0, -80.0, -80.0))
    ct = _image(np.zeros((10, 20, 20)), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    crop = crop_to_extent(pet, ct, margin_mm=8.0)
    low = np.array(crop.GetOrigin())
    high = low + (np.array(crop.GetSize()) - 1) * 4.0
    assert np.all(low <= [-8.0, -8.0, -8.0]) and np.all(low > [-16.0, -16.0, -16.0])
    assert np.all(high >= [27.0, 27.0, 26.0])
    far = _image(np.zeros((5, 5, 5)), spacing=(1, 1, 1), origin=(500.0, 500.0, 500.0))
    with pytest.raises(Exception, match="does not overlap"):
        crop_to_extent(pet, far, margin_mm=0.0)


def test_transform_motion_and_error():
    transform = _rigid((10.0, 0.0, 0.0), (0.0, 0.0, 2.0), (3.0, 4.0, 0.0))
    translation, rotation = transform_motion(transform, (10.0, 0.0, 0.0))
    assert translation == pytest.approx(5.0)
    assert rotation == pytest.approx(2.0, abs=1e-6)
    points = np.array([[10.0, 0.0, 0.0], [10.0, 0.0, 50.0]])
    errors = transform_error_mm(transform, sitk.Euler3DTransform(), points)
    assert errors == pytest.approx([5.0, 5.0])


def test_register_rejects_bad_parameters():
    image = _image(np.zeros((4, 4, 4)), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="method"):
        register_pet_to_ct(image, image, method="bspline")
    with pytest.raises(ValueError, match="equal length"):
        register_pet_to_ct(image, image, shrink_factors=[2, 1], smoothing_sigmas_mm=[1.0])
    with pytest.raises(ValueError, match="min_relative_improvement"):
        register_pet_to_ct(image, image, min_relative_improvement=-0.1)


def test_field_mask_drops_or_adds_a_border():
    image = _image(np.zeros((10, 20, 20)), spacing=(2.0, 2.0, 4.0), origin=(5.0, 6.0, 7.0))
    inner = _field_mask(image, 4.0)
    array = sitk.GetArrayViewFromImage(inner)
    assert inner.GetSize() == image.GetSize() and inner.GetOrigin() == image.GetOrigin()
    assert array[1:-1, 2:-2, 2:-2].all() and array.sum() == 8 * 16 * 16
    outer = _field_mask(image, -8.0)
    assert outer.GetSize() == (28, 28, 14)
    assert np.allclose(outer.GetOrigin(), (-3.0, -2.0, -1.0))
    assert sitk.GetArrayViewFromImage(outer).all()


# --- registration on STS_001's real PET/CT ----------------------------------------------------


@pytest.fixture(scope="module")
def sts():
    if not (STS / "ct-cropped").is_dir():
        pytest.skip(f"STS_001 fixtures not found under {STS}")
    ct = _read_series(STS / "ct-cropped")
    pet = _read_series(STS / "pet-suv-cropped")
    gtv = _rtstruct_mask(STS / "ct-cropped-rtstruct.dcm", ct)
    return ct, pet, mask_points(gtv, max_points=5000)


@needs_sts
def test_method_none_is_identity(sts):
    ct, pet, points = sts
    transform, info = register_pet_to_ct(ct, pet, method="none")
    assert transform_error_mm(sitk.Transform(), transform, points).max() == 0.0
    assert info["kept"] is False


# Two of the bench's seeded perturbations (up to 8 mm and 3 degrees about a point off-centre).
STS_PERTURBATIONS = [((0.0, 0.0, 1.5), (4.0, -3.0, 2.0)), ((-1.0, 1.0, 0.0), (-3.0, 2.0, -4.0))]


@pytest.fixture(scope="module")
def sts_recovered(sts):
    """(truth, recovered transform, info) for each of STS_PERTURBATIONS."""
    ct, pet, _ = sts
    results = []
    for degrees, translation in STS_PERTURBATIONS:
        truth = _rigid(np.add(image_centre(ct), (15.0, -10.0, 5.0)), degrees, translation)
        transform, info = register_pet_to_ct(ct, _moved(pet, truth))
        results.append((truth, transform, info))
    return results


@needs_sts
@pytest.mark.parametrize("case", range(len(STS_PERTURBATIONS)))
def test_known_perturbations_of_the_sts_pet_are_recovered(sts, sts_recovered, case):
    _, _, points = sts
    truth, transform, info = sts_recovered[case]
    before = transform_error_mm(truth, sitk.Transform(), points).mean()
    after = transform_error_mm(truth, transform, points).mean()
    assert info["kept"], info["warnings"]
    assert info["metric_after"] < info["metric_before"]
    assert before > 4.0
    # measured 3.62 mm on all 10 seeded perturbations of the bench (2.3 mm with dense sampling
    # and a 10 mm fixed border): the metric's optimum on this real pair lies that far from the
    # DICOM geometry (the floor NOTES.md reports)
    assert after < 4.5, f"tumour error {after:.2f} mm (before {before:.2f} mm)"


@needs_sts
def test_perturbations_converge_to_one_optimum(sts, sts_recovered):
    """Different starting misalignments end at the same transform: convergence, not luck."""
    _, _, points = sts
    (truth_a, found_a, _), (truth_b, found_b, _) = sts_recovered
    # found = truth o correction: undoing each perturbation leaves the same correction
    ends_a = [truth_a.GetInverse().TransformPoint(found_a.TransformPoint(p)) for p in points]
    ends_b = [truth_b.GetInverse().TransformPoint(found_b.TransformPoint(p)) for p in points]
    spread = np.linalg.norm(np.subtract(ends_a, ends_b), axis=1).mean()
    assert spread < 0.5, f"the two recoveries differ by {spread:.2f} mm over the tumour"


@needs_sts
def test_refinement_moves_the_aligned_sts_tumour_at_most_1_mm(sts):
    ct, pet, points = sts
    transform, info = register_pet_to_ct(ct, pet)
    assert transform_error_mm(sitk.Transform(), transform, points).mean() <= 1.0, info


@needs_sts
def test_registration_is_deterministic_for_a_seed(sts):
    ct, pet, _ = sts
    first, _ = register_pet_to_ct(ct, pet, seed=3, max_iterations=15)
    second, _ = register_pet_to_ct(ct, pet, seed=3, max_iterations=15)
    # fixed thread count and seed: equal up to the order of floating-point sums across threads
    np.testing.assert_allclose(first.GetParameters(), second.GetParameters(), rtol=0, atol=1e-6)


@needs_sts
def test_out_of_bounds_refinement_is_rejected(sts):
    ct, pet, points = sts
    truth = _rigid(image_centre(ct), (0.0, 0.0, 0.0), (6.0, 0.0, 0.0))
    transform, info = register_pet_to_ct(ct, _moved(pet, truth), max_translation_mm=1.0)
    assert not info["kept"]
    assert any("beyond the bounds" in w for w in info["warnings"])
    assert transform_error_mm(sitk.Transform(), transform, points).max() == 0.0


# --- the command --------------------------------------------------------------------------------


def _args(tmp_path: Path, patient="P1") -> argparse.Namespace:
    return argparse.Namespace(
        patient=patient, ingest_dir=str(tmp_path / "ingest"), out_dir=str(tmp_path / "register")
    )


def test_command_skips_when_ingest_failed(tmp_path):
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    failed = {"status": "failed", "error": {"message": "missing PatientWeight"}}
    (ingest / "ingest.json").write_text(json.dumps(failed))
    assert command.run(_args(tmp_path), {"register": {}}) == 0
    record = json.loads((tmp_path / "register" / "register.json").read_text())
    assert record["status"] == "skipped"
    assert record["upstream"]["stage"] == "ingest"
    assert "PatientWeight" in record["upstream"]["message"]
    assert not (tmp_path / "register" / "ct.nii.gz").exists()


def test_command_ct_only(tmp_path):
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    ct = _image(np.full((6, 20, 20), 40.0), spacing=(0.8, 0.8, 2.5), origin=(-8.0, -8.0, -50.0))
    sitk.WriteImage(ct, str(ingest / "ct.nii.gz"))
    (ingest / "ingest.json").write_text(json.dumps({"status": "ok", "has_pet": False}))
    assert command.run(_args(tmp_path), {"register": {"target_spacing_mm": [1.6, 1.6, 5.0]}}) == 0
    out = tmp_path / "register"
    record = json.loads((out / "register.json").read_text())
    assert record["status"] == "ok" and record["has_pet"] is False
    assert not (out / "pet.nii.gz").exists() and not (out / "pet_to_ct.tfm").exists()
    resampled = sitk.ReadImage(str(out / "ct.nii.gz"))
    assert resampled.GetSize() == (10, 10, 3)
    assert resampled.GetSpacing() == pytest.approx((1.6, 1.6, 5.0))
    assert resampled.GetOrigin() == pytest.approx(ct.GetOrigin())


def test_command_missing_ct_is_a_failure_for_that_patient(tmp_path):
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    (ingest / "ingest.json").write_text(json.dumps({"status": "ok", "has_pet": False}))
    assert command.run(_args(tmp_path), {"register": {}}) == 0
    record = json.loads((tmp_path / "register" / "register.json").read_text())
    assert record["status"] == "failed"
    assert record["error"]["patient"] == "P1" and "ct.nii.gz" in record["error"]["message"]


@needs_sts
def test_command_on_sts_writes_every_artifact(tmp_path, sts):
    ct, pet, _ = sts
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    sitk.WriteImage(ct, str(ingest / "ct.nii.gz"))
    sitk.WriteImage(pet, str(ingest / "pet_suv.nii.gz"))
    (ingest / "ingest.json").write_text(json.dumps({"status": "ok", "has_pet": True}))
    config = {"register": {"method": "rigid", "target_spacing_mm": [1.954, 1.954, 3.27]}}
    assert command.run(_args(tmp_path, "STS_001"), config) == 0
    out = tmp_path / "register"
    record = json.loads((out / "register.json").read_text())
    assert record["status"] == "ok"
    assert {"metric_before", "metric_after", "kept"} <= set(record["registration"])
    ct_out = sitk.ReadImage(str(out / "ct.nii.gz"))
    pet_out = sitk.ReadImage(str(out / "pet.nii.gz"))
    assert ct_out.GetSize() == pet_out.GetSize() == (99, 101, 59)
    assert ct_out.GetOrigin() == pytest.approx(pet_out.GetOrigin())
    assert sitk.GetArrayViewFromImage(pet_out).max() > 5.0  # the tumour rim (SUV ~7) survives
    transform = sitk.ReadTransform(str(out / "pet_to_ct.tfm"))
    assert len(transform.GetParameters()) == 6


# --- the synthetic cohort (tiny preset) -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    synth = pytest.importorskip("lungfusion.synth")
    out = tmp_path_factory.mktemp("synthetic")
    synth.generate_cohort(out, preset="tiny", n_patients=3, seed=7, fraction_without_pet=0.0)
    return out


def _read_synthetic_pair(cohort: Path, pid: str):
    """CT from its DICOM series (by UID), PET SUV and truth from the generator's ground truth."""
    truth = cohort / "ground_truth" / pid
    uid = json.loads((truth / "latents.json").read_text())["series_uids"]["ct"]
    for folder in sorted({p.parent for p in (cohort / "dicom" / pid).rglob("*.dcm")}):
        if uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
            ct = sitk.ReadImage(list(names), sitk.sitkFloat32)
            break
    else:
        raise AssertionError(f"CT series of {pid} not found")
    pet = sitk.ReadImage(str(truth / "pet_suv.nii.gz"), sitk.sitkFloat32)
    tumour = mask_points(sitk.ReadImage(str(truth / "tumour.nii.gz")), max_points=5000)
    return ct, pet, sitk.ReadTransform(str(truth / "pet_to_ct.tfm")), tumour


@pytest.mark.parametrize("pid", ["SYN0001", "SYN0002", "SYN0003"])
def test_synthetic_motion_is_recovered_within_1_5_mm(tiny_cohort, pid):
    ct, pet, truth, tumour = _read_synthetic_pair(tiny_cohort, pid)
    transform, info = register_pet_to_ct(ct, pet)
    before = transform_error_mm(truth, sitk.Euler3DTransform(), tumour).mean()
    after = transform_error_mm(truth, transform, tumour).mean()
    assert info["kept"], info["warnings"]
    assert after < 1.5, f"{pid}: mean tumour error {after:.2f} mm (before {before:.2f} mm)"
    assert after < before
