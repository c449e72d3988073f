"""Lesion features pyradiomics has no class for: where the lesion sits in its lung, where its
PET hot spot sits against its CT's densest part, and the few descriptors a radiologist reads.

- ``loc_*``: the radiologist's central/peripheral call. On the lesion centre's axial slice of
  the lung mask, ``loc_lateral_fraction`` is the centre's left-right position across its lung,
  0 at (or medial to) the lung's mediastinal edge and 1 at its costal edge;
  ``loc_inner_third`` is 1 when the lesion reaches the inner third (its innermost voxel's
  position under 1/3, as in the central-tumour definitions: a large hilar mass may be centred
  mid-lung). The lesion's side is the lung label nearest its centre; the midline lies halfway
  between the two lungs' centroids.
- ``ctpet_*``: metabolic against morphologic structure, from the ROI alone. The CT dense part
  is the centroid of the lesion's densest 3% (HU smoothed by ``LesionContext.dense_smooth_mm``, weighted by
  how far each voxel exceeds that cut); the PET hot spot is the SUV-weighted centroid of the
  lesion voxels at or above ``LesionContext.hot_fraction`` of its SUVmax. Offsets are from the lesion's
  centroid, in units of its equivalent-sphere radius: ``ctpet_dense_hot_distance``,
  ``ctpet_offset_cosine`` (+1: the hot spot lies on the dense side; -1: opposite),
  ``ct_dense_offset`` and ``pet_hot_offset``.
- ``sem_*``: the semantic descriptors, on scales a linear model can use: ``sem_log_volume_ml``,
  ``sem_solid_fraction`` (the share of the lesion at or above ``LesionContext.solid_hu``: the solid
  proportion of a part-solid nodule), ``sem_cavity_fraction`` (air below ``LesionContext.cavity_hu`` inside
  the filled lesion), and with PET ``sem_log_suvmax`` and ``sem_pet_core_ratio`` (mean SUV
  within ``LesionContext.core_radii`` of the centroid over SUVmax: a photopenic, necrotic core is low).

They are written here because neither IBSI nor pyradiomics defines them; they are plain
centroid geometry and voxel counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi


@dataclass(frozen=True)
class LesionContext:
    """The context features' cut-offs, with the pipeline's values as defaults; the radiomics
    stage records them in ``features.json``."""

    dense_quantile: float = 0.97  # the dense part is a few percent of a lesion
    dense_smooth_mm: float = 0.7  # a Gaussian sigma that averages CT noise, not the dense part
    hot_fraction: float = 0.9  # of SUVmax: the PET hot spot
    inner_third: float = 1.0 / 3.0  # of the lung's width from the mediastinum: central
    solid_hu: float = -300.0  # ground glass lies below, solid tissue above
    cavity_hu: float = -900.0  # air inside the filled lesion
    core_radii: float = 0.45  # of the lesion's equivalent-sphere radius: the necrotic core


CONTEXT = LesionContext()


def _centroid_mm(mask: np.ndarray, spacing_zyx: np.ndarray, weights=None) -> np.ndarray:
    coords = np.argwhere(mask) * spacing_zyx
    return np.average(coords, axis=0, weights=weights)


def ctpet_offsets(
    hu: np.ndarray,
    suv: np.ndarray,
    lesion: np.ndarray,
    spacing_zyx: np.ndarray,
    *,
    params: LesionContext = CONTEXT,
) -> dict[str, float]:
    """The ``ctpet_*``, ``ct_dense_offset`` and ``pet_hot_offset`` features of one lesion."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=float)
    centre, radius = _centroid_mm(lesion, spacing_zyx), _equivalent_radius(lesion, spacing_zyx)
    smooth = _smooth(hu, spacing_zyx, params)
    cut = np.quantile(smooth[lesion], params.dense_quantile)
    dense = lesion & (smooth >= cut)
    dense_offset = _centroid_mm(dense, spacing_zyx, weights=smooth[dense] - cut + 1.0) - centre
    uptake = np.where(lesion, suv, 0.0)
    hot = lesion & (uptake >= params.hot_fraction * uptake.max())
    hot_offset = _centroid_mm(hot, spacing_zyx, weights=uptake[hot]) - centre
    lengths = np.linalg.norm(dense_offset), np.linalg.norm(hot_offset)
    cosine = float(dense_offset @ hot_offset / (lengths[0] * lengths[1])) if min(lengths) else 0.0
    return {
        "ctpet_dense_hot_distance": float(np.linalg.norm(dense_offset - hot_offset) / radius),
        "ctpet_offset_cosine": cosine,
        "ct_dense_offset": float(lengths[0] / radius),
        "pet_hot_offset": float(lengths[1] / radius),
    }


def semantic_descriptors(
    hu: np.ndarray,
    suv: np.ndarray | None,
    lesion: np.ndarray,
    spacing_zyx: np.ndarray,
    *,
    params: LesionContext = CONTEXT,
) -> dict[str, float]:
    """The ``sem_*`` features of one lesion (the PET ones only with ``suv``)."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=float)
    volume_ml = lesion.sum() * spacing_zyx.prod() / 1e3
    features = {
        "sem_log_volume_ml": float(np.log(volume_ml)),
        "sem_solid_fraction": float(
            (_smooth(hu, spacing_zyx, params)[lesion] >= params.solid_hu).mean()
        ),
        "sem_cavity_fraction": float((hu[lesion] < params.cavity_hu).mean()),
    }
    if suv is None:
        return features
    suvmax = float(suv[lesion].max())
    grids = np.ogrid[tuple(slice(0, n) for n in lesion.shape)]
    centre = _centroid_mm(lesion, spacing_zyx)
    distance = np.sqrt(
        sum((g * s - c) ** 2 for g, s, c in zip(grids, spacing_zyx, centre, strict=True))
    )
    core = lesion & (distance <= params.core_radii * _equivalent_radius(lesion, spacing_zyx))
    features["sem_log_suvmax"] = float(np.log(max(suvmax, 0.1)))
    features["sem_pet_core_ratio"] = float(suv[core].mean() / suvmax) if core.any() else np.nan
    return features


def _smooth(hu: np.ndarray, spacing_zyx: np.ndarray, params: LesionContext) -> np.ndarray:
    return ndi.gaussian_filter(hu.astype(np.float32), params.dense_smooth_mm / spacing_zyx)


def _equivalent_radius(lesion: np.ndarray, spacing_zyx: np.ndarray) -> float:
    return float((3.0 * lesion.sum() * spacing_zyx.prod() / (4.0 * np.pi)) ** (1.0 / 3.0))


def lesion_points_physical(lesion: np.ndarray, origin_xyz, spacing_xyz, direction) -> np.ndarray:
    """Physical (x, y, z) mm of every lesion voxel of a ROI grid (origin, spacing, direction)."""
    index_xyz = np.argwhere(lesion)[:, ::-1].astype(float)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    offsets = (index_xyz * np.asarray(spacing_xyz, dtype=float)) @ matrix.T
    return np.asarray(origin_xyz, dtype=float) + offsets


def lung_location(
    lungs: sitk.Image, points_xyz: np.ndarray, *, params: LesionContext = CONTEXT
) -> dict[str, float]:
    """The ``loc_*`` features of a lesion whose voxels are at physical ``points_xyz`` mm (n, 3),
    from the segment stage's lung labels (1 right, 2 left); NaN when its slice shows no lung."""
    index = _continuous_index(lungs, np.atleast_2d(points_xyz))
    x, y, z = index.mean(axis=0)
    labels = sitk.GetArrayViewFromImage(lungs)
    k = int(round(z))
    if not 0 <= k < labels.shape[0] or not labels[k].any():
        return {"loc_lateral_fraction": float("nan"), "loc_inner_third": float("nan")}
    axial = labels[k]
    cols = np.nonzero((axial == _nearest_label(axial, (y, x))).any(axis=0))[0]
    midline = _midline_column(labels)
    medial, lateral = sorted((cols.min(), cols.max()), key=lambda c: abs(c - midline))
    width, outward = max(abs(lateral - medial), 1), np.sign(lateral - medial)

    def across(column):  # 0 at (or medial to) the mediastinal edge, 1 at the costal edge
        return float(np.clip((column - medial) * outward / width, 0.0, 1.0))

    innermost = across(index[:, 0][np.argmin(np.abs(index[:, 0] - midline))])
    return {
        "loc_lateral_fraction": across(x),
        "loc_inner_third": float(innermost < params.inner_third),
    }


def _continuous_index(image: sitk.Image, points_xyz: np.ndarray) -> np.ndarray:
    """``TransformPhysicalPointToContinuousIndex`` for many points at once."""
    matrix = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    relative = points_xyz - np.asarray(image.GetOrigin(), dtype=float)
    return (relative @ matrix) / np.asarray(image.GetSpacing(), dtype=float)


def _midline_column(labels: np.ndarray) -> float:
    """Halfway between the two lungs' centroids; the image's centre without two lungs."""
    centres = [np.nonzero(labels == label)[2] for label in (1, 2)]
    if all(c.size for c in centres):
        return float(np.mean([c.mean() for c in centres]))
    return (labels.shape[2] - 1) / 2.0


def _nearest_label(axial: np.ndarray, point_yx) -> int:
    _, (iy, ix) = ndi.distance_transform_edt(axial == 0, return_indices=True)
    py = int(np.clip(round(point_yx[0]), 0, axial.shape[0] - 1))
    px = int(np.clip(round(point_yx[1]), 0, axial.shape[1] - 1))
    return int(axial[iy[py, px], ix[py, px]])
