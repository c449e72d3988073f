"""One patient's chosen CT (HU) and PET (SUVbw) into NIfTI: the ingest stage.

Reads the patient's rows of the series table (written by ``lungfusion index``) and their file
lists. Writes into the patient's folder: ``ct.nii.gz`` (HU; int16 when exact, else float32),
``pet_suv.nii.gz`` (SUVbw, float32; absent for a CT-only patient), ``gtv.nii.gz`` (uint8 on the
CT's grid: the union of the chosen RTSTRUCT's ROIs matching ``ingest.gtv_roi_pattern``; absent
without one) and ``ingest.json`` last: ``status`` ok or failed, ``has_pet``, the series used,
the SUV factor and its rule, warnings, timings and ``ct_slices`` (SOPInstanceUID, frame, index
of the slice in ct.nii.gz). A bad input (PatientInputError) gives ``status: failed`` with the
error and no image.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungfusion.artifacts import Timer
from lungfusion.errors import PatientInputError
from lungfusion.imaging.nifti import write_image_atomic
from lungfusion.ingest.index import read_file_list
from lungfusion.ingest.rtstruct import gtv_mask
from lungfusion.ingest.series import read_ct_series, read_pet_suv
from lungfusion.status import run_patient_stage

IMAGES = ("ct.nii.gz", "pet_suv.nii.gz", "gtv.nii.gz")
SERIES_KEYS = ("series_uid", "study_uid", "series_description", "modality", "n_images", "reason")


def run_ingest_stage(patient: str, *, series: Path, out_dir: Path, settings: dict) -> dict:
    """Ingest one patient into ``out_dir`` with the ``ingest`` config section's ``settings``;
    returns the sidecar written last."""

    def work(staging: Path, timer: Timer) -> dict:
        result = ingest_patient(patient, series, staging, settings)
        timer.seconds.update(result.pop("timings"))
        return result

    return run_patient_stage(
        stage="ingest",
        patient=patient,
        sidecar_path=out_dir / "ingest.json",
        image_dir=out_dir,
        image_names=IMAGES,
        record={"inputs": {"series": str(series)}, "parameters": dict(sorted(settings.items()))},
        work=work,
    )


def _chosen(table: pd.DataFrame, patient: str, modality: str, series_path: Path):
    rows = table[(table["patient_id"] == patient) & (table["chosen"] == modality)]
    if rows.empty:
        return None, []
    row = rows.iloc[0]
    return row, read_file_list(series_path.parent / row["files"])


def _why_no_ct(table: pd.DataFrame, patient: str) -> str:
    reasons = table.loc[table["patient_id"] == patient, "reason"].dropna().astype(str).tolist()
    if not reasons:
        return "patient not in the series index"
    return "no usable CT series: " + "; ".join(sorted(set(reasons)))


def ingest_patient(patient: str, series_path: Path, out_dir: Path, options: dict) -> dict:
    """Read and write one patient's volumes; return the sidecar fields (raises on bad input)."""
    timer = Timer()
    table = pd.read_csv(series_path, sep="\t", dtype=str, keep_default_na=False)
    ct_row, ct_files = _chosen(table, patient, "CT", series_path)
    if ct_row is None:
        raise PatientInputError(_why_no_ct(table, patient), patient=patient)
    reader_options = {
        "spacing_tolerance_mm": options["spacing_tolerance_mm"],
        "missing_slice": options["missing_slice"],
        "patient": patient,
    }
    with timer("read_ct"):
        ct, ct_info = read_ct_series(ct_files, series=ct_row["series_uid"], **reader_options)
    with timer("write_ct"):
        write_image_atomic(ct, out_dir / "ct.nii.gz")
    warnings = [f"CT: {w}" for w in ct_info["warnings"]]
    pet_row, pet_files = _chosen(table, patient, "PT", series_path)
    pet_info = None
    pet_path = out_dir / "pet_suv.nii.gz"
    if pet_row is not None:
        with timer("read_pet"):
            pet, pet_info = read_pet_suv(
                pet_files,
                series=pet_row["series_uid"],
                weight_fallback_kg=options["weight_fallback_kg"],
                dose_fallback_bq=options["dose_fallback_bq"],
                **reader_options,
            )
        with timer("write_pet"):
            write_image_atomic(pet, pet_path)
        warnings += [f"PET: {w}" for w in pet_info["warnings"]]
    else:
        pet_path.unlink(missing_ok=True)  # a stale PET from an earlier choice would mislead
        warnings.append("no usable PET: CT-only")
    with timer("gtv"):
        gtv = _ingest_gtv(table, patient, series_path, ct, ct_row, out_dir, options, warnings)
    return {
        "has_pet": pet_row is not None,
        "gtv": gtv,
        "ct": _series_record(ct_row, ct_info, len(ct_files)),
        "pet": _series_record(pet_row, pet_info, len(pet_files)) if pet_row is not None else None,
        "suv_factor": pet_info["suv_factor"] if pet_info else None,
        "suv_rule": pet_info["suv_rule"] if pet_info else None,
        "ct_slices": ct_info["slices"],
        "warnings": warnings,
        "timings": timer.seconds,
        "outputs": {
            "ct": "ct.nii.gz",
            **({"pet": "pet_suv.nii.gz"} if pet_info else {}),
            **({"gtv": "gtv.nii.gz"} if gtv and gtv["voxels"] else {}),
        },
    }


def _ingest_gtv(table, patient, series_path, ct, ct_row, out_dir, options, warnings) -> dict | None:
    """Write the chosen RTSTRUCT's GTV onto the CT's grid; its record, None without one. A
    GTV that cannot be used is a warning: the images are still good."""
    path = out_dir / "gtv.nii.gz"
    path.unlink(missing_ok=True)  # a stale GTV from an earlier choice would mislead
    row, files = _chosen(table, patient, "RTSTRUCT", series_path)
    pattern = options.get("gtv_roi_pattern")
    if row is None or not pattern or not files:
        return None
    try:
        mask, info = gtv_mask(
            files[0], ct, ct_frame_of_reference=ct_row.get("frame_of_reference", ""),
            pattern=pattern,
        )  # fmt: skip
    except PatientInputError as error:
        error.patient = patient
        warnings.append(f"RTSTRUCT: {error}")
        return None
    if "warning" in info:
        warnings.append(f"RTSTRUCT: {info.pop('warning')}")
    if mask is not None:
        write_image_atomic(mask, path)
    return {"series_uid": row["series_uid"], **info}


def _series_record(row, info: dict, n_files: int) -> dict:
    record = {key: row.get(key) for key in SERIES_KEYS}
    keep = ("size", "spacing", "origin", "direction", "tilt_deg", "resampled", "transfer_syntax")
    record.update({key: info.get(key) for key in keep})
    record["slice_gap_jitter_mm"] = info.get("slice_gap_jitter_mm")
    record["n_files"] = n_files
    return record
