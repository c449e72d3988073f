"""The lesion a ROI box is centred on, as a mask for radiomics features.

The ROI stage centres its box on the lesion (the PET hot spot's CT lesion, or the most
lesion-like CT blob), so the lesion is the CT blob at the box centre. Its candidates are the
ROI stage's own (:func:`lungfusion.imaging.roi.lesion_candidates`): region voxels denser than
aerated lung, ground glass included, opened so that vessels and thin walls come off. The blob
nearest the centre is kept when it reaches within ``max_offset_mm`` of it, and its holes (a
cavity, a necrotic core) are filled: they belong to the lesion. A lesion thinner than the
opening (two slices or fewer at 3.27 mm) leaves no candidate; then the same voxels unopened are
searched, vessels and all.

Where the collection has GTV contours, the radiomics stage takes those instead
(``radiomics.mask: auto``; ingest rasterises them, register and roi carry them along).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from lungfusion.imaging.roi import PLACEMENT, lesion_candidates


def segment_lesion(
    hu: np.ndarray,
    region: np.ndarray,
    spacing_zyx: np.ndarray,
    *,
    max_offset_mm: float,
) -> np.ndarray:
    """Boolean (z, y, x) mask of the lesion at the box centre; all False when none is near
    (``radiomics.max_offset_mm``: the box centre may miss a small lesion by the placement
    error)."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=float)
    for candidates in (
        lesion_candidates(hu, region > 0, spacing_zyx),
        (region > 0) & (hu > PLACEMENT.ct_only_lesion_hu),
    ):
        blob = _blob_at_centre(candidates, spacing_zyx, max_offset_mm)
        if blob is not None:
            return ndi.binary_fill_holes(blob)
    return np.zeros(hu.shape, dtype=bool)


def _blob_at_centre(candidates: np.ndarray, spacing_zyx: np.ndarray, max_offset_mm: float):
    """The connected blob of ``candidates`` nearest the array centre, if within reach."""
    labels, count = ndi.label(candidates)
    if count == 0:
        return None
    centre = (np.asarray(candidates.shape) - 1) / 2.0
    grids = np.ogrid[tuple(slice(0, n) for n in candidates.shape)]
    distance_mm = np.sqrt(
        sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx, strict=True))
    )
    nearest = np.asarray(ndi.minimum(distance_mm, labels=labels, index=np.arange(1, count + 1)))
    best = int(np.argmin(nearest))
    return labels == best + 1 if nearest[best] <= max_offset_mm else None
