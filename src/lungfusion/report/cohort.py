"""Cohort, exclusion, registration-quality and QC tables from the pipeline's sidecars.

Everything here is read tolerantly: a missing file or key gives an empty cell, never an error,
because the report must still render when a stage failed for some patients. Free text shown
in the report passes through :func:`redact`, so DICOM UIDs (and anything that looks like one)
never reach it; patients are named by the sample sheet's ID only.

>>> redact("series 1.2.840.113619.2.55.3 not found")
'series [UID] not found'
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from lungfusion.status import describe, failure_of

UID_PATTERN = re.compile(r"\b\d+(?:\.\d+){3,}\b")
YES = {"yes", "true", "1"}


def redact(text) -> str:
    """Replace anything shaped like a DICOM UID by ``[UID]``."""
    return UID_PATTERN.sub("[UID]", "" if text is None or text != text else str(text))


def read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _flag(value) -> bool:
    return str(value).strip().lower() in YES


def read_cohort(results: Path) -> pd.DataFrame:
    """``splits/cohort.tsv``, or (when absent) one row per ``roi/{pid}.json``."""
    path = results / "splits" / "cohort.tsv"
    if path.is_file():
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        return table
    rows = []
    for sidecar_path in sorted((results / "roi").glob("*.json")):
        record = read_json_or_none(sidecar_path) or {}
        ok = record.get("status") == "ok"
        rows.append(
            {
                "patient_id": sidecar_path.stem,
                "label": "",
                "included": "yes" if ok else "no",
                "excluded_at": "" if ok else _excluded_at(record, "roi"),
                "reason": "" if ok else _why(record, "roi"),
                "roi_status": record.get("status", "missing"),
                "has_ct": str(ok),
                "has_pet": str(bool(record.get("has_pet", False))),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "patient_id",
            "label",
            "included",
            "excluded_at",
            "reason",
            "roi_status",
            "has_ct",
            "has_pet",
        ],  # fmt: skip
    )


def _why(record: dict, stage: str) -> str:
    """The first failure behind a failed or skipped sidecar, as one line."""
    failure = failure_of(record, stage=stage)
    return describe(failure) if failure else ""


def _excluded_at(record: dict, stage: str) -> str:
    failure = failure_of(record, stage=stage)
    return failure["stage"] if failure else ""


def cohort_summary(cohort: pd.DataFrame, *, classes: list[str]) -> pd.DataFrame:
    """Patients per class: in the sheet, included, with CT+PET or CT only, excluded."""
    if cohort.empty:
        return pd.DataFrame(
            columns=["class", "patients", "included", "CT+PET", "CT only", "excluded"]
        )
    labels = cohort.get("label", pd.Series("", index=cohort.index)).astype(str)
    known = [c for c in classes if (labels == c).any()]
    others = sorted(set(labels) - set(classes))
    rows = []
    for name in [*known, *others, None]:
        part = cohort if name is None else cohort[labels == name]
        included = part[part["included"].map(_flag)]
        with_pet = (
            included["has_pet"].map(_flag) if "has_pet" in included else pd.Series(dtype=bool)
        )
        rows.append(
            {
                "class": "all" if name is None else (name or "(no label)"),
                "patients": len(part),
                "included": len(included),
                "CT+PET": int(with_pet.sum()),
                "CT only": int(len(included) - with_pet.sum()),
                "excluded": int(len(part) - len(included)),
            }
        )
    return pd.DataFrame(rows)


def exclusions(cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per excluded patient: the first stage that failed and its message (redacted)."""
    if cohort.empty:
        return pd.DataFrame(columns=["patient_id", "label", "excluded_at", "reason"])
    excluded = cohort[~cohort["included"].map(_flag)]
    blank = pd.Series("", index=excluded.index)
    return pd.DataFrame(
        {
            "patient_id": excluded["patient_id"],
            "label": excluded.get("label", ""),
            "excluded_at": excluded.get("excluded_at", blank),
            "reason": excluded.get("reason", blank).map(redact),
        }
    ).reset_index(drop=True)


def patient_ids(results: Path, cohort: pd.DataFrame) -> list[str]:
    """Every patient the report knows: the cohort table's, else the ROI sidecars'."""
    if not cohort.empty:
        return sorted(cohort["patient_id"])
    return sorted(p.stem for p in (results / "roi").glob("*.json"))


def _round(value, digits: int = 4):
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return None


def registration_quality(results: Path, patients: list[str]) -> pd.DataFrame:
    """Per patient: Mattes MI before and after, refinement kept, movement, time."""
    rows = []
    for pid in patients:
        record = read_json_or_none(results / "register" / pid / "register.json")
        if record is None:
            continue
        info = record.get("registration") or {}
        timings = record.get("timings_s") or {}
        status = record.get("status", "unknown")
        note = ""
        if status != "ok":
            note = redact(_why(record, "register"))
        elif not record.get("has_pet", bool(info)):
            note = "no PET: nothing to register"
        elif info.get("warnings"):
            note = redact("; ".join(map(str, info["warnings"])))
        elif record.get("warnings"):
            note = redact("; ".join(map(str, record["warnings"])))
        kept = info.get("kept")
        rows.append(
            {
                "patient_id": pid,
                "status": status,
                "method": info.get("method", (record.get("parameters") or {}).get("method", "")),
                "metric_before": _round(info.get("metric_before")),
                "metric_after": _round(info.get("metric_after")),
                "improvement_%": _round(100 * info["relative_improvement"], 2)
                if _round(info.get("relative_improvement")) is not None
                else None,
                "kept": "" if kept is None else ("yes" if kept else "no"),
                "translation_mm": _round(info.get("translation_mm"), 2),
                "rotation_deg": _round(info.get("rotation_deg"), 2),
                "register_s": _round(
                    timings.get("register", (info.get("timings_s") or {}).get("total")), 2
                ),
                "total_s": _round(sum(v for v in timings.values() if isinstance(v, int | float)), 2)
                if timings
                else None,
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def segmentation_volumes(results: Path, patients: list[str]) -> dict[str, float]:
    """Total lung volume (mL) per patient with an ok segmentation, for the QC captions."""
    volumes = {}
    for pid in patients:
        record = read_json_or_none(results / "segment" / pid / "segment.json") or {}
        total = (record.get("volumes_ml") or {}).get("total_ml")
        if record.get("status") == "ok" and total is not None:
            volumes[pid] = float(total)
    return volumes


def qc_entries(results: Path, patients: list[str]) -> list[dict]:
    """Per patient with a QC picture: its path, ROI status, crop, lung volume, warnings."""
    volumes = segmentation_volumes(results, patients)
    entries = []
    for pid in patients:
        png = results / "roi" / f"{pid}.png"
        record = read_json_or_none(results / "roi" / f"{pid}.json") or {}
        entries.append(
            {
                "patient_id": pid,
                "png": png if png.is_file() else None,
                "status": record.get("status", "missing"),
                "crop": record.get("crop_used", ""),
                "has_pet": bool(record.get("has_pet", False)),
                "lung_ml": volumes.get(pid),
                "warnings": [redact(w) for w in record.get("warnings", [])],
                "reason": "" if record.get("status") == "ok" else redact(_why(record, "roi")),
            }
        )
    return entries


def pattern_counts(results: Path) -> pd.DataFrame:
    """How many patients each late-fusion integrator scored with which submodels."""
    rows = []
    for summary_path in sorted((results / "integrate").glob("*/summary.json")):
        summary = read_json_or_none(summary_path) or {}
        for pattern, count in (summary.get("pattern_counts") or {}).items():
            rows.append(
                {"integrator": summary_path.parent.name, "pattern": pattern, "patients": int(count)}
            )
    return pd.DataFrame(rows, columns=["integrator", "pattern", "patients"])
