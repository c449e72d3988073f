"""``lungfusion roi``: crop, window and normalise one patient's model-input tensors.

Reads ``{register_dir}/ct.nii.gz``, ``pet.nii.gz`` (absent for CT-only), ``register.json``,
``gtv.nii.gz`` (where the collection has contours: the ``gtv`` strategy centres on it),
``{segment_dir}/region.nii.gz``, ``lungs.nii.gz``, ``segment.json`` and, for the annotation
strategy, ``{ingest_dir}/ingest.json`` + ``ct.nii.gz``. Writes ``--out`` (``PID.npz``: keys
``ct``, ``pet`` float32 (z, y, x) in [0, 1], ``lungs`` uint8 region mask, ``has_pet`` bool,
``spacing`` and ``origin`` float64 (3,) x, y, z), ``PID.png`` (QC picture) and last
``PID.json`` (status, has_pet, box in voxel and physical coordinates, crop used, warnings).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungfusion.artifacts import Timer, atomic_path, read_json
from lungfusion.errors import PatientInputError
from lungfusion.imaging import roi as roi_lib
from lungfusion.imaging.qc import roi_qc_png
from lungfusion.status import run_patient_stage

log = logging.getLogger(__name__)
ROI_DEFAULTS = {
    "crop": "pet_hotspot",
    "shape": [64, 64, 32],
    "ct_window": [-1024, 1024],
    "suv_window": [0, 20],
    "annotation_dir": None,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient ID of the sample sheet")
    parser.add_argument("--register-dir", required=True, type=Path, help="results/register/PID")
    parser.add_argument("--segment-dir", required=True, type=Path, help="results/segment/PID")
    parser.add_argument("--out", required=True, type=Path, help="results/roi/PID.npz")
    parser.add_argument(
        "--ingest-dir", type=Path, default=None, help="results/ingest/PID (annotation strategy)"
    )


def run(args: argparse.Namespace, config: dict) -> int:
    settings = {**ROI_DEFAULTS, **(config.get("roi") or {})}
    if settings["crop"] not in roi_lib.CROP_STRATEGIES:
        raise ValueError(f"roi.crop must be one of {roi_lib.CROP_STRATEGIES}")
    out = Path(args.out)
    png = out.with_suffix(".png")
    inputs = {"register_dir": str(args.register_dir), "segment_dir": str(args.segment_dir)}
    if args.ingest_dir is not None:
        inputs["ingest_dir"] = str(args.ingest_dir)

    def work(staging: Path, timer: Timer) -> dict:
        facts = make_roi(
            args, settings, timer=timer, npz_path=staging / out.name, png_path=staging / png.name
        )
        facts["outputs"] = {"npz": str(out), "png": str(png)}
        return facts

    run_patient_stage(
        stage="roi",
        patient=args.patient,
        sidecar_path=out.with_suffix(".json"),
        image_dir=out.parent,
        image_names=(out.name, png.name),
        record={"inputs": inputs, "parameters": settings},
        work=work,
        upstream={
            "register": Path(args.register_dir) / "register.json",
            "segment": Path(args.segment_dir) / "segment.json",
        },
    )
    return 0


def make_roi(
    args: argparse.Namespace, settings: dict, *, timer: Timer, npz_path: Path, png_path: Path
) -> dict:
    """Build, save and picture one patient's ROI; returns the sidecar facts."""
    register_dir, segment_dir = Path(args.register_dir), Path(args.segment_dir)
    with timer("read"):
        ct = _read(register_dir / "ct.nii.gz", required=True)
        pet = _read(register_dir / "pet.nii.gz", required=False)
        region = _read(segment_dir / "region.nii.gz", required=True)
        lungs = _read(segment_dir / "lungs.nii.gz", required=False)
        gtv = _read(register_dir / "gtv.nii.gz", required=False)
    shape = tuple(int(n) for n in settings["shape"])
    warnings: list[str] = []
    with timer("place"):
        grid, crop_used, info = _place(args, settings, ct, pet, region, lungs, gtv, shape, warnings)
    with timer("extract"):
        payload = roi_lib.extract_roi(
            ct, pet, region, grid,
            ct_window=tuple(settings["ct_window"]), suv_window=tuple(settings["suv_window"]),
        )  # fmt: skip
        with atomic_path(npz_path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **payload)
    first, last = grid.corner_index(ct)
    with timer("qc"):
        roi_qc_png(
            png_path, ct=ct, pet=pet, lungs=lungs, region=region, box_first=first,
            box_last=last, title=f"{args.patient}: {crop_used} ROI",
        )  # fmt: skip
    if pet is None and info.get("fallback"):
        warnings.append("no PET: ROI centred on the region's bounding box")
    elif pet is None and info.get("placement") == "ct_lesion":
        warnings.append("no PET: ROI centred on the most lesion-like CT blob")
    return {
        "has_pet": pet is not None,
        "crop_requested": settings["crop"],
        "crop_used": crop_used,
        "placement": info,
        "box": {
            "index_first": first,  # continuous indices (x, y, z) of the registered CT
            "index_last": last,
            "physical_first_mm": list(grid.origin),
            "physical_last_mm": list(grid.physical_point([n - 1 for n in grid.size])),
            "size_voxels": list(grid.size),
            "spacing_mm": list(grid.spacing),
            "outside_image_fraction": _outside_fraction(ct, first, last),
        },
        "outputs": {"npz": str(npz_path), "png": str(png_path)},
        "warnings": warnings,
    }


def _place(args, settings, ct, pet, region, lungs, gtv, shape, warnings) -> tuple:
    crop = settings["crop"]
    if crop == "gtv":
        placed = roi_lib.gtv_grid(ct, gtv, shape) if gtv is not None else None
        if placed is not None:
            return placed[0], crop, placed[1]
        warnings.append("no GTV contour for this patient: fell back to pet_hotspot")
    if crop == "lungs":
        grid, info = roi_lib.lungs_grid(ct, region, shape=shape)
        return grid, crop, info
    if crop == "annotation":
        boxes, used = _annotation_boxes(args, settings)
        if boxes:
            grid, info = roi_lib.annotation_grid(ct, boxes, shape=shape)
            return grid, crop, {**info, "annotation_files": used}
        warnings.append("no annotation box matched a CT slice: fell back to pet_hotspot")
    grid, info = roi_lib.hotspot_grid(ct, pet, region, shape=shape, lungs=lungs)
    return grid, "pet_hotspot", info


def _annotation_boxes(args, settings) -> tuple[list, list[str]]:
    if not settings.get("annotation_dir"):
        raise PatientInputError("roi.crop is annotation but roi.annotation_dir is not set")
    if args.ingest_dir is None:
        raise PatientInputError("roi.crop is annotation but no --ingest-dir was given")
    ingest = read_json(Path(args.ingest_dir) / "ingest.json")
    slices = ingest.get("ct_slices") or (ingest.get("ct") or {}).get("slices")
    if not slices:
        raise PatientInputError("ingest.json has no ct_slices list", file=str(args.ingest_dir))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(Path(args.ingest_dir) / "ct.nii.gz"))
    reader.ReadImageInformation()  # the geometry is enough to place the boxes
    geometry = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    geometry.SetOrigin(reader.GetOrigin())
    geometry.SetSpacing(reader.GetSpacing())
    geometry.SetDirection(reader.GetDirection())
    return roi_lib.annotation_boxes_physical(
        settings["annotation_dir"], args.patient, slices, geometry
    )


def _read(path: Path, *, required: bool) -> sitk.Image | None:
    if not path.is_file():
        if required:
            raise PatientInputError("input image not found", file=str(path))
        return None
    return sitk.ReadImage(str(path))


def _outside_fraction(ct: sitk.Image, first: list[float], last: list[float]) -> float:
    """Share of the box's extent along each axis outside the image (worst axis)."""
    worst = 0.0
    for low, high, n in zip(first, last, ct.GetSize(), strict=True):
        length = high - low + 1
        outside = max(0.0, -low) + max(0.0, high - (n - 1))
        worst = max(worst, min(1.0, outside / length))
    return round(worst, 3)
