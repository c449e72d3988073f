"""Reading CT and PET series: geometry, SUV, spacing checks, tilt, compression, multi-frame.

Real fixtures from ../shared/fixtures; odd cases are derived from them in tmp dirs.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import dcm2niix_path
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from lungfusion.errors import PatientInputError
from lungfusion.ingest.series import read_ct_series, read_pet_suv

LUNG1 = "dicom/nsclc-radiomics-LUNG1-001/ct"
STS = "dicom/sts-001"


def _files(fixtures_dir: Path, folder: str) -> list[Path]:
    return sorted((fixtures_dir / folder).glob("*.dcm")) or sorted(
        (fixtures_dir / folder).iterdir()
    )


@pytest.fixture(scope="module")
def lung1(fixtures_dir):
    return _files(fixtures_dir, LUNG1)


@pytest.fixture(scope="module")
def lung1_image(lung1):
    return read_ct_series(lung1, patient="LUNG1-001")


def _copy_slices(files, out: Path, edit=None) -> list[Path]:
    """Copy DICOM files into ``out`` as new files, optionally editing each dataset."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if edit is not None:
            ds = edit(index, ds) or ds
        target = out / f"im{index:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths


# ---------------------------------------------------------------- real fixtures


def test_lung1_geometry_equals_simpleitk_series_reader(fixtures_dir, lung1_image):
    image, info = lung1_image
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(fixtures_dir / LUNG1)))
    reference = reader.Execute()
    assert image.GetSize() == reference.GetSize() == (512, 512, 134)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayFromImage(reference)
    )
    assert image.GetPixelID() == sitk.sitkInt16
    assert info["tilt_deg"] == 0.0 and info["warnings"] == []


def test_lung1_geometry_equals_dcm2niix(fixtures_dir, lung1_image, tmp_path):
    dcm2niix = dcm2niix_path()
    if dcm2niix is None:
        pytest.skip("dcm2niix (PyPI package) not installed")
    subprocess.run(
        [
            dcm2niix,
            "-z",
            "n",
            "-b",
            "n",
            "-f",
            "ct",
            "-o",
            str(tmp_path),
            str(fixtures_dir / LUNG1),
        ],
        check=True,
        capture_output=True,
    )
    # The NIfTI sform is RAS; LPS = diag(-1, -1, 1) @ RAS.
    header = sitk.ReadImage(str(tmp_path / "ct.nii"))
    nifti = sitk.ImageFileReader()
    nifti.SetFileName(str(tmp_path / "ct.nii"))
    nifti.ReadImageInformation()
    srow = np.array(
        [[float(v) for v in nifti.GetMetaData(f"srow_{axis}").split()] for axis in "xyz"]
    )
    affine_lps = np.diag([-1.0, -1.0, 1.0]) @ srow  # 3x4: voxel (i, j, k, 1) -> LPS mm
    image, _ = lung1_image
    size = np.array(image.GetSize())
    # dcm2niix may flip rows (j); compare physical corners of the whole grid instead of indices.
    ours = np.array(
        [
            image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
            for i in (0, size[0] - 1)
            for j in (0, size[1] - 1)
            for k in (0, size[2] - 1)
        ]
    )
    theirs = np.array(
        [
            affine_lps @ np.array([i, j, k, 1.0])
            for i in (0, size[0] - 1)
            for j in (0, size[1] - 1)
            for k in (0, size[2] - 1)
        ]
    )
    assert header.GetSize() == image.GetSize()
    np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(theirs, axis=0), atol=1e-3)
    np.testing.assert_allclose(
        sorted(np.abs(np.diag(affine_lps[:, :3]))), sorted(image.GetSpacing()), atol=1e-5
    )


def test_sts_pet_suv_matches_cropped_suv_at_same_points(fixtures_dir):
    pet, info = read_pet_suv(_files(fixtures_dir, f"{STS}/pet-raw-bqml"), patient="STS_001")
    assert info["suv_factor"] == pytest.approx(2.429030e-4, rel=1e-5)
    assert "BQML" in info["suv_rule"] and "series time" in info["suv_rule"]
    assert 0.07 < info["slice_gap_jitter_mm"] < 0.1  # the real jitter, accepted
    assert pet.GetSize() == (128, 128, 267) and pet.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayViewFromImage(pet)
    for path in _files(fixtures_dir, f"{STS}/pet-suv-cropped"):
        ds = pydicom.dcmread(path)
        assert ds.Units == "GML"
        step = float(ds.RescaleSlope)  # the cropped copy is quantised by its own slope
        expected = ds.pixel_array * step + float(ds.RescaleIntercept)
        index = pet.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in ds.ImagePositionPatient]
        )
        assert np.allclose(index, np.round(index), atol=1e-3)  # same grid points
        i, j, k = (int(round(v)) for v in index)
        ours = values[k, j : j + ds.Rows, i : i + ds.Columns]
        assert np.abs(ours - expected).max() <= 1.01 * step + 1e-6


def test_ct_slice_map_keys_sop_instance_uid(lung1, lung1_image):
    _, info = lung1_image
    by_uid = {entry["sop_instance_uid"]: entry["index"] for entry in info["slices"]}
    assert sorted(by_uid.values()) == list(range(134))
    # 1-001 is the top slice (z = -282.5), so the last index of an ascending-z volume.
    top = pydicom.dcmread(lung1[0], stop_before_pixels=True).SOPInstanceUID
    assert by_uid[top] == 133


# ---------------------------------------------------------------- derived cases


@pytest.fixture(scope="module")
def few_lung1(lung1):
    return lung1[40:48]  # 8 contiguous slices, 3 mm apart


def test_feet_first_and_shuffled_names_give_same_volume(few_lung1, tmp_path):
    reference, _ = read_ct_series(few_lung1)
    order = [5, 2, 7, 0, 3, 6, 1, 4]

    def feet_first(index, ds):
        ds.PatientPosition = "FFS"
        ds.InstanceNumber = len(few_lung1) - index
        return ds

    shuffled = _copy_slices([few_lung1[i] for i in order], tmp_path, feet_first)
    image, _ = read_ct_series(shuffled)
    assert image.GetOrigin() == reference.GetOrigin()
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference)
    )


def test_per_slice_rescale_applied(few_lung1, tmp_path):
    reference, _ = read_ct_series(few_lung1)

    def rescale(index, ds):
        if index % 2:  # store (HU + 1024) / 2 with slope 2 and intercept -1024 ... exactly
            values = ds.pixel_array.astype(np.int32)
            ds.PixelData = (values // 2).astype(np.uint16).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = 2, -1024 + 0
        return ds

    image, _ = read_ct_series(_copy_slices(few_lung1, tmp_path, rescale))
    ours = sitk.GetArrayFromImage(image).astype(np.int32)
    truth = sitk.GetArrayFromImage(reference).astype(np.int32)
    assert np.abs(ours - truth).max() <= 1  # halving loses at most the odd bit


def test_missing_slice_error_or_resample(few_lung1, tmp_path):
    holed = [f for i, f in enumerate(few_lung1) if i != 4]
    with pytest.raises(PatientInputError) as error:
        read_ct_series(holed, patient="P1", series="S1")
    assert error.value.patient == "P1" and error.value.series == "S1"
    assert "ImagePositionPatient" in error.value.tag and "missing slice" in str(error.value)
    image, info = read_ct_series(holed, missing_slice="resample")
    assert image.GetSize()[2] == 8 and image.GetSpacing()[2] == pytest.approx(3.0)
    assert info["resampled"] == "uneven spacing" and "missing slice" in info["warnings"][0]
    full, _ = read_ct_series(few_lung1)
    a, b = sitk.GetArrayViewFromImage(full), sitk.GetArrayViewFromImage(image)
    # File 4 of the (descending-z) list is slice 3 of the ascending volume.
    np.testing.assert_array_equal(a[2], b[2])  # kept slices unchanged
    np.testing.assert_array_equal(a[4], b[4])
    middle = (a[2].astype(float) + a[4]) / 2  # the lost one linearly interpolated
    assert np.abs(b[3] - middle).max() <= 0.5


def test_gantry_tilt_detected_and_resampled(few_lung1, tmp_path):
    angle = np.radians(15.0)

    def tilt(index, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(angle)), float(np.sin(angle))]
        ds.GantryDetectorTilt = 15.0
        return ds

    tilted = _copy_slices(few_lung1, tmp_path, tilt)
    image, info = read_ct_series(tilted)
    assert info["tilt_deg"] == pytest.approx(15.0, abs=0.1)
    assert info["resampled"] == "gantry tilt" and "tilt" in info["warnings"][0]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    # A pixel's value is found again at its physical position.
    ds = pydicom.dcmread(tilted[3])
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    r, c = 200, 300
    point = (
        np.array(ds.ImagePositionPatient, float)
        + c * float(ds.PixelSpacing[1]) * np.array([1, 0, 0])
        + r * float(ds.PixelSpacing[0]) * np.array([0, np.cos(angle), np.sin(angle)])
    )
    interpolator = sitk.sitkLinear
    value = sitk.Resample(
        image,
        [1, 1, 1],
        sitk.Transform(),
        interpolator,
        point.tolist(),
        [1, 1, 1],
        np.eye(3).flatten().tolist(),
        -5000.0,
        image.GetPixelID(),
    )
    assert abs(sitk.GetArrayViewFromImage(value)[0, 0, 0] - hu[r, c]) < 60


def test_coronal_acquisition_read_at_right_places(lung1_image, tmp_path, lung1):
    """A non-axial series (coronal planes cut from LUNG1-001) is read, not rejected."""
    volume, _ = lung1_image
    array = sitk.GetArrayViewFromImage(volume)  # (z, y, x), z ascending
    template = pydicom.dcmread(lung1[0])
    origin = np.array(volume.GetOrigin())
    sx, sy, sz = volume.GetSpacing()
    paths = []
    for n, y in enumerate(range(200, 206)):
        ds = copy.deepcopy(template)
        plane = array[::-1, y, :]  # rows run from top (z high) to bottom: column dir = -z
        ds.Rows, ds.Columns = plane.shape
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        top_z = origin[2] + sz * (array.shape[0] - 1)
        ds.ImagePositionPatient = [origin[0], origin[1] + y * sy, top_z]
        ds.PixelSpacing = [sz, sx]
        ds.SOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"cor{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    image, info = read_ct_series(paths[::-1])
    assert image.GetSize() == (512, 134, 6) and info["warnings"] == []
    for x, z, k in ((100, 10, 0), (300, 120, 5), (256, 60, 3)):
        point = image.TransformIndexToPhysicalPoint((x, array.shape[0] - 1 - z, k))
        index = volume.TransformPhysicalPointToIndex(point)
        assert image[x, array.shape[0] - 1 - z, k] == volume[index]


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=lambda s: s.name
)
def test_compressed_transfer_syntaxes_decode_equal(few_lung1, tmp_path, syntax):
    from pydicom.pixels import get_encoder  # noqa: PLC0415

    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder installed for {syntax.name}")
    reference, _ = read_ct_series(few_lung1[:3])

    def compress(index, ds):
        ds.compress(syntax)
        return ds

    compressed = _copy_slices(few_lung1[:3], tmp_path, compress)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == syntax
    image, info = read_ct_series(compressed)
    assert info["transfer_syntax"] == str(syntax)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference)
    )


def test_enhanced_multiframe_read(few_lung1, tmp_path):
    reference, _ = read_ct_series(few_lung1)
    datasets = [pydicom.dcmread(f) for f in few_lung1]
    first = copy.deepcopy(datasets[0])
    first.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    first.NumberOfFrames = len(datasets)
    first.PixelData = b"".join(ds.PixelData for ds in datasets)  # frames in descending z
    shared = pydicom.Dataset()
    orientation = pydicom.Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = pydicom.Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    first.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for ds in datasets:
        frame = pydicom.Dataset()
        position = pydicom.Dataset()
        position.ImagePositionPatient = ds.ImagePositionPatient
        rescale = pydicom.Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept = ds.RescaleSlope, ds.RescaleIntercept
        frame.PlanePositionSequence = [position]
        frame.PixelValueTransformationSequence = [rescale]
        frames.append(frame)
    first.PerFrameFunctionalGroupsSequence = frames
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(first, keyword)
    path = tmp_path / "multiframe.dcm"
    first.save_as(path, enforce_file_format=True)
    image, info = read_ct_series([path])
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference)
    )
    assert [entry["frame"] for entry in info["slices"]][:2] == [7, 6]


def test_truncated_and_non_image_files_named(few_lung1, tmp_path):
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(Path(few_lung1[0]).read_bytes()[:200_000])
    with pytest.raises(PatientInputError) as error:
        read_ct_series([truncated, *few_lung1[1:3]], patient="P2", series="S2")
    assert error.value.file == str(truncated) and error.value.patient == "P2"
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM")
    with pytest.raises(PatientInputError, match="cannot read DICOM") as error:
        read_ct_series([text], patient="P2")
    assert error.value.file == str(text)


def test_mixed_series_and_duplicates_rejected(few_lung1, fixtures_dir):
    other = fixtures_dir / "dicom/pydicom-ct-small/CT_small.dcm"
    with pytest.raises(PatientInputError, match="mixed series") as error:
        read_ct_series([*few_lung1[:3], other], patient="P3", series="S3")
    assert error.value.tag.startswith("Rows")
    with pytest.raises(PatientInputError, match="same position"):
        read_ct_series([few_lung1[0], few_lung1[0], few_lung1[1]], patient="P3")


def test_missing_weight_names_patient_file_and_tag(fixtures_dir, tmp_path):
    files = _files(fixtures_dir, f"{STS}/pet-raw-bqml")[100:104]

    def no_weight(index, ds):
        del ds.PatientWeight
        return ds

    stripped = _copy_slices(files, tmp_path, no_weight)
    with pytest.raises(PatientInputError) as error:
        read_pet_suv(stripped, patient="STS_001", series="PET1")
    assert error.value.patient == "STS_001" and error.value.series == "PET1"
    assert "PatientWeight" in error.value.tag and error.value.file
    image, info = read_pet_suv(stripped, weight_fallback_kg=71.0)
    assert info["suv_factor"] == pytest.approx(2.429030e-4, rel=1e-5)
    assert "weight fallback" in info["suv_rule"]
