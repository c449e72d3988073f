"""``lungfusion segment``: lungs and the tumour-inclusive region of one patient.

Reads ``{register_dir}/ct.nii.gz`` (HU on the target grid) and ``register.json``; writes
``{out_dir}/lungs.nii.gz`` (uint8: 0 background, 1 right lung, 2 left lung),
``region.nii.gz`` (uint8 0/1: lungs plus what a hilar, mediastinal or pleural tumour occupies,
used for cropping and masking) and last ``segment.json`` (status, volumes in mL, warnings,
timings). An upstream failure gives ``status: skipped``; bad input ``status: failed``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungfusion.artifacts import Timer, atomic_path
from lungfusion.errors import PatientInputError
from lungfusion.imaging.segment import (
    check_backend,
    lung_volumes_ml,
    segment_lungs_with_backend,
    tumour_inclusive_region,
)
from lungfusion.status import run_patient_stage

log = logging.getLogger(__name__)
IMAGES = ("lungs.nii.gz", "region.nii.gz")
SEGMENT_DEFAULTS = {
    "backend": "classical",
    "threshold_hu": -320.0,
    "closing_mm": 3.0,
    "region_margin_mm": 20.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--register-dir", required=True, type=Path, help="results/register/PID")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/segment/PID")


def run(args: argparse.Namespace, config: dict) -> int:
    settings = {**SEGMENT_DEFAULTS, **(config.get("segment") or {})}
    check_backend(settings["backend"])  # a missing backend stops every patient: fail loudly
    register_dir, out_dir = Path(args.register_dir), Path(args.out_dir)

    def work(staging: Path, timer: Timer) -> dict:
        result = segment_patient(
            register_dir / "ct.nii.gz", staging, settings=settings, timer=timer
        )
        log.info("patient %s: lungs %.0f mL, region %.0f mL", args.patient,
                 result["volumes_ml"]["total_ml"], result["region_ml"])  # fmt: skip
        return result

    run_patient_stage(
        stage="segment",
        patient=args.patient,
        sidecar_path=out_dir / "segment.json",
        image_dir=out_dir,
        image_names=IMAGES,
        record={"inputs": {"register_dir": str(register_dir)}, "parameters": settings},
        work=work,
        upstream={"register": register_dir / "register.json"},
    )
    return 0


def segment_patient(ct_path: Path, out_dir: Path, *, settings: dict, timer: Timer) -> dict:
    """Segment one CT file and write lungs.nii.gz and region.nii.gz; returns sidecar facts."""
    if not ct_path.is_file():
        raise PatientInputError("registered CT not found", file=str(ct_path))
    with timer("read"):
        ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    with timer("lungs"):
        lungs, info = segment_lungs_with_backend(
            ct,
            backend=settings["backend"],
            threshold_hu=float(settings["threshold_hu"]),
            closing_mm=float(settings["closing_mm"]),
        )
    with timer("region"):
        region = tumour_inclusive_region(ct, lungs, margin_mm=float(settings["region_margin_mm"]))
    with timer("write"):
        for name, image in (("lungs.nii.gz", lungs), ("region.nii.gz", region)):
            with atomic_path(out_dir / name) as tmp:
                sitk.WriteImage(image, str(tmp), True)
    volumes = lung_volumes_ml(lungs)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    region_ml = round(float(sitk.GetArrayViewFromImage(region).sum()) * voxel_ml, 1)
    warnings = list(info.pop("warnings", []))
    if volumes["total_ml"] < 500:
        warnings.append(f"lung volume {volumes['total_ml']} mL is implausibly small")
    return {
        "outputs": {
            "lungs": "lungs.nii.gz",
            "region": "region.nii.gz",
        },
        "volumes_ml": volumes,
        "region_ml": region_ml,
        "details": {k: v for k, v in info.items() if not k.endswith("_lung_ml")},
        "warnings": warnings,
    }
