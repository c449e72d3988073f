"""Size presets of the synthetic cohort: ``tiny`` (tests), ``default`` (the main job), ``realistic``.

The smaller presets shrink the whole chest (``scale``) so that a CT with 0.7-1.0 mm pixels still
holds the body, and draw the tumour relatively larger (``tumour_scale``) so it keeps voxels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    scale: float  # anatomy size relative to an adult chest
    tumour_scale: float  # tumour size relative to its nominal diameter
    ct_size: int  # CT rows = columns
    ct_spacing_mm: tuple[float, float]  # uniform range of the CT pixel spacing
    ct_thickness_mm: tuple[float, ...]  # CT slice thickness, one drawn per patient
    pet_size: int
    pet_spacing_mm: tuple[float, float]
    pet_thickness_mm: tuple[float, ...]
    psf_fwhm_mm: float
    ct_noise_hu: float
    pet_noise: float  # SD of the PET noise at SUV 1 (scales with sqrt(SUV))


PRESETS = {
    "tiny": Preset(
        name="tiny",
        scale=0.25,
        tumour_scale=0.7,
        ct_size=128,
        ct_spacing_mm=(0.7, 1.0),
        ct_thickness_mm=(2.5, 3.0, 3.27),
        pet_size=48,
        pet_spacing_mm=(2.6, 3.0),
        pet_thickness_mm=(2.5, 3.0, 3.27),
        psf_fwhm_mm=4.0,
        ct_noise_hu=15.0,
        pet_noise=0.10,
    ),
    "default": Preset(
        name="default",
        scale=0.5,
        tumour_scale=0.8,
        ct_size=256,
        ct_spacing_mm=(0.7, 1.0),
        ct_thickness_mm=(2.5, 3.0, 3.27, 4.0, 5.0),
        pet_size=96,
        pet_spacing_mm=(2.6, 3.0),
        pet_thickness_mm=(2.0, 2.5, 3.0, 3.27),
        psf_fwhm_mm=5.0,
        ct_noise_hu=18.0,
        pet_noise=0.12,
    ),
    "realistic": Preset(
        name="realistic",
        scale=1.0,
        tumour_scale=1.0,
        ct_size=512,
        ct_spacing_mm=(0.7, 1.0),
        ct_thickness_mm=(1.25, 2.0, 2.5, 3.0, 3.27, 5.0),
        pet_size=200,
        pet_spacing_mm=(3.5, 4.07),
        pet_thickness_mm=(2.0, 2.79, 3.0, 3.27),
        psf_fwhm_mm=6.5,
        ct_noise_hu=20.0,
        pet_noise=0.15,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
