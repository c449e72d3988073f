"""Resampling onto the pipeline's target grid: the CT's extent, direction and origin, a new spacing.

Images are linear by default (``interpolator`` may be any SimpleITK interpolator, e.g.
``sitk.sitkBSpline`` for smoother intensities); masks always use nearest neighbour.

>>> import SimpleITK as sitk
>>> image = sitk.Image([20, 20, 10], sitk.sitkFloat32)
>>> image.SetSpacing([0.5, 0.5, 1.0])
>>> resample_to_spacing(image, [1.0, 1.0, 2.0]).GetSize()
(10, 10, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import SimpleITK as sitk

# A downsampling step larger than this (new / old spacing) is smoothed first against aliasing.
_ANTIALIAS_RATIO = 1.2


def _check_spacing(spacing: Sequence[float], dimension: int) -> list[float]:
    spacing = [float(s) for s in spacing]
    if len(spacing) != dimension or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be {dimension} positive numbers, got {spacing}")
    return spacing


def target_grid(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """An empty image with ``image``'s origin, direction and physical extent at ``spacing``."""
    spacing = _check_spacing(spacing, image.GetDimension())
    size = [
        max(1, int(round(n * old / new)))
        for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    grid.SetSpacing(spacing)
    return grid


def antialias(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """Gaussian-smooth the axes that ``spacing`` coarsens by more than 20%; others stay as they are.

    The sigma makes the old sampling's blur plus the added blur about one new voxel wide (FWHM).
    """
    old = image.GetSpacing()
    sigmas = [
        math.sqrt(new**2 - o**2) / 2.355 if new > _ANTIALIAS_RATIO * o else 0.0
        for o, new in zip(old, spacing, strict=True)
    ]
    if not any(sigmas):
        return image
    # a zero sigma is not allowed by the filter; a tiny one leaves that axis unchanged
    sigmas = [max(s, 1e-3 * o) for s, o in zip(sigmas, old, strict=True)]
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigmas)


def resample_onto(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid.

    ``transform`` maps reference physical points to ``image`` physical points (SimpleITK's
    convention: for PET onto CT, the CT-to-PET ``pet_to_ct.tfm``); None means identity.
    The output keeps the input's pixel type except that linear or smoother interpolation of an
    integer image gives float32, so HU and SUV are not rounded.
    """
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    pixel_type = image.GetPixelID()
    if interpolator != sitk.sitkNearestNeighbor:
        pixel_type = sitk.sitkFloat32 if image.GetPixelID() != sitk.sitkFloat64 else pixel_type
        image = sitk.Cast(image, pixel_type)
    return sitk.Resample(
        image, reference, transform, interpolator, float(default_value), pixel_type
    )


def resample_to_spacing(
    image: sitk.Image,
    spacing: Sequence[float],
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    transform: sitk.Transform | None = None,
    reference: sitk.Image | None = None,
) -> sitk.Image:
    """Resample ``image`` to ``spacing`` over its own extent (or ``reference``'s, if given).

    Coarser axes are smoothed first against aliasing (not for nearest neighbour).
    """
    grid = target_grid(reference if reference is not None else image, spacing)
    if interpolator != sitk.sitkNearestNeighbor:
        image = antialias(image, grid.GetSpacing())
    return resample_onto(
        image, grid, transform, interpolator=interpolator, default_value=default_value
    )


def resample_mask(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A label image onto ``reference``'s grid by nearest neighbour (labels stay labels)."""
    return resample_onto(mask, reference, interpolator=sitk.sitkNearestNeighbor, default_value=0)
