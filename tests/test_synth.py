"""The synthetic PET/CT cohort: DICOM validity, geometry, SUV, ground truth, determinism."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import dcm2niix_path

from lungfusion.synth import anatomy as anat
from lungfusion.synth import generate_cohort
from lungfusion.synth.anatomy import HU
from lungfusion.synth.dicom_writer import parse_tm
from lungfusion.synth.ids import patient_ids
from lungfusion.synth.phenotype import CLASSES, M_STAGES, SMOKING, T_STAGES

SEED = 7
N_PATIENTS = 4
COHORT_ARGS = dict(
    preset="tiny",
    n_patients=N_PATIENTS,
    seed=SEED,
    class_prior={"ADC": 0.5, "SQC": 0.5},
    fraction_without_pet=0.25,
)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_cohort(out, **COHORT_ARGS)
    return out


def _truth(cohort: Path, pid: str) -> dict:
    return json.loads((cohort / "ground_truth" / pid / "latents.json").read_text())


def _series_dirs(cohort: Path, pid: str) -> dict[str, Path]:
    """Series folder by role, found through the SeriesInstanceUIDs the ground truth records."""
    uids = {v: k for k, v in _truth(cohort, pid)["series_uids"].items()}
    found = {}
    for folder in (cohort / "dicom" / pid).glob("*/*"):
        first = next(folder.glob("*.dcm"))
        uid = pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID
        found[uids[uid]] = folder
    return found


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_grid(image: sitk.Image, grid: dict, atol: float = 1e-3) -> None:
    assert list(image.GetSize()) == grid["size"]
    np.testing.assert_allclose(image.GetSpacing(), grid["spacing"], atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), grid["origin"], atol=atol)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)


def test_patient_ids():
    assert patient_ids(3) == ["SYN0001", "SYN0002", "SYN0003"]
    assert patient_ids(12000)[-1] == "SYN12000"
    with pytest.raises(ValueError, match="n_patients"):
        patient_ids(0)


def test_clinical_sheet(cohort):
    with open(cohort / "clinical.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == [
        "patient_id", "label", "age", "sex", "weight_kg", "smoking", "pack_years",
        "t_stage", "n_stage", "m_stage", "survival_days", "event",
    ]  # fmt: skip
    assert [r["patient_id"] for r in rows] == patient_ids(N_PATIENTS)
    assert sorted(r["label"] for r in rows) == ["ADC", "ADC", "SQC", "SQC"]
    for r in rows:
        assert r["label"] in CLASSES and r["sex"] in ("M", "F") and r["smoking"] in SMOKING
        assert r["t_stage"] in T_STAGES and r["m_stage"] in M_STAGES
        assert int(r["n_stage"]) in (0, 1, 2, 3) and r["event"] in ("0", "1")
        assert 30 <= int(r["age"]) <= 95 and 40 <= float(r["weight_kg"]) <= 140
        assert int(r["survival_days"]) >= 1
        assert (float(r["pack_years"]) == 0) == (r["smoking"] == "never")


def test_every_file_reads_without_warnings(cohort):
    files = sorted((cohort / "dicom").rglob("*.dcm"))
    assert len(files) > 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in files:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.PatientID == path.parts[-4]
            ds.pixel_array  # noqa: B018 - decodes the pixel data


def test_tcia_layout_and_series_roles(cohort):
    without_pet = [p for p in patient_ids(N_PATIENTS) if not _truth(cohort, p)["has_pet"]]
    assert len(without_pet) == 1
    for pid in patient_ids(N_PATIENTS):
        studies = list((cohort / "dicom" / pid).iterdir())
        assert len(studies) == 1
        assert studies[0].name.split("-")[3] == "NA"
        roles = _series_dirs(cohort, pid)
        for folder in roles.values():
            number, rest = folder.name.split(".", 1)
            assert rest.startswith("000000-") and number.isdigit()
            assert all(f.name.startswith("1-") for f in folder.iterdir())
        assert {"ct", "localizer"} <= set(roles)
        has_pet = _truth(cohort, pid)["has_pet"]
        assert ("pet" in roles) == has_pet and ("fused" in roles) == has_pet
        assert "pet_nac" not in roles or has_pet


def test_decoys(cohort):
    seen = set()
    for pid in patient_ids(N_PATIENTS):
        roles = _series_dirs(cohort, pid)
        loc = list(roles["localizer"].glob("*.dcm"))
        assert len(loc) == 1
        ds = pydicom.dcmread(loc[0])
        assert ds.Modality == "CT" and "LOCALIZER" in ds.ImageType
        if "fused" in roles:
            ds = pydicom.dcmread(next(roles["fused"].glob("*.dcm")))
            assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
            assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.shape[-1] == 3
            assert "ImagePositionPatient" not in ds and "PixelSpacing" not in ds
            seen.add("fused")
        if "pet_nac" in roles:
            ds = pydicom.dcmread(next(roles["pet_nac"].glob("*.dcm")))
            assert "ATTN" not in ds.CorrectedImage and "DECY" in ds.CorrectedImage
            seen.add("nac")
        if "ct_second_recon" in roles:
            ct = pydicom.dcmread(next(roles["ct"].glob("*.dcm")))
            second = pydicom.dcmread(next(roles["ct_second_recon"].glob("*.dcm")))
            assert float(second.SliceThickness) == pytest.approx(2 * float(ct.SliceThickness))
            assert second.FrameOfReferenceUID == ct.FrameOfReferenceUID
            seen.add("second")
    assert {"fused", "nac", "second"} <= seen


def test_ct_and_pet_geometry_with_simpleitk(cohort):
    for pid in patient_ids(N_PATIENTS):
        truth = _truth(cohort, pid)
        roles = _series_dirs(cohort, pid)
        ct = _read_series(roles["ct"])
        _assert_grid(ct, truth["ct_grid"])
        assert -1025 <= sitk.GetArrayViewFromImage(ct).min() < -900
        assert 0.7 <= ct.GetSpacing()[0] <= 1.0
        if truth["has_pet"]:
            pet = _read_series(roles["pet"])
            _assert_grid(pet, truth["pet_grid"])
            ct_ds = pydicom.dcmread(next(roles["ct"].glob("*.dcm")), stop_before_pixels=True)
            pet_ds = pydicom.dcmread(next(roles["pet"].glob("*.dcm")), stop_before_pixels=True)
            assert ct_ds.FrameOfReferenceUID == pet_ds.FrameOfReferenceUID
            assert pet.GetSpacing()[0] > 2 * ct.GetSpacing()[0]


def _corners(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    idx = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return np.array(sorted(image.TransformIndexToPhysicalPoint(p) for p in idx))


@pytest.mark.skipif(dcm2niix_path() is None, reason="dcm2niix (PyPI package) not installed")
def test_dcm2niix_gives_the_same_geometry(cohort, tmp_path):
    pid = next(p for p in patient_ids(N_PATIENTS) if _truth(cohort, p)["has_pet"])
    for role in ("ct", "pet"):
        folder = _series_dirs(cohort, pid)[role]
        out = tmp_path / role
        out.mkdir()
        subprocess.run(
            [dcm2niix_path(), "-z", "y", "-b", "n", "-f", role, "-o", str(out), str(folder)],
            check=True,
            capture_output=True,
        )
        converted = sitk.ReadImage(str(out / f"{role}.nii.gz"))
        reference = _read_series(folder)
        assert sorted(converted.GetSize()) == sorted(reference.GetSize())
        np.testing.assert_allclose(_corners(converted), _corners(reference), atol=0.01)
        # same values at the same physical points
        resampled = sitk.Resample(converted, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        a = sitk.GetArrayFromImage(resampled).astype(float)
        b = sitk.GetArrayFromImage(reference).astype(float)
        np.testing.assert_allclose(a, b, atol=1e-3 * max(1.0, np.abs(b).max()))


def test_suv_from_tags_matches_the_generator(cohort):
    for pid in patient_ids(N_PATIENTS):
        if not _truth(cohort, pid)["has_pet"]:
            continue
        folder = _series_dirs(cohort, pid)["pet"]
        truth = sitk.ReadImage(str(cohort / "ground_truth" / pid / "pet_suv.nii.gz"))
        expected = sitk.GetArrayFromImage(truth)
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            assert ds.Units == "BQML" and ds.DecayCorrection == "START"
            assert "ATTN" in ds.CorrectedImage and "DECY" in ds.CorrectedImage
            info = ds.RadiopharmaceuticalInformationSequence[0]
            assert float(info.RadionuclideHalfLife) == pytest.approx(6586.2)
            assert info.RadiopharmaceuticalStartDateTime.endswith(info.RadiopharmaceuticalStartTime)
            elapsed = parse_tm(ds.SeriesTime) - parse_tm(info.RadiopharmaceuticalStartTime)
            assert 45 * 60 <= elapsed <= 90 * 60
            decayed = float(info.RadionuclideTotalDose) * 2 ** (-elapsed / 6586.2)
            suv_factor = float(ds.PatientWeight) * 1000 / decayed
            slope = float(ds.RescaleSlope)
            suv = ds.pixel_array * slope * suv_factor
            k = round(
                (float(ds.ImagePositionPatient[2]) - truth.GetOrigin()[2]) / truth.GetSpacing()[2]
            )
            np.testing.assert_allclose(suv, expected[k], atol=slope * suv_factor * 0.51 + 1e-6)
        assert expected.max() > 2.0  # the tumour or the heart is hot


def test_ground_truth_aligns_with_ct(cohort):
    for pid in patient_ids(N_PATIENTS):
        truth = _truth(cohort, pid)
        ct = _read_series(_series_dirs(cohort, pid)["ct"])
        lungs = sitk.ReadImage(str(cohort / "ground_truth" / pid / "lungs.nii.gz"))
        tumour = sitk.ReadImage(str(cohort / "ground_truth" / pid / "tumour.nii.gz"))
        for mask in (lungs, tumour):
            _assert_grid(mask, truth["ct_grid"])
        hu = sitk.GetArrayFromImage(ct)
        lung = sitk.GetArrayFromImage(lungs)
        assert set(np.unique(lung)) == {0, 1, 2}
        assert np.median(hu[lung > 0]) < -700
        # the right lung (label 1) lies on the patient's right: smaller x in LPS
        xs = np.nonzero(lung)[2]
        labels = lung[np.nonzero(lung)]
        assert xs[labels == 1].mean() < xs[labels == 2].mean()
        t = sitk.GetArrayFromImage(tumour).astype(bool)
        assert t.sum() > 20
        assert np.median(hu[t]) > HU[5] + 200  # denser than lung: ground glass or solid


def parenchyma_measures(hu: np.ndarray, lungs: np.ndarray) -> dict:
    """How a CT's lungs look, for the synthetic cohort's tests and ``bench/bench_segment.py``.

    The parenchyma is the reference lungs eroded by 2 voxels, vessels (above -500 HU) left
    out. Measures: its median HU and 10-90% spread; the dependent density as the posterior
    half's median minus the anterior half's (``ap_halves_hu``) and as the linear trend of HU
    along y over the lungs' anterior-posterior extent (``ap_trend_hu``); the lag-1 in-plane
    correlation of the residual to a 7 x 7 in-plane mean, away from edges and vessels
    (``residual_r``: -0.03 for white noise). Arrays are (z, y, x) with y towards the
    patient's back (LPS).
    """
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    inside = ndimage.binary_erosion(lungs > 0, iterations=2) & (hu < -500)
    values, rows = hu[inside], np.nonzero(inside)[1]
    back = inside & (np.arange(hu.shape[1]) > np.median(rows))[None, :, None]
    residual = hu - ndimage.uniform_filter(hu, size=(1, 7, 7))
    # only where the filter saw parenchyma alone: an edge or a vessel in it would correlate
    core = ndimage.binary_erosion(inside, structure=np.ones((1, 7, 7), dtype=bool))
    pairs = core[:, :, :-1] & core[:, :, 1:]
    return {
        "median_hu": float(np.median(values)),
        "spread_hu": float(np.percentile(values, 90) - np.percentile(values, 10)),
        "ap_halves_hu": float(np.median(hu[back]) - np.median(hu[inside & ~back])),
        "ap_trend_hu": float(np.polyfit(rows, values, 1)[0] * (rows.max() - rows.min())),
        "residual_r": float(
            np.corrcoef(residual[:, :, :-1][pairs], residual[:, :, 1:][pairs])[0, 1]
        ),
    }


def test_lung_parenchyma_looks_like_a_chest_ct(cohort):
    """Near -850 HU as real lungs (not the easy -970 of emphysema-dark phantoms), denser on the
    dependent (posterior) side, heterogeneous, with noise correlated between neighbours."""
    for pid in patient_ids(N_PATIENTS):
        hu = sitk.GetArrayFromImage(_read_series(_series_dirs(cohort, pid)["ct"]))
        lungs = sitk.GetArrayFromImage(
            sitk.ReadImage(str(cohort / "ground_truth" / pid / "lungs.nii.gz"))
        )
        lung = parenchyma_measures(hu, lungs)
        assert -880 < lung["median_hu"] < -830, pid
        assert lung["spread_hu"] > 60, pid  # not uniform
        assert lung["ap_halves_hu"] > 10, pid
        assert 15 < lung["ap_trend_hu"] < 100, pid  # 60 HU drawn; texture and tumour blur it
        assert lung["residual_r"] > 0.4, pid  # a reconstruction kernel's noise, not white noise


def _slab_of_lung() -> np.ndarray:
    """Labels of a slab of lung in soft tissue, with a vessel and a ground-glass nodule."""
    z, y, x = np.mgrid[0:20, 0:128, 0:128]
    labels = np.full(z.shape, anat.SOFT, dtype=np.uint8)
    lung = (np.abs(x - 64) < 56) & (np.abs(y - 64) < 56)
    labels[lung] = anat.LUNG
    labels[lung & ((x - 40) ** 2 + (y - 80) ** 2 < 9)] = anat.VESSEL
    labels[lung & ((x - 88) ** 2 + (y - 40) ** 2 + 9 * (z - 10) ** 2 < 64)] = anat.TUMOUR_GGO
    return labels


@pytest.mark.parametrize("preset", ["tiny", "default", "realistic"])
def test_every_preset_renders_realistic_parenchyma(preset):
    """Each preset's CT pixel size and noise: the parenchyma's level, dependent trend and
    correlated noise, and vessels and ground-glass tumour still stand clear of the densest
    (posterior) parenchyma, so a threshold or a radiologist can tell them apart."""
    from scipy import ndimage

    from lungfusion.synth.presets import get_preset

    p = get_preset(preset)
    labels = _slab_of_lung()
    pixel = sum(p.ct_spacing_mm) / 2
    spacing = (pixel, pixel, max(p.ct_thickness_mm))  # x, y, z
    hu = anat.hu_image(labels, None, spacing, np.random.default_rng(5), noise_hu=p.ct_noise_hu)
    lung = parenchyma_measures(hu, np.isin(labels, (anat.LUNG, anat.VESSEL)))
    assert -875 < lung["median_hu"] < -845
    assert 40 < lung["ap_trend_hu"] < 80  # DEPENDENT_GRADIENT_HU = 60 across the lung
    assert lung["spread_hu"] > 60 and lung["residual_r"] > 0.4
    parenchyma = ndimage.binary_erosion(labels == anat.LUNG, iterations=3)
    densest = np.percentile(hu[parenchyma], 99.9)
    assert densest < -650
    vessel = ndimage.binary_erosion(labels == anat.VESSEL)
    ground_glass = ndimage.binary_erosion(labels == anat.TUMOUR_GGO, iterations=2)
    assert np.median(hu[ground_glass]) > densest + 100
    assert np.median(hu[vessel]) > densest + 500


def test_true_transform(cohort):
    for pid in patient_ids(N_PATIENTS):
        truth = _truth(cohort, pid)
        path = cohort / "ground_truth" / pid / "pet_to_ct.tfm"
        if not truth["has_pet"]:
            assert not path.exists()
            continue
        transform = sitk.ReadTransform(str(path))
        centre = np.array(truth["tumour"]["centre_mm"])
        moved = np.array(transform.TransformPoint(centre.tolist()))
        assert 0.5 < np.linalg.norm(moved - centre) < 12
        assert 1.0 <= np.linalg.norm(truth["transform"]["rotation_deg"]) <= 2.0 + 1e-6
        # the PET hot spot sits where the transform says the tumour is, not where the CT has it
        pet = sitk.ReadImage(str(cohort / "ground_truth" / pid / "pet_suv.nii.gz"))
        suv_at_truth = pet.EvaluateAtPhysicalPoint(moved.tolist(), sitk.sitkLinear)
        assert suv_at_truth > 0.4


def test_oracle(cohort):
    oracle = json.loads((cohort / "ground_truth" / "oracle.json").read_text())
    assert oracle["positive_class"] == "SQC"
    assert set(oracle["auc"]) == {"full", "image", "clinical"}
    with open(cohort / "ground_truth" / "oracle.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == N_PATIENTS
    for r in rows:
        for prefix in ("p_", "p_image_", "p_clinical_"):
            assert float(r[f"{prefix}ADC"]) + float(r[f"{prefix}SQC"]) == pytest.approx(1, abs=1e-5)


def test_oracle_auc_in_range_on_default_sized_cohorts():
    """The oracle on the latents alone (no images): default preset's 60 patients and a larger n."""
    from lungfusion.synth.cohort import _assign_labels, _auc
    from lungfusion.synth.phenotype import ORACLE_FEATURES, oracle_probabilities, sample_latents

    prior = {"ADC": 0.76, "SQC": 0.24}
    for n in (60, 1000):
        rng = np.random.default_rng(20261123)
        labels = _assign_labels(rng, n, prior)
        latents = [sample_latents(rng, label) for label in labels]
        for features in ORACLE_FEATURES.values():
            p = [oracle_probabilities(lat, prior, features) for lat in latents]
            assert 0.6 < _auc(labels, p, ["ADC", "SQC"]) < 0.99


def test_deterministic(cohort, tmp_path):
    again = tmp_path / "again"
    generate_cohort(again, **{**COHORT_ARGS, "n_patients": 2})
    for pid in patient_ids(2):
        first = sorted((cohort / "dicom" / pid).rglob("*.dcm"))
        second = sorted((again / "dicom" / pid).rglob("*.dcm"))
        assert [p.relative_to(cohort) for p in first] == [p.relative_to(again) for p in second]
        for a, b in zip(first, second, strict=True):
            assert a.read_bytes() == b.read_bytes()
    other = tmp_path / "other"
    generate_cohort(other, **{**COHORT_ARGS, "n_patients": 1, "seed": SEED + 1})
    a = pydicom.dcmread(next((cohort / "dicom" / "SYN0001").rglob("*.dcm")))
    b = pydicom.dcmread(next((other / "dicom" / "SYN0001").rglob("*.dcm")))
    assert a.StudyInstanceUID != b.StudyInstanceUID


def test_prior_ct_only_study_is_its_own_study_and_changes_no_ground_truth(cohort, tmp_path):
    """An earlier CT-only study (synthetic.fraction_with_prior_study) is added beside the PET/CT
    study: its own study, frame of reference and earlier date, a CT reaching further down; the
    rest of the cohort, ground truth and PET/CT files, is what it would be without it."""
    with_prior = tmp_path / "with_prior"
    generate_cohort(with_prior, **COHORT_ARGS, fraction_with_prior_study=0.25)
    (pid,) = json.loads((with_prior / "ground_truth" / "cohort.json").read_text())[
        "with_prior_ct_study"
    ]
    truth = _truth(with_prior, pid)
    assert truth["has_pet"]  # only a PET/CT patient gets the decoy study
    roles = _series_dirs(with_prior, pid)
    prior = pydicom.dcmread(next(roles["prior_ct"].glob("*.dcm")), stop_before_pixels=True)
    ct = pydicom.dcmread(next(roles["ct"].glob("*.dcm")), stop_before_pixels=True)
    assert prior.Modality == "CT" and prior.StudyInstanceUID == truth["prior_study"]["study_uid"]
    assert prior.StudyInstanceUID != ct.StudyInstanceUID
    assert prior.FrameOfReferenceUID != ct.FrameOfReferenceUID
    assert prior.StudyDate == truth["prior_study"]["study_date"] < ct.StudyDate
    assert len({p.parent.parent for p in (with_prior / "dicom" / pid).rglob("*.dcm")}) == 2
    prior_z = _read_series(roles["prior_ct"]).GetOrigin()[2]
    assert prior_z < _read_series(roles["ct"]).GetOrigin()[2]  # covers more: a real decoy
    # Nothing else moves: the sheet, the latents and every file of the PET/CT studies.
    for name in ("clinical.tsv", "ground_truth/latents.tsv", "ground_truth/oracle.tsv"):
        assert (with_prior / name).read_bytes() == (cohort / name).read_bytes()
    prior_files = set(roles["prior_ct"].glob("*.dcm"))
    for patient in patient_ids(N_PATIENTS):
        old, new = _truth(cohort, patient), _truth(with_prior, patient)
        new["series_uids"].pop("prior_ct", None)
        new.pop("prior_study", None)
        assert new == old
        files = _patient_files(with_prior, patient, leave_out=prior_files)
        assert files == _patient_files(cohort, patient)
        for file in files:
            assert (with_prior / file).read_bytes() == (cohort / file).read_bytes(), file


def _patient_files(cohort: Path, pid: str, leave_out=frozenset()) -> list[Path]:
    """A patient's DICOM files and ground-truth images, relative to the cohort folder."""
    truth = cohort / "ground_truth" / pid
    found = [
        *truth.glob("*.nii.gz"),
        *truth.glob("*.tfm"),
        *(cohort / "dicom" / pid).rglob("*.dcm"),
    ]
    return sorted(path.relative_to(cohort) for path in found if path not in leave_out)


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        generate_cohort(tmp_path, preset="huge", n_patients=1, seed=1)
    with pytest.raises(ValueError, match="class_prior"):
        generate_cohort(tmp_path, preset="tiny", n_patients=1, seed=1, class_prior={"XYZ": 1.0})
    assert not math.isnan(1.0)


def test_series_encoder_writes_what_save_as_writes(cohort, tmp_path):
    """The fast writer (shared elements encoded once per series) must equal pydicom's own."""
    pid = patient_ids(N_PATIENTS)[0]
    for role in ("ct", "pet"):
        folder = _series_dirs(cohort, pid)[role]
        for path in sorted(folder.glob("*.dcm"))[:3]:
            ds = pydicom.dcmread(path)
            again = tmp_path / f"{role}-{path.name}"
            ds.save_as(again, enforce_file_format=True)
            assert again.read_bytes() == path.read_bytes(), path


@pytest.mark.parametrize(("sigma", "truncate"), [([0.35, 0.6, 0.6], 2.5), (0.7, 4.0), (2.0, 4.0)])
def test_gaussian_blur_equals_scipy(sigma, truncate):
    from scipy import ndimage

    from lungfusion.synth.anatomy import gaussian_blur

    volume = np.random.default_rng(0).normal(size=(6, 30, 24)).astype(np.float32)
    expected = ndimage.gaussian_filter(volume, sigma, truncate=truncate)
    got = gaussian_blur(volume, sigma, truncate=truncate)
    assert got.dtype == np.float32 and got.shape == volume.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_patient_anatomy_rebuilds_the_written_patient(cohort):
    """The diagnostics (bench/ideal_rois.py) re-render a patient from the seed alone."""
    from lungfusion.synth.cohort import patient_anatomy
    from lungfusion.synth.presets import get_preset

    preset = get_preset(COHORT_ARGS["preset"])
    sheet = {
        r["patient_id"]: r for r in csv.DictReader((cohort / "clinical.tsv").open(), delimiter="\t")
    }
    for number, pid in enumerate(patient_ids(N_PATIENTS), start=1):
        truth = _truth(cohort, pid)
        anatomy = patient_anatomy(
            number=number, label=sheet[pid]["label"], preset=preset, seed=SEED
        )
        centre = anatomy.centre + preset.scale * anatomy.tumour.centre
        np.testing.assert_allclose(centre, truth["tumour"]["centre_mm"], atol=1e-9)
        grid = truth["ct_grid"]
        labels = anat.render_labels(
            anatomy, origin=grid["origin"], spacing=grid["spacing"], size=grid["size"]
        )
        written = sitk.GetArrayFromImage(
            sitk.ReadImage(str(cohort / "ground_truth" / pid / "tumour.nii.gz"))
        )
        np.testing.assert_array_equal(np.isin(labels, anat.TUMOUR_LABELS), written > 0)


def test_cohort_labels_and_latents_rebuild_the_written_cohort(cohort):
    """bench/bench_learning_curve.py draws cohorts without writing DICOM: the same labels, in the
    same order, and the same latents as the cohort `generate_cohort` writes."""
    from lungfusion.synth.cohort import cohort_labels, patient_latents_and_anatomy
    from lungfusion.synth.presets import get_preset

    rows = list(csv.DictReader((cohort / "clinical.tsv").open(), delimiter="\t"))
    labels = cohort_labels(N_PATIENTS, COHORT_ARGS["class_prior"], SEED)
    assert labels == [r["label"] for r in rows]
    for number, (row, label) in enumerate(zip(rows, labels, strict=True), start=1):
        latents, _ = patient_latents_and_anatomy(
            number=number, label=label, preset=get_preset("tiny"), seed=SEED
        )
        written = _truth(cohort, row["patient_id"])["latents"]
        for name in ("diameter_mm", "ggo_fraction", "suvmax", "concordant", "n_stage", "age"):
            assert latents[name] == written[name], (row["patient_id"], name)
        assert latents["survival_days"] == int(row["survival_days"])
