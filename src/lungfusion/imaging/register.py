"""Rigid (or affine) refinement of a PET onto its CT by Mattes mutual information.

PET and CT of one PET/CT study already share a frame of reference, so the search starts from
the DICOM geometry (identity in physical space) and only refines it, within bounds:

1. The PET is cropped to the CT's extent plus a margin, and a moving mask keeps only what lies
   inside the CT's field widened by ``moving_mask_margin_mm``: hot organs farther out (bladder,
   brain) would otherwise pull the optimiser away, and the widening keeps the mask (hence the
   PET intensity range the metric's histogram spans) the same whatever the misalignment.
   A fixed mask drops the CT field's border (``fixed_border_mm``), where a shifted PET runs out.
2. The CT is resampled to a registration grid about half as fine as the PET (a 512x512 CT at full
   resolution costs ten times more for no gain), then registered multi-resolution, by default
   on a fixed random 10% of that grid; ``sampling_fraction=1`` uses every voxel (a smoother
   metric, slower).
3. The result is kept only if it stays within the translation and rotation bounds and improves
   the metric by at least ``min_relative_improvement``, evaluated on the same sample points
   before and after; otherwise the identity is returned with a warning: on an aligned real
   pair the metric's own optimum may lie a few mm from the DICOM geometry for a small gain,
   while true misalignments gain much more.

The returned transform maps CT physical points to PET physical points (SimpleITK's convention
with CT fixed and PET moving), so ``resample_onto(pet, ct_grid, transform)`` puts PET on the CT.
Random metric sampling is seeded and the thread count fixed, so a seed gives the same result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungfusion.artifacts import Timer, atomic_path, read_json
from lungfusion.errors import PatientInputError
from lungfusion.imaging.nifti import write_image_atomic
from lungfusion.imaging.resample import resample_onto, resample_to_spacing, target_grid
from lungfusion.status import run_patient_stage

METHODS = ("rigid", "affine", "none")
# CT intensities outside this window (HU) only spread the joint histogram (metal, table).
_CT_WINDOW_HU = (-1024.0, 1500.0)
# PET intensities above this percentile of the cropped PET are clipped; 100 (no clipping) is
# measured best (docs/imaging_heuristics.md).
_PET_CLIP_PERCENTILE = 100.0
# Registration grid spacing relative to the PET's coarsest voxel side.
_GRID_FRACTION_OF_PET = 0.75


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_parameters(
    method, shrink_factors, smoothing_sigmas_mm, histogram_bins, sampling_fraction, max_iterations
) -> None:
    _check(method in METHODS, f"method must be one of {METHODS}, got {method!r}")
    _check(
        len(shrink_factors) > 0 and len(shrink_factors) == len(smoothing_sigmas_mm),
        "shrink_factors and smoothing_sigmas_mm must be non-empty and of equal length, got "
        f"{list(shrink_factors)} and {list(smoothing_sigmas_mm)}",
    )
    _check(all(int(f) >= 1 for f in shrink_factors), "shrink_factors must be >= 1")
    _check(all(s >= 0 for s in smoothing_sigmas_mm), "smoothing_sigmas_mm must be >= 0")
    _check(histogram_bins >= 8, f"histogram_bins must be >= 8, got {histogram_bins}")
    _check(
        0 < sampling_fraction <= 1, f"sampling_fraction must be in (0, 1], got {sampling_fraction}"
    )
    _check(max_iterations >= 1, f"max_iterations must be >= 1, got {max_iterations}")


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest physical coordinates (per axis) of the image's voxel centres."""
    size = image.GetSize()
    corners = [
        image.TransformIndexToPhysicalPoint([(size[d] - 1) * ((k >> d) & 1) for d in range(3)])
        for k in range(8)
    ]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def image_centre(image: sitk.Image) -> tuple[float, ...]:
    size = image.GetSize()
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])


def crop_to_extent(image: sitk.Image, reference: sitk.Image, margin_mm: float) -> sitk.Image:
    """The part of ``image`` that covers ``reference``'s extent widened by ``margin_mm``.

    Raises PatientInputError when the two do not overlap at all.
    """
    low, high = physical_bounds(reference)
    low, high = low - margin_mm, high + margin_mm
    corners = [[(low, high)[(k >> d) & 1][d] for d in range(3)] for k in range(8)]
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.array(image.GetSize())
    start = np.clip(np.floor(indices.min(axis=0)), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(indices.max(axis=0)), 0, size - 1).astype(int)
    if np.any(indices.max(axis=0) < 0) or np.any(indices.min(axis=0) > size - 1):
        raise PatientInputError("the PET does not overlap the CT's field of view")
    return sitk.RegionOfInterest(image, (stop - start + 1).tolist(), start.tolist())


def _registration_images(
    ct: sitk.Image,
    pet: sitk.Image,
    *,
    pet_margin_mm: float,
    moving_mask_margin_mm: float,
    fixed_border_mm: float,
) -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    """Fixed CT on a registration grid, cropped and clipped moving PET, and the two masks."""
    moving = sitk.Cast(crop_to_extent(pet, ct, pet_margin_mm), sitk.sitkFloat32)
    # An isotropic grid at 3/4 of the PET's coarsest spacing: the PET's point spread (5-7 mm)
    # leaves nothing finer for mutual information to use, and it costs 5-10x less than the CT's
    # grid. Isotropic also keeps it off the PET's slice positions: a fixed grid sharing them
    # makes the metric oscillate with the slice spacing and pulls the result half a slice off.
    spacing = [max(min(ct.GetSpacing()), _GRID_FRACTION_OF_PET * max(pet.GetSpacing()))] * 3
    fixed = sitk.Clamp(
        resample_to_spacing(sitk.Cast(ct, sitk.sitkFloat32), spacing, default_value=-1024.0),
        sitk.sitkFloat32,
        *_CT_WINDOW_HU,
    )
    values = sitk.GetArrayViewFromImage(moving)
    ceiling = float(np.percentile(values, _PET_CLIP_PERCENTILE)) if values.size else 0.0
    moving = sitk.Clamp(moving, sitk.sitkFloat32, 0.0, max(ceiling, 1e-6))
    # Moving mask: the PET voxels inside the CT's field widened by a margin. Mattes MI takes
    # its moving histogram range from the masked voxels, so a mask that follows the CT's field
    # exactly lets a hot voxel at the field's edge drop in or out with the misalignment,
    # changing the metric and its optimum.
    moving_mask = sitk.Resample(
        _field_mask(ct, -moving_mask_margin_mm),
        moving,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    # Fixed mask: the registration grid less a border, where a misaligned PET runs out and the
    # set of usable samples (hence the metric) would change with the transform.
    fixed_mask = _field_mask(fixed, fixed_border_mm)
    return fixed, moving, fixed_mask, moving_mask


def _field_mask(image: sitk.Image, border_mm: float) -> sitk.Image:
    """1 inside ``image``'s field, 0 on ``border_mm`` of its outer faces (negative widens it)."""
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    mask.CopyInformation(image)
    voxels = [int(np.ceil(abs(border_mm) / s)) for s in image.GetSpacing()]
    if border_mm > 0:
        voxels = [min(v, (n - 1) // 2) for v, n in zip(voxels, image.GetSize(), strict=True)]
        mask = sitk.ConstantPad(sitk.Crop(mask, voxels, voxels), voxels, voxels, 0)
    elif border_mm < 0:
        mask = sitk.ConstantPad(mask, voxels, voxels, 1)
    return mask


def _initial_transform(method: str, centre: Sequence[float]) -> sitk.Transform:
    transform = sitk.AffineTransform(3) if method == "affine" else sitk.Euler3DTransform()
    transform.SetCenter(centre)
    return transform


def _registration_method(
    *,
    histogram_bins: int,
    sampling_fraction: float,
    seed: int,
    threads: int,
    fixed_mask,
    moving_mask,
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(histogram_bins))
    if sampling_fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(sampling_fraction), int(seed))
    else:  # every voxel of the (coarse) registration grid: a smooth, deterministic metric
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetNumberOfThreads(int(threads))
    return reg


def transform_motion(transform: sitk.Transform, centre: Sequence[float]) -> tuple[float, float]:
    """(translation of ``centre`` in mm, rotation angle in degrees) of a rigid or affine transform.

    For an affine transform the rotation is that of its polar decomposition.
    """
    translation = np.subtract(transform.TransformPoint(tuple(centre)), centre)
    if isinstance(transform, sitk.Euler3DTransform | sitk.AffineTransform):
        matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    else:
        matrix = np.eye(3)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    cos_angle = np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)
    return float(np.linalg.norm(translation)), float(np.degrees(np.arccos(cos_angle)))


def register_pet_to_ct(
    ct: sitk.Image,
    pet: sitk.Image,
    *,
    method: str = "rigid",
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0),
    histogram_bins: int = 50,
    sampling_fraction: float = 0.1,
    max_iterations: int = 100,
    pet_margin_mm: float = 30.0,
    moving_mask_margin_mm: float = 10.0,
    fixed_border_mm: float = 0.0,
    min_relative_improvement: float = 0.02,
    max_translation_mm: float = 20.0,
    max_rotation_deg: float = 10.0,
    seed: int = 1,
    threads: int = 2,
) -> tuple[sitk.Transform, dict]:
    """Refine the PET-to-CT alignment; return (transform CT -> PET physical points, info).

    ``info`` holds the metric before and after (Mattes MI, lower is better), whether the
    refinement was kept, the translation and rotation found, warnings and timings.

    >>> transform, info = register_pet_to_ct(ct, pet, method="rigid")  # doctest: +SKIP
    >>> info["kept"], info["metric_before"] > info["metric_after"]  # doctest: +SKIP
    (True, True)
    """
    _check_parameters(
        method,
        shrink_factors,
        smoothing_sigmas_mm,
        histogram_bins,
        sampling_fraction,
        max_iterations,
    )
    started = time.perf_counter()
    centre = image_centre(ct)
    identity = _initial_transform("rigid", centre)
    info: dict = {"method": method, "kept": False, "warnings": [], "timings_s": {}}
    if method == "none":
        info["timings_s"]["total"] = round(time.perf_counter() - started, 4)
        return identity, info

    _check(
        moving_mask_margin_mm >= 0 and fixed_border_mm >= 0 and min_relative_improvement >= 0,
        "moving_mask_margin_mm, fixed_border_mm and min_relative_improvement must be >= 0",
    )
    fixed, moving, fixed_mask, moving_mask = _registration_images(
        ct,
        pet,
        pet_margin_mm=pet_margin_mm,
        moving_mask_margin_mm=moving_mask_margin_mm,
        fixed_border_mm=fixed_border_mm,
    )
    info["registration_grid"] = {
        "fixed_size": fixed.GetSize(),
        "fixed_spacing_mm": [round(s, 4) for s in fixed.GetSpacing()],
        "moving_size": moving.GetSize(),
    }
    info["timings_s"]["prepare"] = round(time.perf_counter() - started, 4)
    settings = {
        "histogram_bins": histogram_bins,
        "sampling_fraction": sampling_fraction,
        "seed": seed,
        "threads": threads,
        "fixed_mask": fixed_mask,
        "moving_mask": moving_mask,
    }

    reg = _registration_method(**settings)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=int(max_iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(_initial_transform(method, centre), inPlace=True)
    optimise_start = time.perf_counter()
    try:
        found = reg.Execute(fixed, moving)
    except RuntimeError as error:  # e.g. too few samples inside both images
        info["warnings"].append(f"registration failed, identity kept: {error}")
        info["timings_s"]["total"] = round(time.perf_counter() - started, 4)
        return identity, info
    info["timings_s"]["optimise"] = round(time.perf_counter() - optimise_start, 4)
    info["iterations"] = reg.GetOptimizerIteration()
    info["stop_condition"] = reg.GetOptimizerStopConditionDescription()

    # Same sample points (same seed) for both, at the finest level, so the two are comparable.
    evaluator = _registration_method(**settings)
    evaluator.SetInitialTransform(identity)
    info["metric_before"] = evaluator.MetricEvaluate(fixed, moving)
    evaluator.SetInitialTransform(found)
    info["metric_after"] = evaluator.MetricEvaluate(fixed, moving)
    info["relative_improvement"] = round(
        (info["metric_before"] - info["metric_after"]) / max(abs(info["metric_before"]), 1e-12), 5
    )

    translation, rotation = transform_motion(found, centre)
    info["translation_mm"] = round(translation, 4)
    info["rotation_deg"] = round(rotation, 4)
    if translation > max_translation_mm or rotation > max_rotation_deg:
        info["warnings"].append(
            f"refinement rejected, identity kept: it moves {translation:.1f} mm and "
            f"{rotation:.1f} deg, beyond the bounds {max_translation_mm} mm and {max_rotation_deg} deg"
        )
    elif not info["relative_improvement"] >= max(min_relative_improvement, 1e-12):
        info["warnings"].append(
            "refinement rejected, identity kept: it did not improve the metric by "
            f"{100 * min_relative_improvement:g}% ({info['metric_before']:.5f} -> "
            f"{info['metric_after']:.5f})"
        )
    else:
        info["kept"] = True
    info["timings_s"]["total"] = round(time.perf_counter() - started, 4)
    return (found if info["kept"] else identity), info


def transform_error_mm(
    true_transform: sitk.Transform, found_transform: sitk.Transform, points: np.ndarray
) -> np.ndarray:
    """Distance (mm) between where two transforms send each physical point (an N x 3 array)."""
    true_points = np.array([true_transform.TransformPoint(tuple(p)) for p in points])
    found_points = np.array([found_transform.TransformPoint(tuple(p)) for p in points])
    return np.linalg.norm(true_points - found_points, axis=1)


def mask_points(mask: sitk.Image, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """Physical points (N x 3, LPS mm) of a mask's nonzero voxels, optionally a random subset."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]  # (z,y,x) -> (x,y,z)
    if max_points is not None and len(indices) > max_points:
        rng = np.random.default_rng(seed)
        indices = indices[rng.choice(len(indices), max_points, replace=False)]
    origin = np.array(mask.GetOrigin())
    matrix = np.array(mask.GetDirection()).reshape(3, 3) * np.array(mask.GetSpacing())
    return origin + indices @ matrix.T


# ------------------------------------------------------------------------- the register stage

AIR_HU = -1024.0
STAGE_IMAGES = ("ct.nii.gz", "pet.nii.gz", "gtv.nii.gz", "pet_to_ct.tfm")
REGISTRATION_KEYS = (
    "method",
    "shrink_factors",
    "smoothing_sigmas_mm",
    "histogram_bins",
    "sampling_fraction",
    "max_iterations",
    "pet_margin_mm",
    "moving_mask_margin_mm",
    "fixed_border_mm",
    "min_relative_improvement",
    "max_translation_mm",
    "max_rotation_deg",
    "seed",
)


def run_register_stage(patient: str, *, ingest_dir: Path, out_dir: Path, settings: dict) -> dict:
    """Register and resample one patient with the ``register`` config section's ``settings``.

    Reads ``ct.nii.gz``, ``pet_suv.nii.gz`` and ``ingest.json`` from ``ingest_dir`` and writes
    ``ct.nii.gz`` (HU), ``pet.nii.gz`` (SUV; absent for CT-only patients), ``gtv.nii.gz`` (the
    ingested GTV on the same grid, where there is one), ``pet_to_ct.tfm`` (CT physical point ->
    PET physical point) and, last, ``register.json``, which it returns.
    """

    def work(staging: Path, timer: Timer) -> dict:
        ingested = read_json(ingest_dir / "ingest.json")
        has_pet = bool(ingested.get("has_pet", (ingest_dir / "pet_suv.nii.gz").is_file()))
        return register_patient(patient, ingest_dir, staging, settings, timer, has_pet=has_pet)

    return run_patient_stage(
        stage="register",
        patient=patient,
        sidecar_path=out_dir / "register.json",
        image_dir=out_dir,
        image_names=STAGE_IMAGES,
        record={"inputs": {"ingest_dir": str(ingest_dir)}, "parameters": settings},
        work=work,
        upstream={"ingest": ingest_dir / "ingest.json"},
    )


def _read_image(path: Path, patient: str) -> sitk.Image:
    if not path.is_file():
        raise PatientInputError(
            f"missing ingest output {path.name}", patient=patient, file=str(path)
        )
    try:
        return sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as error:
        raise PatientInputError(
            f"cannot read {path.name}: {error}", patient=patient, file=str(path)
        ) from error


def _resample_gtv(source: Path, ct: sitk.Image, spacing, out: Path, patient: str) -> bool:
    """The GTV onto the registered CT's grid: its share of each target voxel (the CT's
    antialiased linear resampling) at 0.5 or more is in, as a partial-volume majority."""
    out.unlink(missing_ok=True)  # a GTV no longer ingested must not stay
    if not source.is_file():
        return False
    share = resample_to_spacing(_read_image(source, patient), spacing, reference=ct)
    write_image_atomic(sitk.Cast(share >= 0.5, sitk.sitkUInt8), out)
    return True


def register_patient(
    patient: str, ingest_dir: Path, out_dir: Path, settings: dict, timer: Timer, *, has_pet: bool
) -> dict:
    """Register and resample one patient into ``out_dir``; return the sidecar's extra fields."""
    spacing = settings["target_spacing_mm"]
    with timer("read"):
        ct = _read_image(ingest_dir / "ct.nii.gz", patient)
        pet = _read_image(ingest_dir / "pet_suv.nii.gz", patient) if has_pet else None
    result: dict = {"has_pet": has_pet, "warnings": [], "outputs": {"ct": "ct.nii.gz"}}
    with timer("resample_ct"):
        write_image_atomic(
            resample_to_spacing(ct, spacing, default_value=AIR_HU), out_dir / "ct.nii.gz"
        )
    with timer("resample_gtv"):
        if _resample_gtv(ingest_dir / "gtv.nii.gz", ct, spacing, out_dir / "gtv.nii.gz", patient):
            result["outputs"]["gtv"] = "gtv.nii.gz"
    if pet is None:
        return result
    with timer("register"):
        kwargs = {key: settings[key] for key in REGISTRATION_KEYS if key in settings}
        try:
            transform, info = register_pet_to_ct(ct, pet, threads=settings["threads"], **kwargs)
        except PatientInputError as error:
            error.patient = patient
            raise
    with timer("resample_pet"):
        pet_on_grid = resample_onto(pet, target_grid(ct, spacing), transform, default_value=0.0)
        write_image_atomic(pet_on_grid, out_dir / "pet.nii.gz")
    with atomic_path(out_dir / "pet_to_ct.tfm", suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    result["outputs"].update({"pet": "pet.nii.gz", "transform": "pet_to_ct.tfm"})
    result["warnings"] = info.pop("warnings")
    result["registration"] = info
    result["transform_parameters"] = list(transform.GetParameters())
    result["grid"] = {
        "size": pet_on_grid.GetSize(),
        "spacing_mm": pet_on_grid.GetSpacing(),
        "origin_mm": pet_on_grid.GetOrigin(),
        "direction": pet_on_grid.GetDirection(),
    }
    return result
