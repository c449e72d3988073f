"""``lungfusion radiomics``: the lesion's IBSI radiomics features for every patient's ROI.

Reads the ROI stage's ``{roi_dir}/{pid}.json`` and ``{pid}.npz`` for each patient of the sample
sheet, the segment stage's ``{segment_dir}/{pid}/lungs.nii.gz`` for the location features and,
where a collection has contours, the register stage's ``{register_dir}/{pid}/gtv.nii.gz`` with
its images (the lesion is then the GTV). Writes ``{out}`` (a TSV: ``patient_id``, ``status``,
``has_pet``, ``mask`` (gtv or ct_blob), then the features, see
:mod:`lungfusion.imaging.radiomics`) and last ``{out}.json`` (counts, settings, timings).
A patient whose ROI stage failed or was skipped gets ``status: skipped`` and no features; one
whose ROI shows no lesion near its centre gets ``status: no_lesion`` (``flat_lesion``: one
voxel thick); the radiomics model imputes both and the summary names them. A ROI, GTV, image
or lung file that cannot be read gives ``status: failed`` and an ``error`` naming the patient and the file;
the other patients go on. Without ``--segment-dir`` the location features are NaN.
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import atomic_path, read_json, write_json_atomic
from lungfusion.errors import PatientInputError
from lungfusion.imaging.radiomics import (
    contour_path,
    lesion_features,
    mask_source,
    radiomics_settings,
    read_lesion_inputs,
    read_lungs,
)
from lungfusion.samplesheet import read_sheet

log = logging.getLogger(__name__)
# the table's columns but features; mask: gtv (the collection's contour) or ct_blob
ROW_FACTS = ("patient_id", "status", "has_pet", "mask", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-sheet", required=True, type=Path)
    parser.add_argument("--roi-dir", required=True, type=Path, help="results/roi")
    parser.add_argument("--segment-dir", type=Path, help="results/segment: the lung labels")
    parser.add_argument(
        "--register-dir", type=Path, help="results/register: the GTV contours, where there are"
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="results/radiomics/features.tsv")
    parser.add_argument("--threads", type=int, default=1, help="patients computed at once")


def run(args: argparse.Namespace, config: dict) -> int:
    started = time.perf_counter()
    settings = radiomics_settings(config.get("radiomics"))
    roi = config["roi"]
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    patients = [str(p) for p in sheet.patient_id]
    compute = partial(
        _patient_row, roi_dir=Path(args.roi_dir), register_dir=args.register_dir,
        segment_dir=args.segment_dir, settings=settings,
        ct_window=tuple(roi["ct_window"]), suv_window=tuple(roi["suv_window"]),
    )  # fmt: skip
    if args.threads > 1:
        with ProcessPoolExecutor(max_workers=args.threads) as pool:
            rows = list(pool.map(compute, patients, chunksize=4))
    else:
        rows = [compute(pid) for pid in patients]
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    counts = table.status.value_counts().to_dict()
    not_ok = {s: sorted(table.patient_id[table.status == s]) for s in counts if s != "ok"}
    for status, ids in not_ok.items():
        log.warning("%d patients %s: %s", len(ids), status, ", ".join(ids))
    write_json_atomic(
        args.out.with_suffix(".json"),
        {
            "status": "ok",
            "n_patients": len(table),
            "counts": counts,
            "masks": table["mask"].value_counts().to_dict() if "mask" in table else {},
            "patients_without_features": not_ok,
            "n_features": len(set(table.columns) - set(ROW_FACTS)),
            "settings": settings,
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    return 0


def _patient_row(
    pid: str, *, roi_dir: Path, register_dir: Path | None, segment_dir: Path | None,
    settings: dict, ct_window, suv_window,
) -> dict:  # fmt: skip
    sidecar_path, npz = roi_dir / f"{pid}.json", roi_dir / f"{pid}.npz"
    lungs = segment_dir / pid / "lungs.nii.gz" if segment_dir else None
    status = read_json(sidecar_path).get("status") if sidecar_path.is_file() else "missing"
    if status != "ok":
        return {"patient_id": pid, "status": "skipped", "has_pet": False}
    patient_register = register_dir / pid if register_dir else None
    try:
        roi = read_lesion_inputs(
            npz, register_dir=patient_register,
            segment_dir=segment_dir / pid if segment_dir else None, settings=settings,
            ct_window=ct_window, suv_window=suv_window,
        )  # fmt: skip
    except (OSError, KeyError, ValueError, EOFError, RuntimeError) as error:
        path = contour_path(patient_register, settings) or npz
        return _failed(pid, f"cannot read the lesion's images: {error}", path)
    try:
        roi["lungs"] = read_lungs(lungs)
    except RuntimeError as error:  # SimpleITK's
        return _failed(pid, f"cannot read the lung labels: {error}", lungs)
    features, status = lesion_features(**roi, settings=settings)
    mask = mask_source(roi["gtv"], settings)
    return {
        "patient_id": pid, "status": status, "has_pet": roi["suv"] is not None, "mask": mask,
        **features,
    }  # fmt: skip


def _failed(pid: str, message: str, path: Path) -> dict:
    failure = PatientInputError(message, patient=pid, file=str(path))
    log.error("%s", failure)
    return {"patient_id": pid, "status": "failed", "has_pet": False, "error": str(failure)}
