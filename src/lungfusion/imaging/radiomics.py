"""IBSI radiomics features of the lesion in a ROI, CT and PET, with pyradiomics.

Each patient's ROI (``results/roi/{pid}.npz``) gives the CT (HU), the PET (SUV) and the region
on one grid, and the lesion is :func:`lungfusion.imaging.lesion.segment_lesion`'s CT blob at
its centre. Where the collection has a GTV contour (``results/register/{pid}/gtv.nii.gz``) and
``radiomics.mask`` is auto, the lesion is the GTV instead, on a box of the registered images
around it (:func:`read_gtv_box`): the whole contour, however large, whatever box the networks'
ROI takes. pyradiomics then
computes, on the original images, the configured feature classes with a fixed bin width per
modality (HU and SUV are absolute scales, so a fixed width keeps bins comparable across
patients, as IBSI recommends for CT and PET). The names are ``ct_<class>_<feature>`` and
``pet_<class>_<feature>``, and ``lesion_ml``. The ``context`` features that pyradiomics has no
class for are :mod:`lungfusion.imaging.lesion_context`'s: ``location`` (central or peripheral,
from the segment stage's lung labels), ``ctpet`` (the PET hot spot's side against the CT's
dense part) and ``semantic`` (size, solid proportion, cavity, SUVmax, necrotic core).

>>> settings = radiomics_settings({})
>>> settings["ct_bin_width"], settings["pet_bin_width"]
(25.0, 0.5)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lungfusion.artifacts import atomic_path, read_json, write_json_atomic
from lungfusion.config import section_settings
from lungfusion.errors import PatientInputError
from lungfusion.imaging.lesion import segment_lesion
from lungfusion.imaging.lesion_context import (
    CONTEXT,
    ctpet_offsets,
    lesion_points_physical,
    lung_location,
    semantic_descriptors,
)
from lungfusion.imaging.roi import unscale

log = logging.getLogger(__name__)


def radiomics_settings(section: Mapping | None) -> dict:
    """The ``radiomics`` config section, the schema's defaults filled in and checked (the
    schema names the feature classes and context features), bin widths as floats."""
    settings = section_settings({"radiomics": dict(section or {})}, "radiomics")
    settings["ct_bin_width"] = float(settings["ct_bin_width"])
    settings["pet_bin_width"] = float(settings["pet_bin_width"])
    return settings


@lru_cache(maxsize=8)  # one per modality and setting, reused for every patient
def _extractor(classes: tuple[str, ...], bin_width: float):
    from radiomics import featureextractor

    # pyradiomics sets its logger up on import; its per-feature notes are not the user's concern
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(
        binWidth=bin_width, additionalInfo=False, minimumROIDimensions=3
    )
    extractor.disableAllFeatures()
    for name in classes:
        extractor.enableFeatureClassByName(name)
    return extractor


def _image(array: np.ndarray, spacing_xyz) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    return image


def _features(extractor, image: sitk.Image, mask: sitk.Image, prefix: str) -> dict[str, float]:
    values = extractor.execute(image, mask, label=1)
    return {
        f"{prefix}_{key.removeprefix('original_')}": float(value)
        for key, value in values.items()
        if key.startswith("original_")
    }


def lesion_features(
    hu: np.ndarray,
    suv: np.ndarray | None,
    region: np.ndarray,
    spacing_xyz,
    settings: Mapping,
    origin_xyz=None,
    lungs: sitk.Image | None = None,
    gtv: np.ndarray | None = None,
) -> tuple[dict[str, float], str]:
    """(features, status) of one ROI: status ``ok``, or ``no_lesion`` (none near the centre, or
    under ``min_lesion_voxels``) or ``flat_lesion`` (one voxel thick along an axis), featureless.
    The ``location`` features need the ROI's ``origin_xyz`` and the patient's ``lungs`` labels
    (on the registered CT's grid, whose direction the ROI shares); without them they are NaN.
    ``gtv``, the ROI's contour mask, is the lesion when :func:`mask_source` says so."""
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    if mask_source(gtv, settings) == "gtv":
        lesion = gtv > 0
    else:
        lesion = segment_lesion(hu, region, spacing_zyx, max_offset_mm=settings["max_offset_mm"])
    if lesion.sum() < settings["min_lesion_voxels"]:
        return {}, "no_lesion"
    if min(np.ptp(np.argwhere(lesion), axis=0)) == 0:  # one slice or row thick: no 3D texture
        return {}, "flat_lesion"
    mask = _image(lesion.astype(np.uint8), spacing_xyz)
    features = {"lesion_ml": float(lesion.sum() * spacing_zyx.prod() / 1e3)}
    ct = _extractor(tuple(settings["ct_features"]), settings["ct_bin_width"])
    features.update(_features(ct, _image(hu.astype(np.float32), spacing_xyz), mask, "ct"))
    if suv is not None:
        pet = _extractor(tuple(settings["pet_features"]), settings["pet_bin_width"])
        features.update(_features(pet, _image(suv.astype(np.float32), spacing_xyz), mask, "pet"))
    if "ctpet" in settings["context"] and suv is not None:
        features.update(ctpet_offsets(hu, suv, lesion, spacing_zyx))
    if "location" in settings["context"]:
        features.update(_location(lesion, origin_xyz, spacing_xyz, lungs))
    if "semantic" in settings["context"]:
        features.update(semantic_descriptors(hu, suv, lesion, spacing_zyx))
    return features, "ok"


def mask_source(gtv: np.ndarray | None, settings: Mapping) -> str:
    """``gtv`` where there is a contour and ``radiomics.mask`` is auto, else ``ct_blob``."""
    has_gtv = gtv is not None and bool(np.any(gtv))
    return "gtv" if has_gtv and settings["mask"] == "auto" else "ct_blob"


def _location(lesion, origin_xyz, spacing_xyz, lungs) -> dict[str, float]:
    if lungs is None or origin_xyz is None:
        return {"loc_lateral_fraction": float("nan"), "loc_inner_third": float("nan")}
    points = lesion_points_physical(lesion, origin_xyz, spacing_xyz, lungs.GetDirection())
    return lung_location(lungs, points)


def read_roi(roi_path: Path, *, ct_window, suv_window) -> dict:
    """HU, SUV (None without PET), region, spacing and origin of a ROI file, undone from its
    windows (and ``gtv`` None): with ``lungs`` (:func:`read_lungs`), the keyword arguments of
    :func:`lesion_features` but ``settings``."""
    with np.load(roi_path) as roi:
        suv = unscale(roi["pet"], suv_window) if bool(roi["has_pet"]) else None
        return {
            "hu": unscale(roi["ct"], ct_window), "suv": suv, "region": roi["lungs"],
            "spacing_xyz": roi["spacing"], "origin_xyz": roi["origin"], "gtv": None,
        }  # fmt: skip


def contour_path(register_dir: Path | None, settings: Mapping) -> Path | None:
    """The patient's registered GTV when it is the lesion (``radiomics.mask`` auto), else None."""
    gtv = register_dir / "gtv.nii.gz" if register_dir else None
    return gtv if settings["mask"] == "auto" and gtv is not None and gtv.is_file() else None


def read_lesion_inputs(
    roi_path: Path,
    *,
    register_dir: Path | None,
    segment_dir: Path | None,
    settings: Mapping,
    ct_window,
    suv_window,
) -> dict:
    """:func:`lesion_features`' keyword arguments but ``settings`` and ``lungs``: from the GTV
    box (:func:`read_gtv_box`) where :func:`contour_path` finds one, else from the ROI file."""
    if contour_path(register_dir, settings) is not None:
        return read_gtv_box(register_dir, segment_dir, margin_mm=settings["gtv_margin_mm"])
    return read_roi(roi_path, ct_window=ct_window, suv_window=suv_window)


def read_gtv_box(register_dir: Path, segment_dir: Path | None, *, margin_mm: float) -> dict:
    """HU, SUV (None without PET), region, spacing, origin and GTV of the registered images in
    the GTV's bounding box plus ``margin_mm``: the keyword arguments of :func:`read_roi`."""
    gtv = sitk.ReadImage(str(register_dir / "gtv.nii.gz"), sitk.sitkUInt8)
    inside = np.argwhere(sitk.GetArrayViewFromImage(gtv) > 0)  # (z, y, x)
    if inside.size == 0:
        raise ValueError("the GTV is empty")
    pad = np.ceil(margin_mm / np.asarray(gtv.GetSpacing())[::-1]).astype(int)
    low = np.maximum(inside.min(axis=0) - pad, 0)
    high = np.minimum(inside.max(axis=0) + pad + 1, np.asarray(gtv.GetSize())[::-1])
    box = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1], strict=True))

    def crop(path: Path, pixel) -> np.ndarray | None:
        image = sitk.ReadImage(str(path), pixel)
        if image.GetSize() != gtv.GetSize():
            raise ValueError(f"{path.name} is not on the GTV's grid")
        return sitk.GetArrayFromImage(image[box])

    pet, region = (
        register_dir / "pet.nii.gz",
        segment_dir / "region.nii.gz" if segment_dir else None,
    )
    hu = crop(register_dir / "ct.nii.gz", sitk.sitkFloat32)
    return {
        "hu": hu,
        "suv": crop(pet, sitk.sitkFloat32) if pet.is_file() else None,
        "region": crop(region, sitk.sitkUInt8) if region and region.is_file() else np.ones_like(hu),
        "spacing_xyz": np.asarray(gtv.GetSpacing()),
        "origin_xyz": np.asarray(gtv[box].GetOrigin()),
        "gtv": sitk.GetArrayFromImage(gtv[box]),
    }


def read_lungs(path: Path | None) -> sitk.Image | None:
    """The segment stage's lung labels, or None where there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    return sitk.ReadImage(str(path), sitk.sitkUInt8)


# ------------------------------------------------------------------------ the radiomics stage
#
# ``lungfusion radiomics``: the lesion's IBSI radiomics features for every patient's ROI.
#
# Reads the ROI stage's ``{roi_dir}/{pid}.json`` and ``{pid}.npz`` for each patient of the sample
# sheet, the segment stage's ``{segment_dir}/{pid}/lungs.nii.gz`` for the location features and,
# where a collection has contours, the register stage's ``{register_dir}/{pid}/gtv.nii.gz`` with
# its images (the lesion is then the GTV). Writes ``{out}`` (a TSV: ``patient_id``, ``status``,
# ``has_pet``, ``mask`` (gtv or ct_blob), then the features, see
# :mod:`lungfusion.imaging.radiomics`) and last ``{out}.json`` (counts, settings, timings).
# A patient whose ROI stage failed or was skipped gets ``status: skipped`` and no features; one
# whose ROI shows no lesion near its centre gets ``status: no_lesion`` (``flat_lesion``: one
# voxel thick); the radiomics model imputes both and the summary names them. A ROI, GTV, image
# or lung file that cannot be read gives ``status: failed`` and an ``error`` naming the patient and the file;
# the other patients go on. Without ``--segment-dir`` the location features are NaN.

# the table's columns but features; mask: gtv (the collection's contour) or ct_blob
ROW_FACTS = ("patient_id", "status", "has_pet", "mask", "error")


def run_radiomics_stage(
    patients: list[str], *, roi_dir: Path, register_dir: Path | None, segment_dir: Path | None,
    out: Path, settings: dict, roi_settings: dict, threads: int = 1,
) -> pd.DataFrame:  # fmt: skip
    """The features table of every patient (``threads`` at once), written to ``out``, and
    ``out.json`` last; returns the table."""
    started = time.perf_counter()
    compute = partial(
        _patient_row, roi_dir=roi_dir, register_dir=register_dir, segment_dir=segment_dir,
        settings=settings, ct_window=tuple(roi_settings["ct_window"]),
        suv_window=tuple(roi_settings["suv_window"]),
    )  # fmt: skip
    if threads > 1:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            rows = list(pool.map(compute, patients, chunksize=4))
    else:
        rows = [compute(pid) for pid in patients]
    table = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    counts = table.status.value_counts().to_dict()
    not_ok = {s: sorted(table.patient_id[table.status == s]) for s in counts if s != "ok"}
    for status, ids in not_ok.items():
        log.warning("%d patients %s: %s", len(ids), status, ", ".join(ids))
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "status": "ok",
            "n_patients": len(table),
            "counts": counts,
            "masks": table["mask"].value_counts().to_dict() if "mask" in table else {},
            "patients_without_features": not_ok,
            "n_features": len(set(table.columns) - set(ROW_FACTS)),
            "settings": settings,
            "context_parameters": asdict(CONTEXT),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    return table


def _patient_row(
    pid: str, *, roi_dir: Path, register_dir: Path | None, segment_dir: Path | None,
    settings: dict, ct_window, suv_window,
) -> dict:  # fmt: skip
    sidecar_path, npz = roi_dir / f"{pid}.json", roi_dir / f"{pid}.npz"
    lungs = segment_dir / pid / "lungs.nii.gz" if segment_dir else None
    status = read_json(sidecar_path).get("status") if sidecar_path.is_file() else "missing"
    if status != "ok":
        return {"patient_id": pid, "status": "skipped", "has_pet": False}
    patient_register = register_dir / pid if register_dir else None
    try:
        roi = read_lesion_inputs(
            npz, register_dir=patient_register,
            segment_dir=segment_dir / pid if segment_dir else None, settings=settings,
            ct_window=ct_window, suv_window=suv_window,
        )  # fmt: skip
    except (OSError, KeyError, ValueError, EOFError, RuntimeError) as error:
        path = contour_path(patient_register, settings) or npz
        return _failed(pid, f"cannot read the lesion's images: {error}", path)
    try:
        roi["lungs"] = read_lungs(lungs)
    except RuntimeError as error:  # SimpleITK's
        return _failed(pid, f"cannot read the lung labels: {error}", lungs)
    features, status = lesion_features(**roi, settings=settings)
    mask = mask_source(roi["gtv"], settings)
    return {
        "patient_id": pid, "status": status, "has_pet": roi["suv"] is not None, "mask": mask,
        **features,
    }  # fmt: skip


def _failed(pid: str, message: str, path: Path) -> dict:
    failure = PatientInputError(message, patient=pid, file=str(path))
    log.error("%s", failure)
    return {"patient_id": pid, "status": "failed", "has_pet": False, "error": str(failure)}
