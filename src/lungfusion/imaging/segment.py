"""Lung segmentation without network weights, and the tumour-inclusive cropping region.

Classical pipeline on a CT in HU (any voxel spacing; sizes are given in mm):

1. threshold below ``threshold_hu`` (air and lung parenchyma), less ground glass (-600 HU up
   to the threshold, in regions at least 3 x 3 voxels wide and two slices deep: a tumour's
   rim, not lung; it also keeps such a rim at the pleura from joining lung and outside air);
2. drop the air outside the body: per axial slice, air connected to the slice border;
3. keep the large 3D components (26-connectivity: 6-connectivity cuts lung apices off), and
   pieces of lung that a large tumour cuts off (bowel and stomach gas are much smaller), if
   they lie inside the body (the largest 3D component of non-air: not the CT table's air);
4. remove the airways by region growing from the trachea with an adaptive threshold that
   stops before the growth leaks into the parenchyma;
5. split left and right (the two large components; eroded apart if they touch) and label
   them 1 = right, 2 = left by their physical x (LPS: +x is the patient's left);
6. close each lung in-plane with a small disk (``closing_mm``) and fill holes per slice up to
   a vessel's size (larger holes are tumours, which are not lung), but not with bone or
   ground glass.

The lung mask excludes tumours that are not air-filled, so cropping uses a second mask,
:func:`tumour_inclusive_region`: each lung closed on its own with a large ball, which fills
the concavities a hilar, mediastinal or pleural tumour carves into the lung without bridging
the mediastinum between the two lungs, then limited to soft tissue within ``margin_mm``
(not bone).

Example::

    labels, info = segment_lungs(ct, threshold_hu=-320, closing_mm=3.0)
    region = tumour_inclusive_region(ct, labels, margin_mm=20.0)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lungfusion.artifacts import Timer
from lungfusion.errors import PatientInputError
from lungfusion.imaging.nifti import write_image_atomic
from lungfusion.status import run_patient_stage

log = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2

# In-plane connectivity inside a 3D array: labels and fills slice by slice in one call.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)
_FULL_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LungHeuristics:
    """The classical segmentation's tuning values, with the pipeline's values as defaults;
    each segment sidecar records them under ``parameters.heuristics``. What they were
    measured on is in ``docs/imaging_heuristics.md``."""

    min_lung_ml: float = 10.0  # a lung smaller than this is reported as missing
    min_piece_fraction: float = 0.02  # air bodies this fraction of the largest are lung
    touching_fraction: float = 0.1  # after airway removal, a second part smaller: lungs touch
    trachea_area_mm2: tuple[float, float] = (10.0, 1200.0)  # the trachea at the top of the scan
    airway_max_ml: float = 250.0  # airway tree grown beyond this has leaked into the lungs
    airway_max_fraction: float = 0.05  # ... or beyond this fraction of the air inside the body
    max_hole_mm2: float = 150.0  # per-slice holes up to this area are vessels; larger, tumours
    bone_hu: float = 150.0  # holes and closings denser than this are bone, not vessels
    coarse_mm: float = 4.0  # grid of the large closing in tumour_inclusive_region
    ground_glass_hu: float = -600.0  # ground glass: from this up to the lung threshold
    ground_glass_mm: float = 1.0  # radius of the disk a ground-glass region must fill
    rim_growth_mm: float = 2.0  # a ground-glass rim grows this far in-plane into the region


HEURISTICS = LungHeuristics()
# through thinner voxels of its density (partial volume where the rim is 1-2 voxels thick)


def segment_lungs(
    ct: sitk.Image,
    *,
    threshold_hu: float = -320.0,
    closing_mm: float = 3.0,
    h: LungHeuristics = HEURISTICS,
) -> tuple[sitk.Image, dict]:
    """Label the lungs of a chest CT: 0 background, 1 right lung, 2 left lung.

    Returns the label image (uint8, the CT's geometry) and a dict of facts for the sidecar:
    volumes in mL, the airway threshold used, whether the lungs had to be split, warnings.
    """
    _check_positive("closing_mm", closing_mm, allow_zero=True)
    spacing = np.array(ct.GetSpacing()[::-1], dtype=float)  # z, y, x like the array
    voxel_ml = float(np.prod(spacing)) / 1000.0
    info: dict = {"warnings": []}

    # outside the box of everything from ground glass up all is air joined to the slice
    # border: work inside it (padded past the ground-glass disk, so the opening is exact)
    full = sitk.GetArrayViewFromImage(ct)
    pad = int(np.ceil(h.ground_glass_mm / spacing[1:].min())) + 1
    crop = _bounding_box(full >= h.ground_glass_hu, pad=pad)
    if crop is None:
        raise ValueError("nothing in the CT is denser than air: is it a chest CT in HU?")
    hu = np.asarray(full[crop])
    ground_glass = _ground_glass(hu, threshold_hu, spacing, h)
    air = (hu < threshold_hu) & ~ground_glass
    inside = _inside_body(air)
    bbox = _bounding_box(inside, pad=2)
    if bbox is None:
        raise ValueError("no air-filled region inside the body: is this a chest CT in HU?")
    candidates = _large_components(inside[bbox], _body(air)[bbox], info, h)
    superior_last = ct.GetDirection()[8] >= 0  # is the top of the patient at the last slice?
    airways, info["airway_threshold_hu"] = _airways(
        hu[bbox], candidates, spacing, voxel_ml, superior_last, info["warnings"], h
    )
    info["airway_ml"] = round(float(airways.sum()) * voxel_ml, 1)
    lungs_mask = candidates & ~_dilate_small(airways)
    box = tuple(slice(c.start + b.start, c.start + b.stop) for c, b in zip(crop, bbox, strict=True))
    right, left = _split_left_right(lungs_mask, ct, box, info, h)  # box: bbox in the CT's voxels
    # neither closing nor hole filling may give back bone or ground glass
    allowed = (hu[bbox] < h.bone_hu) & ~ground_glass[bbox]
    right = _smooth(right, closing_mm, spacing, h) & allowed
    left = _smooth(left, closing_mm, spacing, h) & allowed & ~right

    labels = np.zeros(full.shape, dtype=np.uint8)
    labels[box][right] = RIGHT_LUNG
    labels[box][left] = LEFT_LUNG
    info["right_lung_ml"] = round(float(right.sum()) * voxel_ml, 1)
    info["left_lung_ml"] = round(float(left.sum()) * voxel_ml, 1)
    if min(info["right_lung_ml"], info["left_lung_ml"]) < h.min_lung_ml:
        info["warnings"].append(f"only one lung found (the other is below {h.min_lung_ml:g} mL)")
    return _like(labels, ct), info


def tumour_inclusive_region(
    ct: sitk.Image,
    lungs: sitk.Image,
    *,
    margin_mm: float,
    threshold_hu: float = -320.0,
    h: LungHeuristics = HEURISTICS,
) -> sitk.Image:
    """Lungs plus the tissue a tumour at the hilum, mediastinum or pleura would occupy.

    Ground glass touching a lung (``threshold_hu`` as in :func:`segment_lungs`) joins it first,
    with the thinner parts of the rim of the same density (within ``h.rim_growth_mm``): the lungs
    leave a tumour's ground-glass rim out, the region must not. Each lung is closed on its own
    with a ball of radius ``1.5 * margin_mm``, and what the closing adds is kept where it lies
    within ``margin_mm`` of that lung. Concavities the lung wraps around (the hilum, the dent a
    pleural or mediastinal tumour makes) fill; the mediastinum between the two lungs does not,
    because the lungs are never closed together. Bone (``h.bone_hu``) is left out: the
    closing fills the notches ribs make in the lung surface, but a tumour is soft tissue. What
    this was measured on is in ``docs/imaging_heuristics.md``.

    The closing runs on a coarse grid (about 4 mm, aligned with the CT grid) for speed; the
    lungs themselves stay at full resolution. Returns a uint8 mask (1 inside) on the CT grid.
    """
    _check_positive("margin_mm", margin_mm, allow_zero=True)
    labels = sitk.GetArrayViewFromImage(lungs)
    if lungs.GetSize() != ct.GetSize():
        raise ValueError(f"lungs size {lungs.GetSize()} differs from the CT's {ct.GetSize()}")
    region = labels > 0
    if margin_mm == 0 or not region.any():
        return _like(region.astype(np.uint8), ct)
    spacing = np.array(ct.GetSpacing()[::-1], dtype=float)
    factors = np.maximum(1, np.round(h.coarse_mm / spacing)).astype(int)
    box = _aligned_box(region, pad=np.ceil(margin_mm / spacing).astype(int) + 1, factors=factors)
    added = np.zeros(region[box].shape, dtype=bool)
    hu = np.asarray(sitk.GetArrayViewFromImage(ct)[box])
    glass, _ = _label(_ground_glass(hu, threshold_hu, spacing, h))
    # where a rim thins to a voxel or two (narrower than ground glass) it is still rim: grown
    # through such voxels, it encloses its tumour again
    thin = (hu >= h.ground_glass_hu) & (hu < threshold_hu)
    steps = int(np.floor(h.rim_growth_mm / spacing[1:].min() + 0.5))
    for label in (RIGHT_LUNG, LEFT_LUNG):
        lung = labels[box] == label
        # ground glass touching the lung (a tumour's rim, left out of the lungs) is closed with it
        touching = np.unique(glass[_disk_dilation(lung, np.array([1, 1])) & (glass > 0)])
        lung |= _grow_within(np.isin(glass, touching[touching > 0]), thin, steps)
        added |= lung
        coarse = _downsample_any(lung, factors)
        if coarse.any():
            filled = _closing_within(coarse, 1.5 * margin_mm, margin_mm, spacing * factors)
            added |= _upsample(filled & ~coarse, factors, added.shape)
    region[box] |= added
    # the coarse grid's stair steps leave gaps through which a tumour's per-slice hole leaks:
    # close them in-plane (half a coarse voxel) before filling the holes
    radius = np.floor(h.coarse_mm / 2 / spacing[1:]).astype(int)
    closed = _disk_closing(region[box], radius)
    region[box] = _fill_holes(closed) & (hu < h.bone_hu)
    return _like(region.astype(np.uint8), ct)


# --- optional network backends -------------------------------------------------------------

BACKENDS = ("classical", "lungmask", "totalsegmentator")
# TotalSegmentator v2 "total" task label ids of the lung lobes
_TOTALSEG_RIGHT = {
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
}
_TOTALSEG_LEFT = {"lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11}


class BackendUnavailableError(RuntimeError):
    """A configured segmentation backend is not installed or has no local weights."""


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` unless ``backend`` can run offline here."""
    if backend not in BACKENDS:
        raise ValueError(f"segment.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "lungmask":
        _require_module("lungmask", "pip install lungmask")
        import torch

        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        if not list(checkpoints.glob("unet_r231-*.pth")):
            raise BackendUnavailableError(
                f"backend lungmask: no local weights unet_r231-*.pth in {checkpoints}; download "
                "them once (e.g. run lungmask on any CT with network access) or use "
                "segment.backend: classical. Weights are never downloaded during a pipeline run."
            )
    elif backend == "totalsegmentator":
        _require_module("totalsegmentator", "pip install TotalSegmentator")
        weights = _totalseg_weights_dir()
        if not weights.is_dir() or not any(weights.iterdir()):
            raise BackendUnavailableError(
                f"backend totalsegmentator: no local weights in {weights}; run "
                "`totalseg_download_weights -t total` once with network access (or set "
                "TOTALSEG_HOME_DIR) or use segment.backend: classical."
            )


def segment_lungs_with_backend(
    ct: sitk.Image, *, backend: str, threshold_hu: float = -320.0, closing_mm: float = 3.0
) -> tuple[sitk.Image, dict]:
    """Like :func:`segment_lungs`, by the chosen backend (1 right, 2 left in every case)."""
    check_backend(backend)
    if backend == "classical":
        return segment_lungs(ct, threshold_hu=threshold_hu, closing_mm=closing_mm)
    if backend == "lungmask":
        from lungmask import LMInferer  # optional dependency

        array = LMInferer(modelname="R231").apply(ct)  # 1 right, 2 left, like ours
        labels = _like(np.asarray(array, dtype=np.uint8), ct)
    else:
        labels = _run_totalsegmentator(ct)
    return labels, {"warnings": [], **lung_volumes_ml(labels)}


def _run_totalsegmentator(ct: sitk.Image) -> sitk.Image:
    import tempfile

    from totalsegmentator.python_api import totalsegmentator  # optional dependency

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "ct.nii.gz", Path(folder) / "seg.nii.gz"
        sitk.WriteImage(ct, str(source))
        totalsegmentator(
            str(source), str(target), ml=True, quiet=True,
            roi_subset=[*_TOTALSEG_RIGHT, *_TOTALSEG_LEFT],
        )  # fmt: skip
        lobes = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
    labels = np.zeros(lobes.shape, dtype=np.uint8)
    labels[np.isin(lobes, list(_TOTALSEG_RIGHT.values()))] = RIGHT_LUNG
    labels[np.isin(lobes, list(_TOTALSEG_LEFT.values()))] = LEFT_LUNG
    return _like(labels, ct)


def _totalseg_weights_dir() -> Path:
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


def _require_module(name: str, install: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise BackendUnavailableError(
            f"backend {name} is not installed: {install} (with its weights stored locally), "
            "or use segment.backend: classical"
        )


# --- measures --------------------------------------------------------------------------------


def lung_volumes_ml(labels: sitk.Image) -> dict[str, float]:
    """Volumes of the right and left lung and of their union in mL."""
    array = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    right = float((array == RIGHT_LUNG).sum()) * voxel_ml
    left = float((array == LEFT_LUNG).sum()) * voxel_ml
    return {
        "right_ml": round(right, 1),
        "left_ml": round(left, 1),
        "total_ml": round(right + left, 1),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


# --- steps -----------------------------------------------------------------------------------


def _ground_glass(
    hu: np.ndarray, threshold_hu: float, spacing: np.ndarray, h: LungHeuristics
) -> np.ndarray:
    """Ground-glass opacity: voxels from ``h.ground_glass_hu`` up to the threshold that fill an
    in-plane disk of radius about 1 mm (an opening; 3 x 3 voxels at 0.7-1.4 mm pixels), i.e. not
    the one-voxel partial-volume layer at vessels and the pleura. A tumour's ground-glass rim
    is tumour, not lung (the synthetic truth and clinicians' GTVs); foam pads under the patient
    look the same."""
    radius = np.maximum(1, np.floor(h.ground_glass_mm / spacing[1:] + 0.5)).astype(int)
    mid = (hu >= h.ground_glass_hu) & (hu < threshold_hu)
    opened = _disk_dilation(~_disk_dilation(~mid, radius), radius)
    # and at least two slices deep: a diaphragm dome cut obliquely by a thick slice leaves a
    # broad but one-slice layer of the same density
    pairs = opened[:-1] & opened[1:]
    deep = np.zeros_like(opened)
    deep[:-1] |= pairs
    deep[1:] |= pairs
    return deep


def _inside_body(air: np.ndarray) -> np.ndarray:
    """Air not connected, within its axial slice, to the slice border.

    Labelled within the in-plane box of everything denser than air: outside that box all is
    air joined to the slice border, so touching the box's border means touching the slice's."""
    inside = np.zeros_like(air)
    box = _bounding_box(~air, pad=1)
    if box is not None:
        box = (slice(None), *box[1:])
        labels, enclosed = _enclosed_in_slices(air[box])
        inside[box] = enclosed[labels]
    return inside


def _body(air: np.ndarray) -> np.ndarray:
    """The body: the largest 3D component of what is not air, its holes filled per slice.

    A 3D component, so that the CT table (apart from the body) and the air it encloses are
    not the body. Labelled on 2 x 2 in-plane blocks that are not air throughout (cheap, and a
    block never spans a gap, so the table stays apart); where the chest wall is thinner than
    about 3 voxels a slice's lung may stay unfilled, so use it by majority (see below)."""
    labels, count = _label(_downsample_all(~air), fully_connected=False)
    if count == 0:
        return np.zeros_like(air)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = _fill_holes(labels == sizes.argmax())
    return _upsample(body, np.array([1, 2, 2]), air.shape)


def _large_components(
    mask: np.ndarray, body: np.ndarray, info: dict, h: LungHeuristics
) -> np.ndarray:
    """The 26-connected components of at least ``h.min_piece_fraction`` of the largest that
    lie mostly inside the body (the air inside the CT table is enclosed in its slices too)."""
    labels, count = _label(mask)
    if count == 0:
        raise ValueError("no air-filled region inside the body: is this a chest CT in HU?")
    values = labels[mask]  # the labels of the mask's voxels only: much cheaper than all
    sizes = np.bincount(values, minlength=count + 1)
    in_body = np.bincount(values[body[mask]], minlength=count + 1)
    sizes[in_body < 0.5 * sizes] = 0
    keep = sizes >= h.min_piece_fraction * sizes.max()
    keep[0] = False
    info["air_components_kept"] = int(keep.sum())
    kept = np.zeros_like(mask)
    kept[mask] = keep[values]
    return kept


def _airways(
    hu: np.ndarray,
    mask: np.ndarray,
    spacing: np.ndarray,
    voxel_ml: float,
    superior_last: bool,
    warnings: list[str],
    h: LungHeuristics,
) -> tuple[np.ndarray, float | None]:
    """Grow the airway tree from the trachea; raise the threshold while it does not leak."""
    seed = _trachea_seed(mask, spacing, superior_last, h)
    if seed is None:
        warnings.append("trachea not found at the top of the scan: airways not removed")
        return np.zeros_like(mask), None
    # flood fill visits only the airway voxels: much cheaper than labelling the volume
    masked = sitk.GetImageFromArray(np.where(mask, hu, 0).astype(np.int16))
    seed_xyz = [int(i) for i in seed[::-1]]
    best, best_threshold = np.zeros_like(mask), None
    max_voxels = min(h.airway_max_ml / voxel_ml, h.airway_max_fraction * float(mask.sum()))
    for threshold in (-980, -960, -940, -920, -900, -880, -860):
        if hu[seed] >= threshold:
            continue
        grown_image = sitk.ConnectedThreshold(
            masked, seedList=[seed_xyz], lower=-32768, upper=threshold - 1, replaceValue=1
        )
        grown = sitk.GetArrayFromImage(grown_image)  # uint8: counted without a copy to bool
        size, best_size = np.count_nonzero(grown), np.count_nonzero(best)
        if size > max_voxels or (
            best_size and size > 2.5 * best_size and best_size * voxel_ml > 20
        ):
            break
        best, best_threshold = grown, float(threshold)
    if best_threshold is None:
        warnings.append("airway region growing leaked at every threshold: airways not removed")
    return best.astype(bool), best_threshold


def _trachea_seed(
    mask: np.ndarray, spacing: np.ndarray, superior_last: bool, h: LungHeuristics
) -> tuple[int, int, int] | None:
    """A voxel in the trachea: the most medial tube-sized air blob in the topmost slices."""
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    if slices.size == 0:
        return None
    pixel_mm2 = spacing[1] * spacing[2]
    centre_x = mask.shape[2] / 2.0
    top_first = slices[::-1] if superior_last else slices
    for k in top_first[: max(5, slices.size // 4)]:
        labels, count = ndi.label(mask[k])
        best, best_distance = None, np.inf
        for index, blob in enumerate(ndi.find_objects(labels), start=1):
            area = float((labels[blob] == index).sum()) * pixel_mm2
            if not h.trachea_area_mm2[0] <= area <= h.trachea_area_mm2[1]:
                continue
            y, x = ndi.center_of_mass(labels == index)
            distance = abs(x - centre_x) * spacing[2]
            if distance < best_distance and labels[int(round(y)), int(round(x))] == index:
                best, best_distance = (int(k), int(round(y)), int(round(x))), distance
        if best is not None and best_distance < 40.0:
            return best
    return None


def _dilate_small(mask: np.ndarray) -> np.ndarray:
    """Dilation by one voxel (26-neighbourhood), computed on the mask's bounding box only."""
    box = _bounding_box(mask, pad=1)
    dilated = np.zeros_like(mask)
    if box is not None:
        dilated[box] = ndi.binary_dilation(mask[box], _FULL_26)
    return dilated


def _split_left_right(
    mask: np.ndarray, ct: sitk.Image, bbox: tuple[slice, ...], info: dict, h: LungHeuristics
) -> tuple[np.ndarray, np.ndarray]:
    """Two lung masks (right, left) from the air mask with the airways removed.

    The two largest components are the lungs (or the largest, split, when the lungs touch);
    further lung-sized pieces (cut off by a tumour) join the lung nearer along x."""
    labels, count = _label(mask)
    sizes = np.bincount(labels[mask], minlength=3)
    order = np.argsort(sizes)[::-1]
    info["lungs_touching"] = bool(
        count < 2 or sizes[order[1]] < h.touching_fraction * sizes[order[0]]
    )
    if not info["lungs_touching"]:
        first, second = labels == order[0], labels == order[1]
        pieces = order[2:]
    else:
        first, second = _separate_touching(labels == order[0], h)
        pieces = order[1:]
    first_x, second_x = _physical_x(first, ct, bbox), _physical_x(second, ct, bbox)
    pieces = pieces[sizes[pieces] >= h.min_piece_fraction * sizes[order[0]]]
    boxes = ndi.find_objects(labels) if pieces.size else []
    for label in pieces:
        box = boxes[label - 1]
        piece = np.zeros_like(mask)
        piece[box] = labels[box] == label
        x = _physical_x(piece, ct, bbox)
        if abs(x - first_x) <= abs(x - second_x):
            first |= piece
        else:
            second |= piece
    info["lung_pieces_added"] = int(pieces.size)
    if first_x > second_x:
        first, second = second, first  # LPS: larger x is the patient's left
    return first, second


def _separate_touching(mask: np.ndarray, h: LungHeuristics) -> tuple[np.ndarray, np.ndarray]:
    """Erode until two lung-sized parts appear, then give each voxel to the nearest part."""
    eroded = mask
    for _ in range(15):
        eroded = ndi.binary_erosion(eroded, _IN_PLANE)
        labels, count = _label(eroded)
        if count < 2:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= h.touching_fraction * sizes[order[0]]:
            seeds = np.where(labels == order[0] + 1, 1, 0) + np.where(labels == order[1] + 1, 2, 0)
            _, nearest = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            owner = seeds[tuple(nearest)]
            return mask & (owner == 1), mask & (owner == 2)
    return mask, np.zeros_like(mask)


def _physical_x(mask: np.ndarray, ct: sitk.Image, bbox: tuple[slice, ...]) -> float:
    """Physical x of the mask's centroid (from its projections: cheaper than center_of_mass)."""
    total = float(np.count_nonzero(mask))
    if total == 0:
        return np.inf
    index = []
    for axis in (2, 1, 0):  # x, y, z
        other = tuple(a for a in range(3) if a != axis)
        profile = np.count_nonzero(mask, axis=other)
        index.append(float(profile @ np.arange(profile.size)) / total + bbox[axis].start)
    return ct.TransformContinuousIndexToPhysicalPoint(index)[0]


def _smooth(
    mask: np.ndarray, radius_mm: float, spacing: np.ndarray, h: LungHeuristics
) -> np.ndarray:
    """In-plane closing with a disk of ``radius_mm``, then per-slice filling of small holes.

    In-plane, because a ball reaching the next slice bridges the synthetic ribs that notch
    the lung surface, and real lungs gain nothing from it."""
    radius = np.floor(radius_mm / spacing[1:] + 0.5).astype(int)
    box = _bounding_box(mask, pad=int(radius.max()) + 1)
    if box is None:
        return mask
    smooth = np.zeros_like(mask)
    part = _disk_closing(mask[box], radius)
    max_hole_voxels = h.max_hole_mm2 / float(spacing[1] * spacing[2])
    smooth[box] = _fill_small_holes(part, max_hole_voxels)
    return smooth


def _disk_closing(mask: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Closing of each slice with the disk of ``radius`` (y, x voxels), as if the array were
    padded with background (like ITK's safe border)."""
    ry, rx = (int(r) + 1 for r in radius)
    padded = np.pad(mask, [(0, 0), (ry, ry), (rx, rx)])
    closed = ~_disk_dilation(~_disk_dilation(padded, radius), radius)
    return closed[:, ry:-ry, rx:-rx]


def _disk_dilation(mask: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Dilation of each slice by ITK's ball of ``radius`` (y, x voxels): the ellipse with
    semi-axes ``radius + 0.5``, as rows of a growing width (many times faster than scipy's
    or ITK's dilation with the same disk)."""
    ry, rx = (int(r) for r in radius)
    rows = [mask]  # rows[w]: dilated along x by w voxels
    for _ in range(rx):
        wider = rows[-1].copy()
        wider[..., 1:] |= rows[-1][..., :-1]
        wider[..., :-1] |= rows[-1][..., 1:]
        rows.append(wider)
    dilated = rows[rx].copy()
    for dy in range(1, ry + 1):
        width = int(np.floor((rx + 0.5) * np.sqrt(max(0.0, 1 - (dy / (ry + 0.5)) ** 2))))
        dilated[:, dy:] |= rows[width][:, :-dy]
        dilated[:, :-dy] |= rows[width][:, dy:]
    return dilated


def _fill_small_holes(mask: np.ndarray, max_voxels: float) -> np.ndarray:
    """Per-slice hole filling, but only holes up to a vessel's size: a tumour inside the
    lung is not lung (the clinicians' contours and the synthetic truth leave it out)."""
    labels, enclosed = _enclosed_in_slices(~mask)
    small = enclosed & (np.bincount(labels.ravel(), minlength=enclosed.size) <= max_voxels)
    return mask | small[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Per-slice hole filling (labels the background once: faster than binary_fill_holes)."""
    labels, enclosed = _enclosed_in_slices(~mask)
    return mask | enclosed[labels]


def _enclosed_in_slices(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane components of ``mask`` (4-connected) and, per label, whether it stays clear
    of its slice's border."""
    labels, count = ndi.label(mask, _IN_PLANE)
    enclosed = np.ones(count + 1, dtype=bool)
    enclosed[0] = False
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        enclosed[edge] = False
    return labels, enclosed


def _closing_within(
    mask: np.ndarray, radius_mm: float, within_mm: float, spacing: np.ndarray
) -> np.ndarray:
    """Closing with a Euclidean ball (two distance transforms), kept within ``within_mm``;
    computed on the mask's own box, padded just enough for the ball."""
    reach = np.ceil(radius_mm / spacing).astype(int) + 1
    box = _bounding_box(mask, pad=0)
    result = np.zeros_like(mask)
    if box is None:
        return result
    padded = np.pad(mask[box], [(r, r) for r in reach])
    distance = ndi.distance_transform_edt(~padded, sampling=spacing)
    closed = ndi.distance_transform_edt(distance <= radius_mm, sampling=spacing) > radius_mm
    closed &= distance <= within_mm
    # the part of the padded box that lies inside the array
    inner = tuple(
        slice(r - min(r, b.start), r + (b.stop - b.start) + min(r, n - b.stop))
        for r, b, n in zip(reach, box, mask.shape, strict=True)
    )
    outer = tuple(
        slice(b.start - min(r, b.start), b.stop + min(r, n - b.stop))
        for r, b, n in zip(reach, box, mask.shape, strict=True)
    )
    result[outer] = closed[inner]
    return result


def _grow_within(mask: np.ndarray, within: np.ndarray, steps: int) -> np.ndarray:
    """In-plane geodesic dilation: ``mask`` grown ``steps`` times by a 4-neighbourhood, but
    only into ``within``; computed on the mask's bounding box."""
    box = _bounding_box(mask, pad=steps)
    if box is None or steps == 0:
        return mask
    grown = mask.copy()
    grown[box] = ndi.binary_dilation(mask[box], _IN_PLANE, iterations=steps, mask=within[box])
    return grown


def _downsample_any(mask: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Block-wise OR (a coarse voxel is in if any fine voxel is), by strided ORs (about three
    times faster than a reshaped ``any``)."""
    shape = [int(np.ceil(n / f)) for n, f in zip(mask.shape, factors, strict=True)]
    coarse = np.zeros(shape, dtype=bool)
    for offset in np.ndindex(*factors):
        part = mask[tuple(slice(o, None, f) for o, f in zip(offset, factors, strict=True))]
        coarse[tuple(slice(0, n) for n in part.shape)] |= part
    return coarse


def _downsample_all(mask: np.ndarray) -> np.ndarray:
    """In-plane 2 x 2 block-wise AND (strided ANDs: much faster than a reshaped ``all``); the
    odd last row and column count as outside."""
    padded = np.pad(mask, [(0, 0), (0, mask.shape[1] % 2), (0, mask.shape[2] % 2)])
    return padded[:, ::2, ::2] & padded[:, 1::2, ::2] & padded[:, ::2, 1::2] & padded[:, 1::2, 1::2]


def _upsample(mask: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    fine = mask
    for axis, factor in enumerate(factors):
        fine = np.repeat(fine, factor, axis=axis)
    return fine[tuple(slice(0, n) for n in shape)]


# --- helpers ---------------------------------------------------------------------------------


def _bounding_box(mask: np.ndarray, *, pad: int) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, hits[0] - pad), min(mask.shape[axis], hits[-1] + pad + 1)))
    return tuple(box)


def _aligned_box(mask: np.ndarray, *, pad: np.ndarray, factors: np.ndarray) -> tuple[slice, ...]:
    """Bounding box plus ``pad`` voxels, starting on a multiple of ``factors`` so that the
    coarse grid does not move with the mask (results would flicker with the box)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start = max(0, hits[0] - pad[axis]) // factors[axis] * factors[axis]
        box.append(slice(int(start), int(min(mask.shape[axis], hits[-1] + pad[axis] + 1))))
    return tuple(box)


def _label(mask: np.ndarray, *, fully_connected: bool = True) -> tuple[np.ndarray, int]:
    """Like ``ndi.label`` with 26-connectivity (6 with ``fully_connected=False``), by ITK:
    labels numbered in raster order too, and faster."""
    components = sitk.ConnectedComponentImageFilter()
    components.SetFullyConnected(fully_connected)
    labels = components.Execute(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return sitk.GetArrayFromImage(labels), components.GetObjectCount()


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _check_positive(name: str, value: float, *, allow_zero: bool) -> None:
    if not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
        )


# -------------------------------------------------------------------------- the segment stage

STAGE_IMAGES = ("lungs.nii.gz", "region.nii.gz")


def run_segment_stage(patient: str, *, register_dir: Path, out_dir: Path, settings: dict) -> dict:
    """Segment one patient's registered CT with the ``segment`` config section's ``settings``.

    Reads ``{register_dir}/ct.nii.gz`` (HU on the target grid) and ``register.json``; writes
    ``{out_dir}/lungs.nii.gz`` (uint8: 0 background, 1 right lung, 2 left lung),
    ``region.nii.gz`` (uint8 0/1: lungs plus what a hilar, mediastinal or pleural tumour
    occupies, used for cropping and masking) and last ``segment.json`` (status, volumes in mL,
    warnings, timings), which it returns. A backend that cannot run here stops before any
    patient is touched: it would fail them all.
    """
    check_backend(settings["backend"])

    def work(staging: Path, timer: Timer) -> dict:
        result = segment_patient(
            register_dir / "ct.nii.gz", staging, settings=settings, timer=timer
        )
        log.info("patient %s: lungs %.0f mL, region %.0f mL", patient,
                 result["volumes_ml"]["total_ml"], result["region_ml"])  # fmt: skip
        return result

    return run_patient_stage(
        stage="segment",
        patient=patient,
        sidecar_path=out_dir / "segment.json",
        image_dir=out_dir,
        image_names=STAGE_IMAGES,
        record={
            "inputs": {"register_dir": str(register_dir)},
            "parameters": {**settings, "heuristics": asdict(HEURISTICS)},
        },
        work=work,
        upstream={"register": register_dir / "register.json"},
    )


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
        write_image_atomic(lungs, out_dir / "lungs.nii.gz")
        write_image_atomic(region, out_dir / "region.nii.gz")
    volumes = lung_volumes_ml(lungs)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    region_ml = round(float(sitk.GetArrayViewFromImage(region).sum()) * voxel_ml, 1)
    warnings = list(info.pop("warnings", []))
    if volumes["total_ml"] < 500:
        warnings.append(f"lung volume {volumes['total_ml']} mL is implausibly small")
    return {
        "outputs": {"lungs": "lungs.nii.gz", "region": "region.nii.gz"},
        "volumes_ml": volumes,
        "region_ml": region_ml,
        "details": {k: v for k, v in info.items() if not k.endswith("_lung_ml")},
        "warnings": warnings,
    }
