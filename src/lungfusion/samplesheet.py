"""Read and check the sample sheet: one row per patient, its label and clinical columns.

The sheet may be TSV, CSV or the collection's own XLSX. ``columns`` maps our column names to
the collection's (e.g. ``{"patient_id": "NewPatientID", "m_stage": "Ｍ-Stage"}``). Patient IDs
become folder names, so they must be non-empty, unique and safe as a file name.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

OUR_COLUMNS = (
    "patient_id",
    "label",
    "age",
    "sex",
    "weight_kg",
    "smoking",
    "pack_years",
    "t_stage",
    "n_stage",
    "m_stage",
    "survival_days",
    "event",
)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SampleSheetError(ValueError):
    """A problem in the sample sheet; the message names the column or the row."""


def _normalise_header(name: str) -> str:
    # Full-width letters (Lung-PET-CT-Dx writes "Ｍ-Stage") and stray spaces must still match.
    return unicodedata.normalize("NFKC", str(name)).strip().casefold()


def _read_table(path: Path, sheet_format: str, sheet_name: str | None) -> pd.DataFrame:
    fmt = sheet_format
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".xlsx": "xlsx", ".xls": "xlsx"}.get(
            suffix
        )
        if fmt is None:
            raise SampleSheetError(
                f"{path}: cannot tell the sheet format from '{suffix}'; set cohort.sheet_format"
            )
    if fmt == "xlsx":
        return pd.read_excel(path, sheet_name=sheet_name or 0, dtype=object)
    return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=object, keep_default_na=True)


def _rename_columns(
    table: pd.DataFrame, columns: dict[str, str], path: Path, required: set[str]
) -> pd.DataFrame:
    by_normal = {_normalise_header(c): c for c in table.columns}
    renamed = {}
    for ours, theirs in columns.items():
        actual = by_normal.get(_normalise_header(theirs))
        if actual is None:
            if ours in required:
                raise SampleSheetError(
                    f"{path}: missing column '{theirs}' (cohort.columns.{ours}); "
                    f"the sheet has: {', '.join(map(str, table.columns))}"
                )
            continue
        renamed[actual] = ours
    return table.rename(columns=renamed)[list(renamed.values())]


def _check_ids(ids: pd.Series, path: Path) -> None:
    seen: dict[str, int] = {}
    for index, value in ids.items():
        row = int(index) + 2  # 1-based, after the header line
        text = "" if pd.isna(value) else str(value).strip()
        if not text:
            raise SampleSheetError(f"{path}: row {row}: empty patient ID")
        if text in {".", ".."} or not SAFE_ID.match(text):
            raise SampleSheetError(
                f"{path}: row {row}: patient ID '{text}' is not a safe folder name "
                "(letters, digits, '.', '_' and '-' only, not starting with '.')"
            )
        if text in seen:
            raise SampleSheetError(
                f"{path}: row {row}: patient ID '{text}' duplicates row {seen[text]}"
            )
        seen[text] = row


def _labels_from_ids(ids: pd.Series, pattern: str, mapping: dict[str, str]) -> pd.Series:
    regex = re.compile(pattern)

    def label(pid: str) -> str | None:
        match = regex.search(pid)
        return mapping.get(match.group(1)) if match else None

    return ids.map(label)


def read_sample_sheet(
    path: str | Path,
    *,
    sheet_format: str = "auto",
    sheet_name: str | None = None,
    columns: dict[str, str] | None = None,
    label_from_id: dict | None = None,
    classes: list[str] | None = None,
) -> pd.DataFrame:
    """Return the sheet with our column names, one row per patient, IDs checked and as text
    (the one place they are made strings: later stages read every table's IDs as text).

    Rows whose label is not one of ``classes`` are dropped with a log line (e.g. small-cell
    patients in a two-class ADC/SQC study); a blank label is kept as missing.
    """
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"sample sheet not found: {path}")
    mapping = {name: name for name in OUR_COLUMNS}
    mapping.update(columns or {})
    table = _read_table(path, sheet_format, sheet_name)
    required = {"patient_id"} | (set() if label_from_id else {"label"})
    table = _rename_columns(table, mapping, path, required)
    _check_ids(table["patient_id"], path)
    table["patient_id"] = table["patient_id"].astype(str).str.strip()
    if label_from_id:
        table["label"] = _labels_from_ids(
            table["patient_id"], label_from_id["pattern"], label_from_id["map"]
        )
    table["label"] = table["label"].map(
        lambda v: None if pd.isna(v) or not str(v).strip() else str(v).strip()
    )
    if classes:
        unknown = table["label"].notna() & ~table["label"].isin(classes)
        for pid, label in table.loc[unknown, ["patient_id", "label"]].itertuples(index=False):
            log.info("patient %s: label %r is not one of %s; left out", pid, label, classes)
        table = table.loc[~unknown]
    return table.reset_index(drop=True)


def read_sheet(path: str, cohort: dict, *, keep_all_labels: bool = False):
    """The sample sheet with the ``cohort`` config's reading options."""
    return read_sample_sheet(
        path,
        sheet_format=cohort.get("sheet_format", "auto"),
        sheet_name=cohort.get("sheet_name"),
        columns=cohort.get("columns") or None,
        label_from_id=cohort.get("label_from_id"),
        classes=None if keep_all_labels else cohort.get("classes"),
    )
