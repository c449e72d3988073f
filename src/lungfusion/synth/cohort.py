"""Generate the synthetic PET/CT cohort: DICOM tree, sample sheet and ground truth.

Layout (as TCIA's)::

    out_dir/dicom/<PatientID>/<MM-DD-YYYY>-NA-<StudyDesc>-<nnnnn>/<n>.000000-<SeriesDesc>-<nnnnn>/1-NN.dcm
    out_dir/clinical.tsv          the sample sheet, written last (Snakemake tracks it)
    out_dir/ground_truth/         read by tests and benchmarks only, never by a pipeline stage

Every random draw comes from ``numpy.random.default_rng([seed, patient number, stream])``, so a
patient's files depend only on the seed, its number, its class and whether it has a PET.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lungfusion.artifacts import write_json_atomic, write_text_atomic
from lungfusion.samplesheet import OUR_COLUMNS
from lungfusion.synth import anatomy as anat
from lungfusion.synth import dicom_writer as dw
from lungfusion.synth.ids import patient_ids
from lungfusion.synth.phenotype import (
    CLASSES,
    ORACLE_FEATURES,
    oracle_probabilities,
    sample_latents,
    sample_survival,
)
from lungfusion.synth.presets import Preset, get_preset

log = logging.getLogger(__name__)

# The prior study's CT reaches this much further down: more than the index counts as equal
# coverage, so only the study choice keeps the PET/CT study's CT.
PRIOR_STUDY_EXTRA_MM = 30.0
STUDY_DESCRIPTIONS = ("PET-CT WB", "PETCT Lung", "PET CT FDG", "Chest PET")
# local z range (mm, adult scale) a CT covers: from below the diaphragm to above the apex
CT_LOCAL_Z = (-25.0, 295.0)
# body envelope in local mm (x half width, y from front, y to back incl. table)
BODY_ENVELOPE = (180.0, -130.0, 150.0)


@dataclass
class Grid:
    """An axis-aligned image grid in LPS: origin of voxel (0,0,0), spacing and size in x, y, z."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    def image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        return image

    def as_dict(self) -> dict:
        return {"origin": list(self.origin), "spacing": list(self.spacing), "size": list(self.size)}


def _dicom_float(value: float) -> float:
    """The value that a DS tag written from ``value`` reads back as."""
    return float(dw.format_ds(value))


def _rngs(seed: int, number: int) -> dict[str, np.random.Generator]:
    names = ("phenotype", "anatomy", "geometry", "ct_noise", "pet_noise", "ids")
    return {name: np.random.default_rng([seed, number, i]) for i, name in enumerate(names)}


def _ct_grid(rng: np.random.Generator, preset: Preset) -> tuple[Grid, np.ndarray]:
    """The CT grid and the physical position of the anatomy's local origin (table position)."""
    s = preset.scale
    spacing_xy = _dicom_float(round(rng.uniform(*preset.ct_spacing_mm), 6))
    thickness = _dicom_float(float(rng.choice(preset.ct_thickness_mm)))
    n = preset.ct_size
    fov = n * spacing_xy
    # the anatomy sits off the reconstruction centre by what the field of view leaves free
    free_x = max(0.0, fov / 2 - BODY_ENVELOPE[0] * s)
    free_y = max(0.0, fov / 2 - BODY_ENVELOPE[2] * s)
    centre = np.array(
        [
            rng.uniform(-0.5, 0.5) * free_x,
            rng.uniform(-0.5, 0.5) * free_y,
            rng.uniform(-650.0, -250.0),  # table position
        ]
    )
    z_lo = centre[2] + s * (CT_LOCAL_Z[0] - rng.uniform(0, 15))
    z_hi = centre[2] + s * (CT_LOCAL_Z[1] + rng.uniform(0, 15))
    nz = int(math.ceil((z_hi - z_lo) / thickness))
    origin_xy = -(n - 1) / 2 * spacing_xy
    origin = (_dicom_float(origin_xy), _dicom_float(origin_xy), _dicom_float(z_lo))
    return Grid(origin, (spacing_xy, spacing_xy, thickness), (n, n, nz)), centre


def _pet_grid(rng: np.random.Generator, preset: Preset, ct: Grid) -> Grid:
    """A coarser PET grid with its own field of view and origin, covering the CT's z range."""
    spacing_xy = _dicom_float(round(rng.uniform(*preset.pet_spacing_mm), 5))
    thickness = _dicom_float(float(rng.choice(preset.pet_thickness_mm)))
    n = preset.pet_size
    ct_z_lo = ct.origin[2]
    ct_z_hi = ct.origin[2] + (ct.size[2] - 1) * ct.spacing[2]
    margin_lo, margin_hi = rng.uniform(5, 30, 2) * max(preset.scale, 0.5)
    nz = int(math.ceil((ct_z_hi - ct_z_lo + margin_lo + margin_hi) / thickness))
    origin_xy = -(n - 1) / 2 * spacing_xy + rng.uniform(-3, 3, 2)
    origin = (
        _dicom_float(origin_xy[0]),
        _dicom_float(origin_xy[1]),
        _dicom_float(ct_z_lo - margin_lo),
    )
    return Grid(origin, (spacing_xy, spacing_xy, thickness), (n, n, nz))


def _true_transform(rng: np.random.Generator, centre: np.ndarray) -> sitk.Euler3DTransform:
    """CT point -> PET point of the same anatomy: patient motion between the CT and the PET."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in centre])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angles = axis * math.radians(rng.uniform(1.0, 2.0))  # small: Euler angles ~ rotation vector
    transform.SetRotation(*[float(a) for a in angles])
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    transform.SetTranslation([float(v) for v in direction * rng.uniform(2.0, 5.0)])
    return transform


def _aux_grid(preset: Preset, pet: Grid, centre: np.ndarray) -> Grid:
    """A grid finer than the PET over the body, in CT space, to render the true SUV on."""
    s = preset.scale
    step_xy = pet.spacing[0] * 0.6
    step_z = pet.spacing[2] * 0.6
    lo = centre + s * np.array([-BODY_ENVELOPE[0], BODY_ENVELOPE[1], 0.0]) - 10
    hi = centre + s * np.array([BODY_ENVELOPE[0], BODY_ENVELOPE[2], 0.0]) + 10
    lo[2] = pet.origin[2] - 10
    hi[2] = pet.origin[2] + pet.size[2] * pet.spacing[2] + 10
    size = tuple(
        int(math.ceil((h - low) / st))
        for low, h, st in zip(lo, hi, (step_xy, step_xy, step_z), strict=True)
    )
    return Grid(tuple(float(v) for v in lo), (step_xy, step_xy, step_z), size)


def _render_pet_suv(
    preset: Preset,
    anatomy: anat.Anatomy,
    pet: Grid,
    transform: sitk.Transform,
    rng: np.random.Generator,
) -> np.ndarray:
    """The PET's SUV: true uptake moved by the motion, blurred by the PSF, with noise (z-y-x)."""
    aux = _aux_grid(preset, pet, anatomy.centre)
    labels = anat.render_labels(anatomy, origin=aux.origin, spacing=aux.spacing, size=aux.size)
    suv = anat.suv_image(labels, anatomy, origin=aux.origin, spacing=aux.spacing, size=aux.size)
    reference = pet.image(np.zeros(pet.size[::-1], dtype=np.float32))
    # the PET sees the anatomy at T(p_ct): resampling pulls the CT-space uptake through T^-1
    moved = sitk.Resample(
        aux.image(suv), reference, transform.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    sigma_mm = preset.psf_fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
    sigma_vox = [sigma_mm / pet.spacing[2], sigma_mm / pet.spacing[1], sigma_mm / pet.spacing[0]]
    blurred = anat.gaussian_blur(sitk.GetArrayViewFromImage(moved), sigma_vox, truncate=3.0)
    noise = rng.standard_normal(blurred.shape, dtype=np.float32)
    noise = anat.gaussian_blur(noise, 0.7) * 2.0  # correlated, about unit variance again
    noisy = blurred + preset.pet_noise * np.sqrt(np.clip(blurred, 0, None)) * noise
    return np.clip(noisy, 0.0, None).astype(np.float32)


def _nac_image(suv: np.ndarray) -> np.ndarray:
    """A non-attenuation-corrected look: the body's centre dark, the skin and lungs bright."""
    body = anat.gaussian_blur(suv, 2.0) > 0.15
    depth = ndimage.distance_transform_edt(body, sampling=1.0)
    attenuation = np.exp(-0.08 * depth)
    return (suv * (0.25 + 0.75 * attenuation)).astype(np.float32)


def _thicker_recon(hu: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, Grid]:
    """A second reconstruction: pairs of slices averaged into slices twice as thick, lung kernel."""
    nz = hu.shape[0] // 2
    thick = 0.5 * (hu[0 : 2 * nz : 2] + hu[1 : 2 * nz : 2])
    noise = rng.standard_normal(thick.shape, dtype=np.float32) * np.float32(25.0)
    thick = thick + noise  # sharper kernel: noisier
    z0 = grid.origin[2] + grid.spacing[2] / 2
    origin = (grid.origin[0], grid.origin[1], _dicom_float(z0))
    spacing = (grid.spacing[0], grid.spacing[1], _dicom_float(2 * grid.spacing[2]))
    return thick, Grid(origin, spacing, (grid.size[0], grid.size[1], nz))


def _fused_rgb(hu: np.ndarray, suv_on_ct: np.ndarray) -> np.ndarray:
    grey = np.clip((hu + 1000.0) / 1400.0, 0, 1)
    heat = np.clip(suv_on_ct / 8.0, 0, 1)
    rgb = np.stack([grey * 0.6 + heat * 0.4, grey * 0.6 + heat**2 * 0.3, grey * 0.6], axis=-1)
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _pet_on_ct_slices(suv: np.ndarray, pet: Grid, ct: Grid, picks: list[int]) -> np.ndarray:
    """The PET resampled onto these CT slices only (the band of the CT grid that holds them)."""
    lo, hi = min(picks), max(picks)
    z0 = ct.origin[2] + lo * ct.spacing[2]
    band = Grid((ct.origin[0], ct.origin[1], z0), ct.spacing, (ct.size[0], ct.size[1], hi - lo + 1))
    reference = band.image(np.zeros(band.size[::-1], dtype=np.float32))
    on_band = sitk.Resample(pet.image(suv), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(on_band)[[p - lo for p in picks]]


def _series_folder(number: int, description: str, rng: np.random.Generator) -> str:
    return f"{number}.000000-{description}-{int(rng.integers(10000, 99999)):05d}"


def _write_prior_ct_study(
    out_dir: Path, study: dw.StudyInfo, hu: np.ndarray, grid: Grid, *, uid, seed, series_uids
) -> dict:
    """An earlier CT-only study, as collections often hold beside the PET/CT: its own study,
    frame of reference and date, and a CT reaching further down (a chest-abdomen scan), so the
    CT rules alone would prefer it to the PET/CT study's CT."""
    # its own stream, so the rest of the patient is drawn as without it
    rng = np.random.default_rng([seed[0], sum(map(ord, seed[1])), 7919])
    day = dt.datetime.strptime(study.study_date, "%Y%m%d").date()
    day -= dt.timedelta(days=int(rng.integers(30, 400)))
    prior = replace(
        study,
        study_uid=uid("prior", "study"),
        frame_of_reference_uid=uid("prior", "frame"),
        study_date=day.strftime("%Y%m%d"),
        study_description="CT CHEST ABDOMEN",
        accession=f"{int(rng.integers(10**7, 10**8))}",
    )
    extra = int(np.ceil(PRIOR_STUDY_EXTRA_MM / grid.spacing[2]))
    longer = np.pad(hu, ((extra, 0), (0, 0), (0, 0)), mode="edge")
    origin = (grid.origin[0], grid.origin[1], grid.origin[2] - extra * grid.spacing[2])
    parts = (*seed, "prior_ct")
    info = dw.SeriesInfo(uid("prior", "ct", "series"), 2, "CT CHEST ABD", prior.study_time, parts)
    folder = (
        out_dir / "dicom" / study.patient_id / f"{day.strftime('%m-%d-%Y')}-NA-CTCHESTABDOMEN-"
        f"{int(rng.integers(10000, 99999)):05d}" / _series_folder(2, info.description, rng)
    )
    dw.write_ct_series(
        folder, longer, study=prior, series=info, origin=origin, spacing=grid.spacing
    )
    series_uids["prior_ct"] = info.series_uid
    return {"study_uid": prior.study_uid, "study_date": prior.study_date}


def _write_nifti(array: np.ndarray, grid: Grid, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(grid.image(array), str(path), useCompression=True)


def _phenotype_and_anatomy(
    rngs: dict[str, np.random.Generator], label: str, preset: Preset
) -> tuple[dict, anat.Anatomy, Grid]:
    latents = sample_latents(rngs["phenotype"], label)
    days, event, lp = sample_survival(rngs["phenotype"], latents)
    latents.update(survival_days=days, event=event, cox_linear_predictor=lp)
    ct_grid, centre = _ct_grid(rngs["geometry"], preset)
    anatomy = anat.sample_anatomy(
        rngs["anatomy"],
        latents,
        centre=centre,
        scale=preset.scale,
        tumour_scale=preset.tumour_scale,
    )
    return latents, anatomy, ct_grid


def patient_anatomy(*, number: int, label: str, preset: Preset, seed: int) -> anat.Anatomy:
    """The anatomy ``generate_patient`` draws for patient ``number`` (1-based) of a cohort, in
    the CT's physical space, without writing anything: for diagnostics that render it again."""
    return patient_latents_and_anatomy(number=number, label=label, preset=preset, seed=seed)[1]


def patient_latents_and_anatomy(
    *, number: int, label: str, preset: Preset, seed: int
) -> tuple[dict, anat.Anatomy]:
    """The latents (with survival) and the anatomy of patient ``number``, as ``patient_anatomy``."""
    latents, anatomy, _ = _phenotype_and_anatomy(_rngs(seed, number), label, preset)
    return latents, anatomy


def cohort_labels(n_patients: int, class_prior: dict[str, float], seed: int) -> list[str]:
    """The label of each patient (in order) of the cohort ``generate_cohort`` writes."""
    return _assign_labels(cohort_rng(seed), n_patients, _normalised_prior(class_prior))


def cohort_rng(seed: int) -> np.random.Generator:
    """The cohort-level draws: labels first, then who has no PET."""
    return np.random.default_rng([seed, 0])


def generate_patient(
    *,
    out_dir: Path,
    patient_id: str,
    number: int,
    label: str,
    has_pet: bool,
    preset: Preset,
    seed: int,
    prior_study: bool = False,
) -> dict:
    """Write one patient's study and ground truth; return its latents (and what was written).

    ``prior_study`` adds an earlier CT-only study (see :func:`_write_prior_ct_study`)."""
    rngs = _rngs(seed, number)
    latents, anatomy, ct_grid = _phenotype_and_anatomy(rngs, label, preset)
    labels = anat.render_labels(
        anatomy, origin=ct_grid.origin, spacing=ct_grid.spacing, size=ct_grid.size
    )
    hu = anat.hu_image(
        labels, anatomy, ct_grid.spacing, rngs["ct_noise"], noise_hu=preset.ct_noise_hu
    )

    ids = rngs["ids"]
    uid = lambda *parts: dw.make_uid(seed, patient_id, *parts)  # noqa: E731
    study_day = dt.date(2008, 1, 1) + dt.timedelta(days=int(ids.integers(0, 4000)))
    injection_s = float(ids.uniform(7.5, 14.0) * 3600)
    uptake_s = float(ids.uniform(45, 90) * 60)
    pet_time = dw.format_tm(injection_s + uptake_s)
    ct_time = dw.format_tm(injection_s + uptake_s - ids.uniform(2, 6) * 60)
    study = dw.StudyInfo(
        patient_id=patient_id,
        sex=latents["sex"],
        age=latents["age"],
        weight_kg=latents["weight_kg"],
        size_m=round(float(ids.uniform(1.55, 1.90)), 2),
        study_uid=uid("study"),
        frame_of_reference_uid=uid("frame"),
        study_date=study_day.strftime("%Y%m%d"),
        study_time=dw.format_tm(injection_s + uptake_s - 8 * 60),
        study_description=str(ids.choice(STUDY_DESCRIPTIONS)),
        accession=f"{int(ids.integers(10**7, 10**8))}",
    )
    study_folder = (
        out_dir / "dicom" / patient_id / f"{study_day.strftime('%m-%d-%Y')}-NA-"
        f"{study.study_description.replace(' ', '')}-{int(ids.integers(10000, 99999)):05d}"
    )
    series_uids: dict[str, str] = {}

    def series(role: str, number_: int, description: str, time: str) -> tuple[Path, dw.SeriesInfo]:
        info = dw.SeriesInfo(
            uid(role, "series"), number_, description, time, (seed, patient_id, role)
        )
        series_uids[role] = info.series_uid
        return study_folder / _series_folder(number_, description, ids), info

    # localizer: one coronal projection through the CT volume
    folder, info = series("localizer", 1, "Topogram 0.6 T20s", ct_time)
    projection = hu.mean(axis=1)[::-1]  # rows run from the head down
    top = ct_grid.origin[2] + (ct_grid.size[2] - 1) * ct_grid.spacing[2]
    dw.write_localizer(
        folder,
        projection,
        study=study,
        series=info,
        origin=(ct_grid.origin[0], 0.0, top),
        spacing=(ct_grid.spacing[0], ct_grid.spacing[2]),
    )
    thk = ct_grid.spacing[2]
    folder, info = series("ct", 2, f"CT {thk:g}mm STND", ct_time)
    dw.write_ct_series(
        folder, hu, study=study, series=info, origin=ct_grid.origin, spacing=ct_grid.spacing
    )
    second_recon = bool(ids.random() < 0.4)
    if second_recon:
        thick, thick_grid = _thicker_recon(hu, ct_grid, rngs["ct_noise"])
        folder, info = series("ct_second_recon", 3, f"CT {thick_grid.spacing[2]:g}mm LUNG", ct_time)
        dw.write_ct_series(
            folder,
            thick,
            study=study,
            series=info,
            origin=thick_grid.origin,
            spacing=thick_grid.spacing,
            kernel="LUNG",
        )

    truth = out_dir / "ground_truth" / patient_id
    lungs = anat.lung_side_labels(
        anatomy, labels, origin=ct_grid.origin, spacing=ct_grid.spacing, size=ct_grid.size
    )
    _write_nifti(lungs, ct_grid, truth / "lungs.nii.gz")
    tumour = np.isin(labels, anat.TUMOUR_LABELS).astype(np.uint8)
    _write_nifti(tumour, ct_grid, truth / "tumour.nii.gz")

    record: dict = {"patient_id": patient_id, "has_pet": has_pet, "second_ct_recon": second_recon}
    if prior_study:
        record["prior_study"] = _write_prior_ct_study(
            out_dir, study, hu, ct_grid, uid=uid, seed=(seed, patient_id), series_uids=series_uids
        )
    tumour_phys = anatomy.centre + preset.scale * anatomy.tumour.centre
    record["tumour"] = {
        "centre_mm": tumour_phys.tolist(),
        "radius_mm": anatomy.tumour.radius * preset.scale,
        "voxels": int(tumour.sum()),
        "dense_direction": anatomy.tumour.dense_dir.tolist(),
        "hot_direction": anatomy.tumour.hot_dir.tolist(),
        "side": "right" if anatomy.tumour.centre[0] < 0 else "left",
    }
    record["heart_suv"] = anatomy.heart_suv
    record["ct_grid"] = ct_grid.as_dict()

    if has_pet:
        pet_grid = _pet_grid(rngs["geometry"], preset, ct_grid)
        motion_centre = anatomy.centre + preset.scale * np.array([0.0, 0.0, 150.0])
        transform = _true_transform(rngs["geometry"], motion_centre)
        suv = _render_pet_suv(preset, anatomy, pet_grid, transform, rngs["pet_noise"])
        dose_bq = float(ids.uniform(2.5, 4.5) * 1e6 * latents["weight_kg"])  # ~3.5 MBq/kg
        dose = dw.PetDose(
            injection_time=dw.format_tm(injection_s),
            injection_datetime=study.study_date + dw.format_tm(injection_s),
            total_dose_bq=_dicom_float(dose_bq),
        )
        factor = dw.suv_to_bqml_factor(
            weight_kg=_dicom_float(latents["weight_kg"]), dose=dose, series_time=pet_time
        )
        folder, info = series("pet", 4, "PET AC 3D", pet_time)
        dw.write_pet_series(
            folder,
            suv * factor,
            study=study,
            series=info,
            origin=pet_grid.origin,
            spacing=pet_grid.spacing,
            dose=dose,
        )
        if ids.random() < 0.4:
            folder, info = series("pet_nac", 5, "PET NAC 3D", pet_time)
            dw.write_pet_series(
                folder,
                _nac_image(suv) * factor,
                study=study,
                series=info,
                origin=pet_grid.origin,
                spacing=pet_grid.spacing,
                dose=dose,
                attenuation_corrected=False,
            )
        # the scanner's fusion trusts the DICOM geometry, so the motion shows in the capture
        k = int(round((tumour_phys[2] - ct_grid.origin[2]) / ct_grid.spacing[2]))
        picks = [int(np.clip(k + d, 0, ct_grid.size[2] - 1)) for d in (-2, 0, 2)]
        on_ct = _pet_on_ct_slices(suv, pet_grid, ct_grid, picks)
        folder, info = series("fused", 6, "Fused PET-CT", pet_time)
        dw.write_fused_capture(folder, _fused_rgb(hu[picks], on_ct), study=study, series=info)

        _write_nifti(suv, pet_grid, truth / "pet_suv.nii.gz")
        sitk.WriteTransform(transform, str(truth / "pet_to_ct.tfm"))
        record["pet_grid"] = pet_grid.as_dict()
        record["suv_to_bqml"] = factor
        record["transform"] = {
            "centre_mm": list(transform.GetCenter()),
            "rotation_deg": [
                math.degrees(a)
                for a in (transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ())
            ],
            "translation_mm": list(transform.GetTranslation()),
        }
    record["series_uids"] = series_uids
    record["latents"] = latents
    write_json_atomic(truth / "latents.json", record)
    return record


def _assign_labels(rng: np.random.Generator, n: int, prior: dict[str, float]) -> list[str]:
    """Class counts by largest remainder of n x prior, in a seeded random order."""
    classes = [c for c in CLASSES if prior.get(c, 0) > 0]
    weights = np.array([prior[c] for c in classes], dtype=float)
    expected = weights / weights.sum() * n
    counts = np.floor(expected).astype(int)
    for i in np.argsort(-(expected - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [c for c, k in zip(classes, counts, strict=True) for _ in range(k)]
    return [labels[i] for i in rng.permutation(n)]


def _normalised_prior(class_prior: dict[str, float]) -> dict[str, float]:
    unknown = set(class_prior) - set(CLASSES)
    if unknown:
        raise ValueError(f"class_prior: unknown classes {sorted(unknown)}; known: {list(CLASSES)}")
    total = float(sum(class_prior.values()))
    if total <= 0 or any(v < 0 for v in class_prior.values()):
        raise ValueError(f"class_prior must be non-negative with a positive sum, got {class_prior}")
    return {c: float(class_prior[c]) / total for c in CLASSES if class_prior.get(c, 0) > 0}


def _tsv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def _auc(labels: list[str], probabilities: list[dict], classes: list[str]) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = sorted(set(labels), key=classes.index)
    if len(present) < 2:
        return None
    if len(classes) == 2:
        y = [int(label == classes[1]) for label in labels]
        return float(roc_auc_score(y, [p[classes[1]] for p in probabilities]))
    matrix = np.array([[p[c] for c in present] for p in probabilities])
    matrix /= matrix.sum(axis=1, keepdims=True)
    if len(present) == 2:
        return float(roc_auc_score([int(lab == present[1]) for lab in labels], matrix[:, 1]))
    return float(roc_auc_score(labels, matrix, multi_class="ovr", labels=present))


def _write_oracle(out_dir: Path, records: list[dict], prior: dict[str, float]) -> dict:
    classes = list(prior)
    rows, probabilities = [], {name: [] for name in ORACLE_FEATURES}
    for record in records:
        latents = record["latents"]
        row = {"patient_id": record["patient_id"], "label": latents["label"]}
        for name, features in ORACLE_FEATURES.items():
            p = oracle_probabilities(latents, prior, features)
            probabilities[name].append(p)
            prefix = "p_" if name == "full" else f"p_{name}_"
            row.update({f"{prefix}{c}": round(p[c], 6) for c in classes})
        rows.append(row)
    columns = ["patient_id", "label"] + [
        f"p_{c}" if name == "full" else f"p_{name}_{c}" for name in ORACLE_FEATURES for c in classes
    ]
    write_text_atomic(out_dir / "ground_truth" / "oracle.tsv", _tsv(rows, columns))
    labels = [r["latents"]["label"] for r in records]
    summary = {
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "n_patients": len(records),
        "auc": {name: _auc(labels, probabilities[name], classes) for name in ORACLE_FEATURES},
        "features": {name: list(f) for name, f in ORACLE_FEATURES.items()},
        "note": "P(class | latents) from the generator's own distributions; AUC one-vs-rest "
        "macro for more than two classes",
    }
    write_json_atomic(out_dir / "ground_truth" / "oracle.json", summary)
    return summary


def _generate_one(kwargs: dict) -> dict:
    return generate_patient(**kwargs)


def generate_cohort(
    out_dir: str | Path,
    *,
    preset: str = "default",
    n_patients: int = 60,
    seed: int = 20261123,
    class_prior: dict[str, float] | None = None,
    fraction_without_pet: float = 0.1,
    fraction_with_prior_study: float = 0.0,
    workers: int = 1,
) -> dict:
    """Write the synthetic cohort under ``out_dir`` and return a summary.

    ``dicom/`` and ``ground_truth/`` of a previous run in ``out_dir`` are replaced. The sample
    sheet ``clinical.tsv`` is written last, atomically: its presence marks a complete cohort.

    >>> generate_cohort("resources/synthetic", preset="tiny", n_patients=4, seed=1)  # doctest: +SKIP
    """
    chosen = get_preset(preset)
    if not isinstance(n_patients, int) or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    for name, fraction in (
        ("fraction_without_pet", fraction_without_pet),
        ("fraction_with_prior_study", fraction_with_prior_study),
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    prior = _normalised_prior(class_prior or {"ADC": 0.76, "SQC": 0.24})
    out_dir = Path(out_dir)
    for stale in ("dicom", "ground_truth"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    (out_dir / "clinical.tsv").unlink(missing_ok=True)

    draws = cohort_rng(seed)
    pids = patient_ids(n_patients)
    labels = _assign_labels(draws, n_patients, prior)
    n_without = int(round(fraction_without_pet * n_patients))
    without_pet = set(draws.permutation(n_patients)[:n_without].tolist())
    with_pet = [i for i in range(n_patients) if i not in without_pet]
    n_prior = int(round(fraction_with_prior_study * n_patients))
    prior_study = set(draws.permutation(with_pet)[:n_prior].tolist()) if n_prior else set()
    jobs = [
        {
            "out_dir": out_dir,
            "patient_id": pid,
            "number": i + 1,
            "label": labels[i],
            "has_pet": i not in without_pet,
            "preset": chosen,
            "seed": seed,
            "prior_study": i in prior_study,
        }
        for i, pid in enumerate(pids)
    ]
    if workers == 1:
        records = [_generate_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(_generate_one, jobs))

    latent_rows = [
        {"patient_id": r["patient_id"], "has_pet": int(r["has_pet"]), **r["latents"]}
        for r in records
    ]
    latent_columns = list(latent_rows[0])
    write_text_atomic(out_dir / "ground_truth" / "latents.tsv", _tsv(latent_rows, latent_columns))
    oracle = _write_oracle(out_dir, records, prior)
    summary = {
        "out_dir": str(out_dir),
        "preset": chosen.name,
        "n_patients": n_patients,
        "seed": seed,
        "class_prior": prior,
        "class_counts": {c: labels.count(c) for c in prior},
        "without_pet": sorted(pids[i] for i in without_pet),
        "with_prior_ct_study": sorted(pids[i] for i in prior_study),
        "oracle_auc": oracle["auc"],
    }
    write_json_atomic(out_dir / "ground_truth" / "cohort.json", summary)
    clinical = [{c: r["latents"].get(c, r["patient_id"]) for c in OUR_COLUMNS} for r in records]
    write_text_atomic(out_dir / "clinical.tsv", _tsv(clinical, list(OUR_COLUMNS)))
    return summary
