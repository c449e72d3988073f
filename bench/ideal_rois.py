"""ROIs as the generator draws them, on the pipeline ROIs' own grids: a diagnostic for
bench_quality.py.

For every patient with a pipeline ROI, the generator's anatomy is rebuilt from the cohort seed
and rendered straight onto that ROI's grid (0.977 x 0.977 x 3.27 mm):
- the CT with the scanner's blur and noise;
- the PET as the true uptake, blurred by the preset's PSF, with its noise.

There is no DICOM, registration, resampling between grids or segmentation (the lung mask is the
truth). Networks trained on these ROIs (`lungfusion train --roi-dir` on this folder, with the
pipeline's folds) and hand measurements from them separate two questions:
- what the pipeline's imaging stages cost;
- what the learners fail to learn from images that do show the latents.

    python bench/ideal_rois.py --workdir bench/_work/quality
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lungfusion.imaging.roi import _scale as scale_to_window  # noqa: E402
from lungfusion.synth import anatomy as anat  # noqa: E402
from lungfusion.synth.cohort import patient_anatomy  # noqa: E402
from lungfusion.synth.ids import patient_ids  # noqa: E402
from lungfusion.synth.presets import get_preset  # noqa: E402

TRUE_LUNG = (anat.LUNG, anat.VESSEL, *anat.TUMOUR_LABELS)  # the lungs with the tumour filled in


def render_roi(anatomy, preset, *, origin, spacing, shape, has_pet: bool, rng) -> dict:
    """HU, SUV (z-y-x) and the true lungs of one patient on an axis-aligned grid (x, y, z)."""
    labels = anat.render_labels(anatomy, origin=origin, spacing=spacing, size=shape)
    hu = anat.hu_image(labels, anatomy, spacing, rng, noise_hu=preset.ct_noise_hu)
    suv = np.zeros_like(hu)
    if has_pet:
        true_suv = anat.suv_image(labels, anatomy, origin=origin, spacing=spacing, size=shape)
        sigma_mm = preset.psf_fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
        blurred = anat.gaussian_blur(true_suv, [sigma_mm / s for s in spacing[::-1]])
        # the generator's PET noise is correlated over ~2 mm; rescaled to unit variance
        noise = anat.gaussian_blur(
            rng.standard_normal(hu.shape, dtype=np.float32), [2.0 / s for s in spacing[::-1]]
        )
        noise /= max(float(noise.std()), 1e-6)
        suv = np.clip(
            blurred + preset.pet_noise * np.sqrt(np.clip(blurred, 0, None)) * noise, 0, None
        )
    return {"hu": hu, "suv": suv, "lungs": np.isin(labels, TRUE_LUNG)}


def merged_config(configs: list[Path]) -> dict:
    """config.yaml with the overlays applied section by section (as Snakemake merges them)."""
    config: dict = {}
    for path in configs:
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
    return config


def write_ideal_rois(workdir: Path, config: dict, out_dir: Path) -> int:
    """One ideal ROI (``PID.npz`` and ``PID.json``, as the ROI stage writes them) per pipeline
    ROI of the bench run in ``workdir`` with the merged ``config``; returns how many."""
    synthetic = workdir / config["synthetic"]["out_dir"]
    cohort = json.loads((synthetic / "ground_truth" / "cohort.json").read_text())
    latents = pd.read_csv(
        synthetic / "ground_truth" / "latents.tsv", sep="\t", dtype={"patient_id": str}
    )
    preset = get_preset(cohort["preset"])
    numbers = {pid: i + 1 for i, pid in enumerate(patient_ids(cohort["n_patients"]))}
    roi_dir = workdir / config["results"] / "roi"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for row in latents.itertuples():
        pid, path = row.patient_id, roi_dir / f"{row.patient_id}.npz"
        if not path.is_file():
            continue
        with np.load(path) as roi:
            origin, spacing = roi["origin"].astype(float), roi["spacing"].astype(float)
            shape = roi["ct"].shape[::-1]
        anatomy = patient_anatomy(
            number=numbers[pid], label=row.label, preset=preset, seed=cohort["seed"]
        )
        has_pet = bool(row.has_pet)
        arrays = render_roi(
            anatomy, preset, origin=origin, spacing=spacing, shape=shape, has_pet=has_pet,
            rng=np.random.default_rng([cohort["seed"], numbers[pid], 99]),
        )  # fmt: skip
        np.savez(
            out_dir / f"{pid}.npz",
            ct=scale_to_window(arrays["hu"], config["roi"]["ct_window"]),
            pet=scale_to_window(arrays["suv"], config["roi"]["suv_window"]),
            lungs=arrays["lungs"].astype(np.uint8),
            has_pet=np.bool_(has_pet),
            spacing=spacing,
            origin=origin,
        )
        (out_dir / f"{pid}.json").write_text(json.dumps({"status": "ok", "has_pet": has_pet}))
        written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "_work" / "quality")
    parser.add_argument("--out", type=Path, default=None, help="default: WORKDIR/ideal_roi")
    parser.add_argument(
        "--configfile", type=Path, nargs="+", default=None,
        help="the run's config files (default: WORKDIR/bench_merged_config.yaml)",
    )  # fmt: skip
    args = parser.parse_args()
    config = merged_config(args.configfile or [args.workdir / "bench_merged_config.yaml"])
    n = write_ideal_rois(args.workdir, config, args.out or args.workdir / "ideal_roi")
    print(f"{n} ideal ROIs written")
    return 0 if n else 1


if __name__ == "__main__":
    raise SystemExit(main())
