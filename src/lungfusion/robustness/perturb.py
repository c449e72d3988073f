"""Test-time perturbations of a patient's model inputs: a misaligned PET, a withheld PET.

A misalignment is a known rigid motion of the registered PET (a translation of ``shift_mm`` in
a direction drawn once per patient, and a rotation of ``rotation_deg`` about a random axis
through the ROI's centre), applied by resampling the registered PET image through that motion
and then sampling the ROI's own grid, exactly as the ROI stage does: the PET moves in the
patient, not by rolling a tensor, so what enters the box from outside it is real PET. The ROI
grid and the CT stay as they were. A withheld PET is the ROI with its PET channel zero and
``has_pet`` false, as the ROI stage writes a CT-only patient.

Directions, axes and the patients whose PET is withheld are drawn from a generator seeded with
the patient's ID, so every model and fold sees the same perturbation of a patient.

>>> import numpy as np
>>> d = shift_direction("P1", seed=0)
>>> bool(np.isclose(np.linalg.norm(d), 1.0)), bool(np.allclose(d, shift_direction("P1", seed=0)))
(True, True)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungfusion.artifacts import read_json
from lungfusion.errors import PatientInputError
from lungfusion.imaging.roi import RoiGrid, extract_roi


def _rng(patient: str, seed: int, purpose: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{purpose}:{patient}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def shift_direction(patient: str, *, seed: int) -> np.ndarray:
    """A unit vector (x, y, z), uniform on the sphere, the same for a patient and seed."""
    vector = _rng(patient, seed, "shift").normal(size=3)
    return vector / np.linalg.norm(vector)


def rotation_axis(patient: str, *, seed: int) -> np.ndarray:
    vector = _rng(patient, seed, "rotation").normal(size=3)
    return vector / np.linalg.norm(vector)


def withheld(patients: list[str], fraction: float, *, seed: int) -> set[str]:
    """The patients whose PET is withheld: the ``fraction`` of ``patients`` (rounded) with the
    lowest seeded draws, so a larger fraction withholds a superset of a smaller one."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop_pet_fraction must lie in [0, 1], got {fraction}")
    order = sorted(patients, key=lambda pid: _rng(pid, seed, "drop").random())
    return set(order[: int(round(fraction * len(patients)))])


def roi_grid(sidecar: dict, ct: sitk.Image) -> RoiGrid:
    """The ROI stage's grid of one patient, from its sidecar's box and the CT's direction."""
    box = sidecar["box"]
    return RoiGrid(
        tuple(box["physical_first_mm"]),
        tuple(box["spacing_mm"]),
        tuple(int(n) for n in box["size_voxels"]),
        ct.GetDirection(),
    )


def rigid_motion(
    centre_mm, shift_mm: np.ndarray, axis: np.ndarray, rotation_deg: float
) -> sitk.Transform:
    """The transform that maps a point of the moved image to where it was: resampling the PET
    through it moves the PET's content by ``shift_mm`` and turns it by ``rotation_deg`` about
    ``axis`` through ``centre_mm``."""
    moved = sitk.VersorRigid3DTransform()
    moved.SetCenter([float(c) for c in centre_mm])
    moved.SetRotation([float(a) for a in axis], float(np.deg2rad(rotation_deg)))
    moved.SetTranslation([float(s) for s in shift_mm])
    return moved.GetInverse()


def misaligned_roi(
    patient: str,
    *,
    register_dir: Path,
    segment_dir: Path,
    roi_sidecar: dict,
    shift_mm: float,
    rotation_deg: float,
    seed: int,
    ct_window,
    suv_window,
) -> dict[str, np.ndarray]:
    """The patient's ROI payload (as the ROI stage writes it) with the PET moved by
    ``shift_mm`` along the patient's direction and turned by ``rotation_deg``."""
    ct, pet, region = (_read(register_dir / "ct.nii.gz", patient),
                       _read(register_dir / "pet.nii.gz", patient),
                       _read(segment_dir / "region.nii.gz", patient))  # fmt: skip
    grid = roi_grid(roi_sidecar, ct)
    if shift_mm or rotation_deg:
        centre = grid.physical_point([(n - 1) / 2.0 for n in grid.size])
        motion = rigid_motion(
            centre,
            shift_mm * shift_direction(patient, seed=seed),
            rotation_axis(patient, seed=seed),
            rotation_deg,
        )
        pet = sitk.Resample(pet, pet, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return extract_roi(ct, pet, region, grid, ct_window=ct_window, suv_window=suv_window)


def without_pet(roi_npz: Path) -> dict[str, np.ndarray]:
    """The ROI payload of ``roi_npz`` with the PET withheld (zeros, ``has_pet`` false)."""
    with np.load(roi_npz) as roi:
        payload = {key: roi[key] for key in roi.files}
    payload["pet"] = np.zeros_like(payload["ct"])
    payload["has_pet"] = np.array(False)
    return payload


def read_roi_sidecar(roi_dir: Path, patient: str) -> dict:
    path = roi_dir / f"{patient}.json"
    if not path.is_file():
        raise PatientInputError("ROI sidecar not found", patient=patient, file=str(path))
    return read_json(path)


def _read(path: Path, patient: str) -> sitk.Image:
    if not path.is_file():
        raise PatientInputError("image not found", patient=patient, file=str(path))
    return sitk.ReadImage(str(path), sitk.sitkFloat32)
