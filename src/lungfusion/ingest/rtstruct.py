"""RTSTRUCT contours to a binary mask on a reference image's grid.

Used by the ingest stage (a collection's GTV contours, :func:`gtv_mask`), by tests and
benchmarks (clinicians' contours as ground truth) and by any stage that needs a structure on
an image grid. Closed planar contours are filled slice by slice; a
contour nested in another of the same ROI on one slice is a hole (even-odd rule), which is
how treatment planning systems draw rings.

Example::

    ct = sitk.ReadImage(...)
    lungs = rtstruct_to_mask("rtstruct/1-1.dcm", ct, "Lung-Left")
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from lungfusion.errors import PatientInputError


def rtstruct_roi_names(rtstruct_path: str | Path) -> list[str]:
    """Names of the ROIs defined in an RTSTRUCT file."""
    ds = pydicom.dcmread(str(rtstruct_path), stop_before_pixels=True)
    return [str(roi.ROIName) for roi in getattr(ds, "StructureSetROISequence", [])]


def gtv_mask(
    rtstruct_path: str | Path, ct: sitk.Image, *, ct_frame_of_reference: str, pattern: str
) -> tuple[sitk.Image | None, dict]:
    """The union of the RTSTRUCT's ROIs whose name matches ``pattern`` (a regular expression,
    searched case-insensitively), on the CT's grid, and what was found: ``rois``, ``voxels``
    and ``warning`` when there is no mask (another frame of reference, no matching ROI, or
    contours that all miss the CT). Raises PatientInputError for an unreadable file."""
    try:
        ds = pydicom.dcmread(str(rtstruct_path), stop_before_pixels=True)
    except (OSError, InvalidDicomError) as error:
        message = f"cannot read the RTSTRUCT: {error}"
        raise PatientInputError(message, file=str(rtstruct_path)) from error
    frames = {
        str(item.FrameOfReferenceUID)
        for item in getattr(ds, "ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in item
    }
    info: dict = {"file": str(rtstruct_path), "rois": [], "voxels": 0}
    if frames and ct_frame_of_reference and ct_frame_of_reference not in frames:
        info["warning"] = (
            f"RTSTRUCT {rtstruct_path} is drawn in frame of reference {sorted(frames)}, not the "
            f"CT's {ct_frame_of_reference} (tag ReferencedFrameOfReferenceSequence): no GTV"
        )
        return None, info
    names = [str(roi.ROIName) for roi in getattr(ds, "StructureSetROISequence", [])]
    info["rois"] = [name for name in names if re.search(pattern, name, flags=re.IGNORECASE)]
    if not info["rois"]:
        info["warning"] = f"RTSTRUCT {rtstruct_path} has no ROI matching {pattern!r} ({names})"
        return None, info
    union = np.zeros(ct.GetSize()[::-1], dtype=bool)
    for name in info["rois"]:
        union |= sitk.GetArrayFromImage(rtstruct_to_mask(rtstruct_path, ct, name)) > 0
    info["voxels"] = int(union.sum())
    if not info["voxels"]:
        info["warning"] = f"RTSTRUCT {rtstruct_path}: the contours of {info['rois']} miss the CT"
        return None, info
    image = sitk.GetImageFromArray(union.astype(np.uint8))
    image.CopyInformation(ct)
    return image, info


def rtstruct_to_mask(
    rtstruct_path: str | Path, reference_image: sitk.Image, roi_name: str
) -> sitk.Image:
    """Rasterise the ROI ``roi_name`` of an RTSTRUCT onto ``reference_image``'s grid.

    Returns a uint8 ``sitk.Image`` (1 inside, 0 outside) with the reference geometry. Each
    contour is assigned to the nearest slice of the reference grid; contours of one ROI on one
    slice combine by XOR so that inner contours cut holes. Assumes the reference slices are
    parallel to the contour planes (the usual axial case).
    """
    ds = pydicom.dcmread(str(rtstruct_path), stop_before_pixels=True)
    roi_number = _roi_number(ds, roi_name, rtstruct_path)
    contours = _contours(ds, roi_number)
    size = reference_image.GetSize()  # x, y, z
    mask = np.zeros(size[::-1], dtype=bool)  # z, y, x
    for points in contours:
        index = np.array(
            [reference_image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points]
        )
        k = int(round(float(np.median(index[:, 2]))))
        if not 0 <= k < size[2] or len(index) < 3:
            continue
        mask[k] ^= _fill_polygon(index[:, :2], width=size[0], height=size[1])
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference_image)
    return image


def _roi_number(ds: pydicom.Dataset, roi_name: str, path: str | Path) -> int:
    names = {}
    for roi in getattr(ds, "StructureSetROISequence", []):
        names[str(roi.ROIName)] = int(roi.ROINumber)
    if roi_name in names:
        return names[roi_name]
    lowered = {name.lower(): number for name, number in names.items()}
    if roi_name.lower() in lowered:
        return lowered[roi_name.lower()]
    raise PatientInputError(
        f"RTSTRUCT has no ROI named {roi_name!r} (it has {sorted(names)})",
        file=str(path),
        tag="StructureSetROISequence",
    )


def _contours(ds: pydicom.Dataset, roi_number: int) -> list[np.ndarray]:
    """The (n, 3) physical points of every contour of one ROI."""
    for roi_contour in getattr(ds, "ROIContourSequence", []):
        if int(roi_contour.ReferencedROINumber) != roi_number:
            continue
        contours = []
        for contour in getattr(roi_contour, "ContourSequence", []):
            data = np.asarray(contour.ContourData, dtype=float)
            contours.append(data.reshape(-1, 3))
        return contours
    return []


def _fill_polygon(xy: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Scanline fill of a polygon in continuous pixel indices: a pixel is in if its centre is.

    Even-odd rule; each edge counts the rows in [min y, max y) so vertices count once.
    """
    start, end = xy, np.roll(xy, -1, axis=0)
    low, high = np.minimum(start[:, 1], end[:, 1]), np.maximum(start[:, 1], end[:, 1])
    first_row = np.clip(np.ceil(low), 0, height).astype(int)
    last_row = np.clip(np.ceil(high), 0, height).astype(int)  # exclusive
    counts = np.maximum(last_row - first_row, 0)
    edge = np.repeat(np.arange(len(xy)), counts)
    rows = np.concatenate(
        [np.arange(a, b) for a, b in zip(first_row, last_row, strict=True)] or [[]]
    )
    rows = rows.astype(int)
    mask = np.zeros((height, width), dtype=bool)
    if rows.size == 0:
        return mask
    x0, y0, x1, y1 = start[edge, 0], start[edge, 1], end[edge, 0], end[edge, 1]
    crossing = x0 + (rows - y0) * (x1 - x0) / (y1 - y0)
    order = np.lexsort((crossing, rows))
    rows, crossing = rows[order], crossing[order]
    enter = np.clip(np.ceil(crossing[0::2]), 0, width).astype(int)
    leave = np.clip(np.ceil(crossing[1::2]), 0, width).astype(int)
    change = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(change, (rows[0::2], enter), 1)
    np.add.at(change, (rows[0::2], leave), -1)
    return np.cumsum(change, axis=1)[:, :width] > 0
