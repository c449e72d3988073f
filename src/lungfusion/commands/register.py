"""`lungfusion register`: PET onto CT for one patient, both resampled to the target grid.

Reads ``ct.nii.gz``, ``pet_suv.nii.gz`` and ``ingest.json`` from the ingest folder and writes
``ct.nii.gz`` (HU), ``pet.nii.gz`` (SUV; absent for CT-only patients), ``gtv.nii.gz`` (the
ingested GTV on the same grid, where there is one), ``pet_to_ct.tfm`` (CT physical point -> PET
physical point) and, last, ``register.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import SimpleITK as sitk

from lungfusion.artifacts import Timer, atomic_path, read_json
from lungfusion.errors import PatientInputError
from lungfusion.imaging.register import register_pet_to_ct
from lungfusion.imaging.resample import resample_onto, resample_to_spacing, target_grid
from lungfusion.status import run_patient_stage

log = logging.getLogger(__name__)

AIR_HU = -1024.0
IMAGES = ("ct.nii.gz", "pet.nii.gz", "gtv.nii.gz", "pet_to_ct.tfm")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--ingest-dir", required=True, help="e.g. results/ingest/PID")
    parser.add_argument("--out-dir", required=True, help="e.g. results/register/PID")


def _write_image(image: sitk.Image, path: Path) -> None:
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


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
    _write_image(sitk.Cast(share >= 0.5, sitk.sitkUInt8), out)
    return True


def register_patient(
    patient: str, ingest_dir: Path, out_dir: Path, options: dict, timer: Timer, *, has_pet: bool
) -> dict:
    """Register and resample one patient; return the sidecar's extra fields."""
    spacing = options.get("target_spacing_mm", [0.977, 0.977, 3.27])
    with timer("read"):
        ct = _read_image(ingest_dir / "ct.nii.gz", patient)
        pet = _read_image(ingest_dir / "pet_suv.nii.gz", patient) if has_pet else None
    result: dict = {"has_pet": has_pet, "warnings": [], "outputs": {"ct": "ct.nii.gz"}}
    with timer("resample_ct"):
        _write_image(resample_to_spacing(ct, spacing, default_value=AIR_HU), out_dir / "ct.nii.gz")
    with timer("resample_gtv"):
        if _resample_gtv(ingest_dir / "gtv.nii.gz", ct, spacing, out_dir / "gtv.nii.gz", patient):
            result["outputs"]["gtv"] = "gtv.nii.gz"
    if pet is None:
        return result
    with timer("register"):
        kwargs = {key: options[key] for key in REGISTRATION_KEYS if key in options}
        try:
            transform, info = register_pet_to_ct(
                ct, pet, threads=options.get("threads", 2), **kwargs
            )
        except PatientInputError as error:
            error.patient = patient
            raise
    with timer("resample_pet"):
        pet_on_grid = resample_onto(pet, target_grid(ct, spacing), transform, default_value=0.0)
        _write_image(pet_on_grid, out_dir / "pet.nii.gz")
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


def run(args: argparse.Namespace, config: dict) -> int:
    options = dict(config.get("register", {}))
    ingest_dir, out_dir = Path(args.ingest_dir), Path(args.out_dir)

    def work(staging: Path, timer: Timer) -> dict:
        ingested = read_json(ingest_dir / "ingest.json")
        has_pet = bool(ingested.get("has_pet", (ingest_dir / "pet_suv.nii.gz").is_file()))
        return register_patient(args.patient, ingest_dir, staging, options, timer, has_pet=has_pet)

    run_patient_stage(
        stage="register",
        patient=args.patient,
        sidecar_path=out_dir / "register.json",
        image_dir=out_dir,
        image_names=IMAGES,
        record={"inputs": {"ingest_dir": str(ingest_dir)}, "parameters": options},
        work=work,
        upstream={"ingest": ingest_dir / "ingest.json"},
    )
    return 0
