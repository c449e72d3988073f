"""Writing images: compressed NIfTI, all or nothing (a killed job leaves no half-written file)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from lungfusion.artifacts import atomic_path


def write_image_atomic(image: sitk.Image, path: str | Path) -> None:
    """A SimpleITK image to ``path`` (compressed NIfTI), all or nothing."""
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
