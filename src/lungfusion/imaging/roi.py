"""Model-input tensors: a fixed-size box of CT, PET and region mask, windowed to [0, 1].

Every strategy yields a :class:`RoiGrid` (origin, spacing, size, the CT's direction) and the
three images are resampled onto it: CT and PET linearly, the mask by nearest neighbour.
Where the grid leaves the image, CT is padded with the window minimum and PET and mask with
0. On the CT's own grid with an integer start the resampling is an exact copy.

Strategies:

- ``pet_hotspot``: box of ``shape`` voxels on the CT grid around the PET hot spot that
  is most tumour-like (a local SUV maximum near the region, weighted by how much lung
  surrounds it, so the heart wall does not win), centred on the CT lesion holding that hot
  spot when the lung mask shows one (a tumour's hottest part is seldom its centre, and a box
  on the peak cuts the far side off); without PET on the most lesion-like
  CT blob (solid or ground glass, wrapped in aerated lung), else the centre of the region's
  bounding box, recorded as a fallback. ``info["placement"]`` names which;
- ``lungs``: the region's bounding box resampled to ``shape`` (spacing changes per axis);
- ``annotation``: box of ``shape`` voxels centred on the union of the PASCAL VOC boxes of
  Lung-PET-CT-Dx, placed through the ingested CT's slice list (SOPInstanceUID -> slice);
- ``gtv``: box of ``shape`` voxels centred on the contoured GTV (the bounding box of its
  largest part, so a nodal GTV beside the primary does not pull the box off it).

Example::

    grid, info = hotspot_grid(ct, pet, region, shape=(64, 64, 32))
    arrays = extract_roi(ct, pet, region, grid, ct_window=(-1024, 1024), suv_window=(0, 20))
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lungfusion.artifacts import Timer, atomic_path, read_json
from lungfusion.errors import PatientInputError
from lungfusion.status import run_patient_stage

_COARSE_MM = 4.0  # grid of the dilation (cheap, and the hotspot search needs no more)
NPZ_KEYS = ("ct", "pet", "lungs", "has_pet", "spacing", "origin")


@dataclass(frozen=True)
class RoiPlacement:
    """The ROI placement's tuning values (:func:`hotspot_grid`, :func:`ct_lesion_centre`), with
    the values the pipeline uses as defaults; each ROI sidecar records them under
    ``parameters.placement``."""

    hotspot_dilation_mm: float = 10.0  # the SUV maximum may sit just outside the region mask
    hotspot_smooth_mm: float = 2.0  # Gaussian sigma: single-voxel noise must not make a peak
    hotspot_region_bias: float = (
        0.2  # weight of a peak with no region around it (mediastinal nodes)
    )
    hotspot_hot_fraction: float = (
        0.8  # of the peak: a focal lesion's hot volume is small, the heart's not
    )
    hotspot_candidates: int = 15  # distinct hot spots compared, from the hottest down
    hotspot_hot_reach_mm: float = 60.0  # the hot volume is measured in a box of this half-side
    hotspot_ct_weight: float = (
        3.0  # a hot spot at a CT blob wrapped in lung scores up to 1 + this times more
    )
    ct_lesion_hu: tuple[float, float] = (
        -300.0,
        400.0,
    )  # soft tissue: the CT lesion at a PET hot spot
    ct_open_mm: float = 1.0  # opening radius that detaches vessels from that lesion
    ct_only_lesion_hu: float = (
        -650.0
    )  # CT-only candidates: denser than aerated lung, ground glass included
    ct_only_aerated_hu: float = -700.0  # aerated lung, the tissue a tumour's surface faces
    ct_only_open_mm: float = (
        2.5  # in-plane radius of the ellipsoid opening that drops vessels and walls
    )
    ct_only_share_power: float = 2.0  # of a blob's aerated shell share: wrapped in lung beats large
    lesion_search_mm: float = (
        6.0  # the CT lesion must reach this close to the PET peak (PSF, registration)
    )


PLACEMENT = RoiPlacement()


@dataclass(frozen=True)
class RoiGrid:
    """An ROI sampling grid: x, y, z order; direction is the CT's."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    direction: tuple[float, ...]

    def corner_index(self, ct: sitk.Image) -> tuple[list[float], list[float]]:
        """First and last voxel centres of the grid as continuous indices of ``ct``."""
        last = self.physical_point([n - 1 for n in self.size])
        first = ct.TransformPhysicalPointToContinuousIndex(self.origin)
        return [round(v, 3) for v in first], [
            round(v, 3) for v in ct.TransformPhysicalPointToContinuousIndex(last)
        ]

    def physical_point(self, index: list[float]) -> tuple[float, float, float]:
        direction = np.array(self.direction).reshape(3, 3)
        offset = direction @ (np.asarray(index, dtype=float) * np.asarray(self.spacing))
        return tuple(float(v) for v in np.asarray(self.origin) + offset)


def fixed_box_grid(
    ct: sitk.Image, centre_index: list[float], shape: tuple[int, int, int]
) -> RoiGrid:
    """A ``shape`` box on the CT grid (integer start) whose centre is nearest ``centre_index``."""
    _check_shape(shape)
    start = [
        int(np.floor(c - (n - 1) / 2.0 + 0.5)) for c, n in zip(centre_index, shape, strict=True)
    ]
    origin = ct.TransformContinuousIndexToPhysicalPoint([float(s) for s in start])
    return RoiGrid(
        tuple(origin), tuple(ct.GetSpacing()), tuple(int(n) for n in shape), ct.GetDirection()
    )


def gtv_grid(
    ct: sitk.Image, gtv: sitk.Image, shape: tuple[int, int, int]
) -> tuple[RoiGrid, dict] | None:
    """A ``shape`` box on the CT grid centred on the GTV's largest part; None if it is empty.
    ``gtv`` is on the CT's grid (the register stage's)."""
    labels, count = ndi.label(sitk.GetArrayViewFromImage(gtv) > 0)
    if count == 0:
        return None
    largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    info = {"placement": "gtv", "centre_from": "GTV bounding box centre", "gtv_parts": count}
    return fixed_box_grid(ct, _bbox_centre(largest), shape), info


def hotspot_grid(
    ct: sitk.Image,
    pet: sitk.Image | None,
    region: sitk.Image,
    *,
    shape: tuple[int, int, int],
    lungs: sitk.Image | None = None,
    params: RoiPlacement = PLACEMENT,
) -> tuple[RoiGrid, dict]:
    """Box centred on the most tumour-like PET hot spot (centre of the region without PET).

    Candidates are the local maxima of the lightly smoothed SUV inside the dilated region;
    each has a hot spot (connected SUV above ``params.hotspot_hot_fraction`` x its peak) and scores
    ``SUV peak x (region fraction + params.hotspot_region_bias) / hot volume^(1/3) x (1 +
    params.hotspot_ct_weight x CT lesion-likeness)``, the last being the best ``(aerated shell
    share)^params.ct_only_share_power`` of the CT blobs of :func:`ct_lesion_centre` within
    ``params.lesion_search_mm`` of the peak: a low-uptake tumour wrapped in lung then beats a hotter
    mediastinal node, which no such blob holds. The region
    fraction (share of the tumour-inclusive region on the hot spot's one-voxel shell) favours
    lesions in or against the lung over the heart wall and mediastinal nodes, which touch it
    on one side only; the hot volume favours focal uptake over large hot organs such as the
    heart. The region, not the lung mask: a large tumour's hottest part lies inside it, so its
    shell is tumour, which the lung mask leaves out. ``lungs`` is the lung mask; with it the
    box is centred on the CT lesion at the chosen hot spot (:func:`lesion_centre_near`).
    Without PET the box is centred on the CT lesion of :func:`ct_lesion_centre`, or on the
    region when there is none. ``info["placement"]`` names the method used,
    ``info["box_centre"]`` what the box is centred on.
    """
    mask = sitk.GetArrayViewFromImage(region) > 0
    if not mask.any():
        raise PatientInputError("the region mask is empty: cannot place the ROI")
    if pet is None:
        found = ct_lesion_centre(ct, region, params=params)
        if found is not None:
            centre, info = found
            return fixed_box_grid(ct, centre, shape), info
        centre = _bbox_centre(mask)
        info = {
            "centre_from": "region bounding box centre (no PET)",
            "placement": "region_centre",
            "fallback": True,
        }
        return fixed_box_grid(ct, centre, shape), info
    spacing_zyx = np.array(ct.GetSpacing()[::-1])
    suv = ndi.gaussian_filter(
        sitk.GetArrayFromImage(pet).astype(np.float32), params.hotspot_smooth_mm / spacing_zyx
    )
    search = _dilate_coarse(mask, spacing_zyx, params.hotspot_dilation_mm)
    peaks = search & (suv == ndi.maximum_filter(suv, size=3)) & (suv > 0)
    if not peaks.any():  # flat or empty PET: the plain maximum
        peaks = search
    labels, likeness, _, _ = _ct_blobs(ct, region, params)
    lesion_likeness = np.concatenate([[0.0], likeness])[labels]
    best = _best_hot_spot(suv, peaks, mask, spacing_zyx, lesion_likeness, params)
    z, y, x = best["peak"]
    info = {
        "centre_from": (
            f"PET hot spot: SUV peak x (shell region fraction + {params.hotspot_region_bias:g})"
            f" / (volume above {params.hotspot_hot_fraction:g} x peak)^(1/3) x (1 +"
            f" {params.hotspot_ct_weight:g} x CT lesion-likeness), among local maxima in the region"
            f" dilated by {params.hotspot_dilation_mm:g} mm"
        ),
        "placement": "pet_hotspot",
        "fallback": False,
        "suv_max": round(float(sitk.GetArrayViewFromImage(pet)[z, y, x]), 3),
        "suv_peak_smoothed": round(float(suv[z, y, x]), 3),
        "region_fraction": round(best["region_fraction"], 3),
        "hot_volume_ml": round(best["volume_ml"], 3),
        "ct_lesion_likeness": round(best["ct_lesion"], 3),
        "candidates": best["candidates"],
        "hotspot_index": [int(x), int(y), int(z)],
        "box_centre": "PET hot spot",
    }
    centre = [float(x), float(y), float(z)]
    lesion = (
        None
        if lungs is None
        else lesion_centre_near(ct, region, lungs, best["peak"], shape, params=params)
    )
    if lesion is not None:
        centre = lesion
        info["box_centre"] = "CT lesion at the hot spot (its voxels within the box's reach)"
        info["lesion_centre_index"] = [round(v, 2) for v in lesion]
    return fixed_box_grid(ct, centre, shape), info


def _soft_tissue(
    hu: np.ndarray,
    region: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: np.ndarray,
    params: RoiPlacement,
) -> np.ndarray:
    """Soft tissue (``params.ct_lesion_hu``) in the region and outside the lungs, opened by
    ``params.ct_open_mm`` so thin vessels come off the blobs."""
    tissue = region & ~lung & (hu >= params.ct_lesion_hu[0]) & (hu <= params.ct_lesion_hu[1])
    radius = np.round(params.ct_open_mm / spacing_zyx).astype(int)
    return ndi.binary_opening(tissue, structure=np.ones(2 * radius + 1, dtype=bool))


def lesion_candidates(
    hu: np.ndarray, inside: np.ndarray, spacing_zyx: np.ndarray, params: RoiPlacement = PLACEMENT
) -> np.ndarray:
    """Voxels of the region denser than aerated lung (``params.ct_only_lesion_hu``), opened by an
    ellipsoid of in-plane radius ``params.ct_only_open_mm`` so vessels and thin walls come off."""
    structure = _ellipsoid(params.ct_only_open_mm, spacing_zyx)
    return ndi.binary_opening(inside & (hu > params.ct_only_lesion_hu), structure=structure)


def _ct_blobs(ct: sitk.Image, region: sitk.Image, params: RoiPlacement) -> tuple[np.ndarray, ...]:
    """The lesion candidates' blobs (labels) and, per blob, its lesion-likeness
    ``(aerated shell share)^params.ct_only_share_power``, that share and its volume (ml)."""
    spacing_zyx = np.array(ct.GetSpacing()[::-1])
    hu = sitk.GetArrayViewFromImage(ct)
    inside = sitk.GetArrayViewFromImage(region) > 0
    candidates = lesion_candidates(hu, inside, spacing_zyx, params)
    labels, count = ndi.label(candidates)
    # each blob's shell: the voxels just outside it (a 6-neighbour of one of its voxels)
    six = ndi.generate_binary_structure(3, 1)
    shell = np.where(candidates, 0, ndi.grey_dilation(labels, footprint=six))
    index = np.arange(1, count + 1)
    aerated = inside & (hu < params.ct_only_aerated_hu)
    aerated_share = np.nan_to_num(np.asarray(ndi.mean(aerated, labels=shell, index=index)))
    volume_ml = np.asarray(ndi.sum(candidates, labels=labels, index=index)) * spacing_zyx.prod()
    return labels, aerated_share**params.ct_only_share_power, aerated_share, volume_ml / 1e3


def lesion_centre_near(
    ct: sitk.Image,
    region: sitk.Image,
    lungs: sitk.Image,
    peak_zyx: tuple,
    shape: tuple,
    *,
    params: RoiPlacement = PLACEMENT,
) -> list[float] | None:
    """Centre (x, y, z index) of the CT lesion that holds the PET peak, or None.

    The lesion is the soft-tissue blob (``params.ct_lesion_hu``, outside the lung mask) reaching within
    ``params.lesion_search_mm`` of the peak. Only its voxels within half the box of the peak count
    (a tumour grown into the mediastinum or the chest wall joins them in one blob), and the
    centre moves at most a quarter of the box, so the box still holds the hot spot.
    """
    spacing_zyx = np.array(ct.GetSpacing()[::-1])
    reach = np.array(shape[::-1], dtype=float) / 2.0  # voxels, z y x
    peak = np.asarray(peak_zyx, dtype=int)
    margin = np.ceil(reach).astype(int) + 1
    low = np.maximum(peak - margin, 0)
    box = tuple(
        slice(int(a), int(c) + int(m) + 1) for a, c, m in zip(low, peak, margin, strict=True)
    )
    tissue = _soft_tissue(
        sitk.GetArrayViewFromImage(ct)[box],
        sitk.GetArrayViewFromImage(region)[box] > 0,
        sitk.GetArrayViewFromImage(lungs)[box] > 0,
        spacing_zyx,
        params,
    )
    labels, _ = ndi.label(tissue)
    local_peak = peak - low
    grids = np.ogrid[tuple(slice(0, n) for n in tissue.shape)]
    offsets = [g - c for g, c in zip(grids, local_peak, strict=True)]
    near_mm = sum((o * s) ** 2 for o, s in zip(offsets, spacing_zyx, strict=True)) <= (
        params.lesion_search_mm**2
    )
    near_labels = labels[near_mm & tissue]
    if near_labels.size == 0:
        return None
    blob = labels == np.bincount(near_labels).argmax()  # the blob with most voxels near the peak
    blob &= sum((o / r) ** 2 for o, r in zip(offsets, reach, strict=True)) <= 1.0
    if not blob.any():
        return None
    shift = np.asarray(ndi.center_of_mass(blob)) - local_peak
    limit = reach / 2.0
    shift *= min(1.0, 1.0 / max(float(np.sqrt(((shift / limit) ** 2).sum())), 1e-9))
    centre = peak + shift
    z, y, x = (float(v) for v in centre)
    return [x, y, z]


def ct_lesion_centre(
    ct: sitk.Image, region: sitk.Image, *, params: RoiPlacement = PLACEMENT
) -> tuple[list[float], dict] | None:
    """Centre (x, y, z index) of the most lesion-like blob, for CT without PET.

    Candidates are the voxels of the region (the tumour-inclusive lungs) denser than aerated
    lung (``params.ct_only_lesion_hu``), so a tumour's ground-glass rim counts with its solid core:
    after partial volume most voxels of a small tumour lie between -650 and -300 HU, and the
    threshold lung mask holds many of them, so neither soft tissue nor the mask's complement
    finds it. An ellipsoid opening of in-plane radius ``params.ct_only_open_mm`` (one slice each way
    on the 3.27 mm grid) drops vessels, airway and chest walls and structures one or two slices
    thick; the rest is split into blobs. A tumour is wrapped in aerated lung (below
    ``params.ct_only_aerated_hu``), while the hilum, mediastinum and chest wall face it on one side
    only, so each blob scores ``(aerated share of its shell)^params.ct_only_share_power x
    volume^(1/3)``, its shell being the voxels just outside it. None when no blob faces
    aerated lung.
    """
    labels, likeness, aerated_share, volume_ml = _ct_blobs(ct, region, params)
    count = len(volume_ml)
    if count == 0:
        return None
    score = likeness * np.cbrt(volume_ml)
    best = int(score.argmax())
    if score[best] <= 0:
        return None
    z, y, x = ndi.center_of_mass(labels == best + 1)
    info = {
        "centre_from": (
            f"CT blob above {params.ct_only_lesion_hu:g} HU in the region (no PET): (aerated share"
            f" of its shell)^{params.ct_only_share_power:g} x volume^(1/3), best of {count}"
        ),
        "placement": "ct_lesion",
        "fallback": False,
        "blob_volume_ml": round(float(volume_ml[best]), 2),
        "blob_aerated_share": round(float(aerated_share[best]), 3),
        "blob_centre_index": [round(float(v), 2) for v in (x, y, z)],
    }
    return [float(x), float(y), float(z)], info


def lungs_grid(
    ct: sitk.Image, region: sitk.Image, *, shape: tuple[int, int, int]
) -> tuple[RoiGrid, dict]:
    """The region's bounding box resampled to ``shape`` (spacing = extent / shape per axis)."""
    _check_shape(shape)
    mask = sitk.GetArrayViewFromImage(region) > 0
    if not mask.any():
        raise PatientInputError("the region mask is empty: cannot place the ROI")
    low, high = _bbox(mask)  # x, y, z inclusive voxel indices
    spacing = np.array(ct.GetSpacing())
    extent = (np.array(high) - np.array(low) + 1) * spacing  # edge to edge in mm
    new_spacing = extent / np.array(shape)
    # first new voxel centre: half a new voxel inside the box's first edge
    first = np.array(low) - 0.5 + 0.5 * new_spacing / spacing
    origin = ct.TransformContinuousIndexToPhysicalPoint(first.tolist())
    grid = RoiGrid(
        tuple(origin), tuple(float(s) for s in new_spacing), tuple(shape), ct.GetDirection()
    )
    return grid, {
        "centre_from": "region bounding box",
        "lungs_mode": "resampled",
        "fallback": False,
    }


def annotation_grid(
    ct: sitk.Image, boxes_physical: list[np.ndarray], *, shape: tuple[int, int, int]
) -> tuple[RoiGrid, dict]:
    """Box of ``shape`` on the CT grid centred on the union of annotation boxes.

    ``boxes_physical`` holds (n, 3) arrays of physical corner points of each annotated box.
    """
    points = np.concatenate(boxes_physical, axis=0)
    index = np.array([ct.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    centre = (index.min(axis=0) + index.max(axis=0)) / 2.0
    info = {
        "centre_from": f"union of {len(boxes_physical)} annotation boxes",
        "fallback": False,
        "annotation_index_min": np.round(index.min(axis=0), 2).tolist(),
        "annotation_index_max": np.round(index.max(axis=0), 2).tolist(),
    }
    return fixed_box_grid(ct, centre.tolist(), shape), info


def extract_roi(
    ct: sitk.Image,
    pet: sitk.Image | None,
    region: sitk.Image,
    grid: RoiGrid,
    *,
    ct_window: tuple[float, float],
    suv_window: tuple[float, float],
) -> dict[str, np.ndarray]:
    """The NPZ payload: ``ct``, ``pet`` float32 in [0, 1] and ``lungs`` uint8, all (z, y, x)."""
    _check_window("ct_window", ct_window)
    _check_window("suv_window", suv_window)
    ct_roi = _sample(ct, grid, sitk.sitkLinear, float(ct_window[0]))
    payload = {"ct": _scale(ct_roi, ct_window)}
    if pet is not None:
        pet_roi = _sample(pet, grid, sitk.sitkLinear, float(suv_window[0]))
        payload["pet"] = _scale(pet_roi, suv_window)
    else:
        payload["pet"] = np.zeros_like(payload["ct"])
    payload["lungs"] = (_sample(region, grid, sitk.sitkNearestNeighbor, 0.0) > 0).astype(np.uint8)
    payload["has_pet"] = np.array(pet is not None)
    payload["spacing"] = np.asarray(grid.spacing, dtype=np.float64)
    payload["origin"] = np.asarray(grid.origin, dtype=np.float64)
    return payload


# --- annotations (Lung-PET-CT-Dx PASCAL VOC) -------------------------------------------------


def read_voc_boxes(xml_path: str | Path) -> list[dict]:
    """Boxes of one PASCAL VOC file: ``name``, ``xmin``, ``ymin``, ``xmax``, ``ymax`` (pixels)."""
    try:
        root = ET.parse(str(xml_path)).getroot()
    except ET.ParseError as error:
        raise PatientInputError(f"unreadable annotation XML: {error}", file=str(xml_path)) from None
    boxes = []
    for item in root.iter("object"):
        box = item.find("bndbox")
        if box is None:
            continue
        values = {key: float(box.findtext(key, "nan")) for key in ("xmin", "ymin", "xmax", "ymax")}
        if any(np.isnan(v) for v in values.values()):
            raise PatientInputError("annotation box lacks a coordinate", file=str(xml_path))
        boxes.append({"name": item.findtext("name", ""), **values})
    return boxes


def annotation_folder(annotation_dir: str | Path, patient: str) -> Path:
    """``annotation_dir/<letter+digits>`` for IDs like ``Lung_Dx-A0001`` or ``A0001``."""
    match = re.search(r"([A-Za-z]\d+)$", patient)
    key = match.group(1) if match else patient
    for candidate in (Path(annotation_dir) / key, Path(annotation_dir) / patient):
        if candidate.is_dir():
            return candidate
    return Path(annotation_dir) / key


def annotation_boxes_physical(
    annotation_dir: str | Path, patient: str, ct_slices: list[dict], ingest_ct: sitk.Image
) -> tuple[list[np.ndarray], list[str]]:
    """Physical corners of every annotated box of a patient, and the XML files used.

    ``ct_slices`` is the ingest sidecar's list of {sop_instance_uid, frame, index}; box pixels
    (x = column, y = row) on slice ``index`` of the ingested CT map to physical points.
    """
    folder = annotation_folder(annotation_dir, patient)
    slice_of = {s["sop_instance_uid"]: int(s["index"]) for s in ct_slices}
    boxes, used = [], []
    for xml_path in sorted(folder.glob("*.xml")):
        index = slice_of.get(xml_path.stem)
        if index is None:
            continue
        for box in read_voc_boxes(xml_path):
            corners = [
                (x, y, float(index))
                for x in (box["xmin"], box["xmax"])
                for y in (box["ymin"], box["ymax"])
            ]
            points = [ingest_ct.TransformContinuousIndexToPhysicalPoint(c) for c in corners]
            boxes.append(np.array(points))
        used.append(xml_path.name)
    return boxes, used


# --- helpers ---------------------------------------------------------------------------------


def _sample(image: sitk.Image, grid: RoiGrid, interpolator: int, default: float) -> np.ndarray:
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        list(grid.size),
        sitk.Transform(),
        interpolator,
        list(grid.origin),
        list(grid.spacing),
        list(grid.direction),
        default,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def _scale(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = float(window[0]), float(window[1])
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def unscale(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU or SUV back from a ROI tensor windowed to [0, 1] (values outside the window stay
    clipped to its ends)."""
    low, high = float(window[0]), float(window[1])
    return values * (high - low) + low


def _bbox(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """Inclusive bounding box of a (z, y, x) mask as x, y, z lists."""
    low, high = [], []
    for axis in (2, 1, 0):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        low.append(int(hits[0]))
        high.append(int(hits[-1]))
    return low, high


def _bbox_centre(mask: np.ndarray) -> list[float]:
    low, high = _bbox(mask)
    return [(a + b) / 2.0 for a, b in zip(low, high, strict=True)]


def _dilate_coarse(mask: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float) -> np.ndarray:
    """Dilation by about ``radius_mm`` on a ~4 mm grid (block-wise OR), back on the fine grid."""
    factors = np.maximum(1, np.round(_COARSE_MM / spacing_zyx)).astype(int)
    shape = [int(np.ceil(n / f)) for n, f in zip(mask.shape, factors, strict=True)]
    padded = np.zeros([n * f for n, f in zip(shape, factors, strict=True)], dtype=bool)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    coarse = padded.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    coarse = coarse.any(axis=(1, 3, 5))
    distance = ndi.distance_transform_edt(~coarse, sampling=spacing_zyx * factors)
    dilated = distance <= radius_mm
    for axis, factor in enumerate(factors):
        dilated = np.repeat(dilated, factor, axis=axis)
    return dilated[tuple(slice(0, n) for n in mask.shape)]


def _best_hot_spot(
    suv: np.ndarray,
    peaks: np.ndarray,
    region: np.ndarray,
    spacing_zyx: np.ndarray,
    lesion_likeness: np.ndarray,
    params: RoiPlacement,
) -> dict:
    """The most tumour-like of the hot spots at ``peaks`` (see :func:`hotspot_grid`).

    Peaks are visited from the hottest; one inside an already measured hot spot (a plateau
    such as the heart) is skipped, so ``params.hotspot_candidates`` distinct spots are compared.
    """
    covered = np.zeros(suv.shape, dtype=bool)
    order = np.flatnonzero(peaks)
    order = order[np.argsort(suv.ravel()[order])[::-1]]
    best, seen = {"score": -np.inf}, 0
    for flat in order:
        if covered.ravel()[flat]:
            continue
        peak = np.unravel_index(int(flat), suv.shape)
        box, hot = _hot_spot(suv, peak, spacing_zyx, params)
        covered[box] |= hot
        shell = ndi.binary_dilation(hot) & ~hot
        region_fraction = float(region[box][shell].mean()) if shell.any() else 0.0
        volume_ml = float(hot.sum() * spacing_zyx.prod() / 1e3)
        score = suv[peak] * (region_fraction + params.hotspot_region_bias) / np.cbrt(volume_ml)
        ct_lesion = _max_near(lesion_likeness, peak, spacing_zyx, params.lesion_search_mm)
        score *= 1 + params.hotspot_ct_weight * ct_lesion
        if score > best["score"]:
            best = dict(
                score=score, peak=peak, region_fraction=region_fraction, volume_ml=volume_ml,
                ct_lesion=ct_lesion,
            )  # fmt: skip
        seen += 1
        if seen == params.hotspot_candidates:
            break
    return {**best, "candidates": seen}


def _max_near(values: np.ndarray, peak: tuple, spacing_zyx: np.ndarray, radius_mm: float):
    """The largest of ``values`` within ``radius_mm`` of the voxel ``peak`` (z, y, x)."""
    reach = np.round(radius_mm / spacing_zyx).astype(int)
    box = tuple(
        slice(max(0, c - r), min(n, c + r + 1))
        for c, r, n in zip(map(int, peak), reach, values.shape, strict=True)
    )
    grids = np.ogrid[box]
    mm2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, peak, spacing_zyx, strict=True))
    return float(values[box][mm2 <= radius_mm**2].max())  # holds the peak itself


def _hot_spot(
    suv: np.ndarray, peak: tuple, spacing_zyx: np.ndarray, params: RoiPlacement
) -> tuple[tuple, np.ndarray]:
    """The connected voxels above ``params.hotspot_hot_fraction`` x the peak's SUV, in a box."""
    reach = np.ceil(params.hotspot_hot_reach_mm / spacing_zyx).astype(int)
    box = tuple(slice(max(0, int(c) - r), int(c) + r + 1) for c, r in zip(peak, reach, strict=True))
    local_peak = tuple(int(c) - b.start for c, b in zip(peak, box, strict=True))
    labels, _ = ndi.label(suv[box] >= params.hotspot_hot_fraction * suv[peak])
    return box, labels == labels[local_peak]


def _ellipsoid(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid of ``radius_mm`` in voxels (z, y, x); an axis coarser than the
    radius still gets one voxel each way, along the centre line only."""
    radii = np.maximum(np.round(radius_mm / spacing_zyx).astype(int), 1)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True)) <= 1.0


def _check_shape(shape: tuple[int, int, int]) -> None:
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"roi shape must be three positive integers (x, y, z), got {shape!r}")


def _check_window(name: str, window: tuple[float, float]) -> None:
    if len(window) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"{name} must be [low, high] with low < high, got {window!r}")


# ------------------------------------------------------------------------------ the roi stage


def run_roi_stage(
    patient: str,
    *,
    register_dir: Path,
    segment_dir: Path,
    out: Path,
    ingest_dir: Path | None,
    settings: dict,
) -> dict:
    """Crop, window and normalise one patient's model inputs with the ``roi`` config section's
    ``settings``.

    Reads ``{register_dir}/ct.nii.gz``, ``pet.nii.gz`` (absent for CT-only), ``register.json``,
    ``gtv.nii.gz`` (where the collection has contours: the ``gtv`` strategy centres on it),
    ``{segment_dir}/region.nii.gz``, ``lungs.nii.gz``, ``segment.json`` and, for the annotation
    strategy, ``{ingest_dir}/ingest.json`` + ``ct.nii.gz``. Writes ``out`` (``PID.npz``: keys
    ``ct``, ``pet`` float32 (z, y, x) in [0, 1], ``lungs`` uint8 region mask, ``has_pet`` bool,
    ``spacing`` and ``origin`` float64 (3,) x, y, z), ``PID.png`` (QC picture) and last
    ``PID.json`` (status, has_pet, box in voxel and physical coordinates, crop used, warnings),
    which it returns.
    """
    png = out.with_suffix(".png")
    inputs = {"register_dir": str(register_dir), "segment_dir": str(segment_dir)}
    if ingest_dir is not None:
        inputs["ingest_dir"] = str(ingest_dir)

    def work(staging: Path, timer: Timer) -> dict:
        facts = make_roi(
            patient, register_dir=register_dir, segment_dir=segment_dir, ingest_dir=ingest_dir,
            settings=settings, timer=timer, npz_path=staging / out.name,
            png_path=staging / png.name,
        )  # fmt: skip
        facts["outputs"] = {"npz": str(out), "png": str(png)}
        return facts

    return run_patient_stage(
        stage="roi",
        patient=patient,
        sidecar_path=out.with_suffix(".json"),
        image_dir=out.parent,
        image_names=(out.name, png.name),
        record={"inputs": inputs, "parameters": {**settings, "placement": asdict(PLACEMENT)}},
        work=work,
        upstream={
            "register": register_dir / "register.json",
            "segment": segment_dir / "segment.json",
        },
    )


def make_roi(
    patient: str,
    *,
    register_dir: Path,
    segment_dir: Path,
    ingest_dir: Path | None,
    settings: dict,
    timer: Timer,
    npz_path: Path,
    png_path: Path,
) -> dict:
    """Build, save and picture one patient's ROI; returns the sidecar facts."""
    from lungfusion.imaging.qc import roi_qc_png  # matplotlib: only the stage draws

    with timer("read"):
        ct = _read(register_dir / "ct.nii.gz", required=True)
        pet = _read(register_dir / "pet.nii.gz", required=False)
        region = _read(segment_dir / "region.nii.gz", required=True)
        lungs = _read(segment_dir / "lungs.nii.gz", required=False)
        gtv = _read(register_dir / "gtv.nii.gz", required=False)
    shape = tuple(int(n) for n in settings["shape"])
    warnings: list[str] = []
    with timer("place"):
        images = {"ct": ct, "pet": pet, "region": region, "lungs": lungs, "gtv": gtv}
        annotation = (patient, ingest_dir)
        grid, crop_used, info = _place(settings, images, annotation, shape, warnings)
    with timer("extract"):
        payload = extract_roi(
            ct, pet, region, grid,
            ct_window=tuple(settings["ct_window"]), suv_window=tuple(settings["suv_window"]),
        )  # fmt: skip
        with atomic_path(npz_path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **payload)
    first, last = grid.corner_index(ct)
    with timer("qc"):
        roi_qc_png(
            png_path, ct=ct, pet=pet, lungs=lungs, region=region, box_first=first,
            box_last=last, title=f"{patient}: {crop_used} ROI",
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


def _place(settings: dict, images: dict, annotation: tuple, shape, warnings: list) -> tuple:
    """The grid of the requested crop strategy, or of pet_hotspot where it cannot apply."""
    crop = settings["crop"]
    ct, pet, region, lungs, gtv = (images[k] for k in ("ct", "pet", "region", "lungs", "gtv"))
    if crop == "gtv":
        placed = gtv_grid(ct, gtv, shape) if gtv is not None else None
        if placed is not None:
            return placed[0], crop, placed[1]
        warnings.append("no GTV contour for this patient: fell back to pet_hotspot")
    if crop == "lungs":
        grid, info = lungs_grid(ct, region, shape=shape)
        return grid, crop, info
    if crop == "annotation":
        boxes, used = _annotation_boxes(*annotation, settings)
        if boxes:
            grid, info = annotation_grid(ct, boxes, shape=shape)
            return grid, crop, {**info, "annotation_files": used}
        warnings.append("no annotation box matched a CT slice: fell back to pet_hotspot")
    grid, info = hotspot_grid(ct, pet, region, shape=shape, lungs=lungs)
    return grid, "pet_hotspot", info


def _annotation_boxes(patient: str, ingest_dir: Path | None, settings) -> tuple[list, list[str]]:
    if not settings.get("annotation_dir"):
        raise PatientInputError("roi.crop is annotation but roi.annotation_dir is not set")
    if ingest_dir is None:
        raise PatientInputError("roi.crop is annotation but no --ingest-dir was given")
    ingest = read_json(Path(ingest_dir) / "ingest.json")
    slices = ingest.get("ct_slices") or (ingest.get("ct") or {}).get("slices")
    if not slices:
        raise PatientInputError("ingest.json has no ct_slices list", file=str(ingest_dir))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(Path(ingest_dir) / "ct.nii.gz"))
    reader.ReadImageInformation()  # the geometry is enough to place the boxes
    geometry = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    geometry.SetOrigin(reader.GetOrigin())
    geometry.SetSpacing(reader.GetSpacing())
    geometry.SetDirection(reader.GetDirection())
    return annotation_boxes_physical(settings["annotation_dir"], patient, slices, geometry)


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
