"""MONAI datasets over the ROI tensors, with the training augmentation.

Each record names one patient's ``results/roi/{pid}.npz`` plus its target. ``LoadRoid`` reads
the file into channel-first arrays; ``CacheDataset`` keeps those in memory, and only the random
transforms (flip, small rotation, intensity jitter, optionally a PET-only shift) run again
each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from monai.data import CacheDataset
from monai.transforms import (
    Affine,
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

IMAGE_KEYS = ("ct", "pet")


class LoadRoid(MapTransform):
    """Read ``data["path"]`` (an ROI npz) into ``ct`` and ``pet`` of shape (1, z, y, x) and
    ``has_pet``; PET is zeros where the patient has none. ``spacing`` (the ROI grid's voxel
    size in mm, x y z) comes along where the file holds it: :class:`RandPetShiftd` converts
    millimetres to voxels with it."""

    def __init__(self, path_key: str = "path") -> None:
        super().__init__(keys=[path_key])
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        with np.load(out[self.path_key]) as roi:
            ct = roi["ct"].astype(np.float32)
            pet = roi["pet"].astype(np.float32) if "pet" in roi else np.zeros_like(ct)
            has_pet = bool(roi["has_pet"]) if "has_pet" in roi else bool(pet.any())
            if "spacing" in roi:
                out["spacing"] = roi["spacing"].astype(np.float64)
        if ct.ndim != 3 or pet.shape != ct.shape:
            raise ValueError(
                f"{out[self.path_key]}: expected ct and pet of the same 3D shape, "
                f"got {ct.shape} and {pet.shape}"
            )
        out["ct"], out["pet"], out["has_pet"] = ct[None], pet[None], np.bool_(has_pet)
        return out


class RandPetShiftd(RandomizableTransform, MapTransform):
    """Move the PET alone (not the CT) rigidly by up to ``shift_mm`` millimetres in a random
    direction, with probability ``prob``: the misalignment the robustness sweep tests, as a
    training augmentation. The direction is uniform on the sphere and the length uniform in
    ``[0, shift_mm]``; it becomes voxels through the sample's ``spacing`` (each patient's ROI
    grid has its own) and MONAI's :class:`~monai.transforms.Affine` resamples the PET
    linearly, zeros where it leaves the box."""

    def __init__(self, *, shift_mm: float, prob: float = 0.5, key: str = "pet") -> None:
        if shift_mm < 0 or not 0 <= prob <= 1:
            raise ValueError(f"shift_mm must be >= 0 and prob in [0, 1], got {shift_mm}, {prob}")
        MapTransform.__init__(self, keys=[key])
        RandomizableTransform.__init__(self, prob=prob)
        self.shift_mm, self.key = float(shift_mm), key
        self._offset_mm = np.zeros(3)  # x, y, z

    def randomize(self, data=None) -> None:
        super().randomize(None)
        direction = self.R.normal(size=3)
        length = self.R.uniform(0.0, self.shift_mm)
        self._offset_mm = direction / max(np.linalg.norm(direction), 1e-12) * length

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        if "spacing" not in out:
            raise ValueError(
                f"train.augment.pet_shift_mm needs the ROI's spacing, absent from {out.get('path')}"
            )
        voxels_zyx = (self._offset_mm / np.asarray(out["spacing"], dtype=float))[::-1]
        # Affine's translation maps the output grid into the input: the content moves by -t
        shift = Affine(translate_params=tuple(-voxels_zyx), padding_mode="zeros", image_only=True)
        out[self.key] = np.asarray(shift(out[self.key]), dtype=np.float32)
        return out


def augmentation(
    *,
    flip: bool = True,
    rotate90: bool = False,
    rotate_deg: float = 10.0,
    ct_shift_hu: float = 20.0,
    pet_scale: float = 0.1,
    pet_shift_mm: float = 0.0,
    ct_window: Sequence[float] = (-1024.0, 1024.0),
) -> list:
    """The random transforms; flips and rotations are the same for CT and PET so they stay
    aligned. Intensities move only as much as the modalities vary between scanners: CT is
    calibrated in HU, so it is shifted by up to ``ct_shift_hu`` (given on the ROI's
    ``ct_window``); SUV scales with calibration and uptake time, so PET is multiplied by a
    factor within ``1 +- pet_scale`` (its window starts at 0, so this is a scale of the SUV).
    ``rotate90`` turns the slices by a random multiple of 90 degrees: with the mirror, any of
    the eight in-plane symmetries of the square ROI, for tumour-centred boxes whose class does
    not depend on the orientation. ``pet_shift_mm`` (0: off) moves the PET alone against the
    CT (:class:`RandPetShiftd`), so a network learns to tolerate a residual misregistration."""
    if rotate_deg < 0 or ct_shift_hu < 0 or pet_scale < 0 or pet_shift_mm < 0:
        raise ValueError("rotate_deg, ct_shift_hu, pet_scale and pet_shift_mm must not be negative")
    keys = list(IMAGE_KEYS)
    transforms: list = []
    if flip:  # left-right mirror (x is the last axis)
        transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=2))
    if rotate90:  # k = 0..3 equally likely; (y, x) are spatial axes 1 and 2 of (z, y, x)
        transforms.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(1, 2)))
    if rotate_deg > 0:  # in-plane: about the z axis, the first spatial axis of (C, z, y, x)
        angle = math.radians(rotate_deg)
        transforms.append(
            RandRotated(keys=keys, range_x=angle, prob=0.5, keep_size=True, padding_mode="zeros")
        )
    if ct_shift_hu > 0:
        width = float(ct_window[1]) - float(ct_window[0])
        transforms.append(RandShiftIntensityd(keys=["ct"], offsets=ct_shift_hu / width, prob=0.5))
    if pet_scale > 0:
        transforms.append(RandScaleIntensityd(keys=["pet"], factors=pet_scale, prob=0.5))
    if pet_shift_mm > 0:
        transforms.append(RandPetShiftd(shift_mm=pet_shift_mm, prob=0.5))
    return transforms


def roi_dataset(records: Sequence[dict], *, augment: dict | None = None) -> CacheDataset:
    """An in-memory dataset; ``augment`` (the keyword arguments of :func:`augmentation`) adds
    the random transforms, ``None`` gives the plain evaluation dataset."""
    transforms = [LoadRoid()]
    if augment is not None:
        transforms += augmentation(**augment)
    transforms.append(EnsureTyped(keys=list(IMAGE_KEYS), data_type="tensor", track_meta=False))
    return CacheDataset(
        data=list(records), transform=Compose(transforms), cache_rate=1.0, progress=False
    )


def make_records(
    patients: pd.DataFrame,
    roi_dir: str | Path,
    *,
    task: str = "classification",
    classes: Sequence[str] = (),
    tabular: pd.DataFrame | None = None,
) -> list[dict]:
    """One record per patient: ``patient_id``, ``path``, and ``label`` (class index) or
    ``time`` and ``event``; ``tab`` (float32 vector) when ``tabular`` is given."""
    records = []
    for row in patients.to_dict("records"):
        pid = str(row["patient_id"])
        path = Path(roi_dir) / f"{pid}.npz"
        if not path.exists():
            raise FileNotFoundError(f"ROI file missing for patient {pid}: {path}")
        record = {"patient_id": pid, "path": str(path)}
        if task == "survival":
            record["time"] = np.float32(row["survival_days"])
            record["event"] = np.float32(row["event"])
        else:
            if row["label"] not in classes:
                raise ValueError(f"patient {pid}: label {row['label']!r} not in {list(classes)}")
            record["label"] = np.int64(list(classes).index(row["label"]))
        if tabular is not None:
            record["tab"] = tabular.loc[pid].to_numpy(dtype=np.float32)
        records.append(record)
    return records


def roi_shape(record: dict) -> tuple[int, int, int]:
    """(z, y, x) of a record's ROI tensors, read from the file header."""
    with np.load(record["path"]) as roi:
        return tuple(int(n) for n in roi["ct"].shape)


def split_by_modality(
    patients: pd.DataFrame, modalities: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, excluded): patients lacking an imaging modality the model reads are excluded."""
    keep = pd.Series(True, index=patients.index)
    for modality in ("ct", "pet"):
        column = f"has_{modality}"
        if modality in modalities and column in patients.columns:
            keep &= patients[column].astype(str).str.lower().isin(["true", "1", "yes"])
    return patients[keep], patients[~keep]
