"""``lungfusion index``: index a DICOM tree (headers only) and choose each patient's CT, PET and
RTSTRUCT.

Writes ``--out`` (``results/ingest/series.tsv``): one row per series with the columns of
:data:`lungfusion.ingest.index.SERIES_COLUMNS` plus ``files``, ``chosen`` (CT, PT, RTSTRUCT or
empty) and ``reason``; patients of the sample sheet with no DICOM get a row with reason "no DICOM found".
``files`` names the series' file list, ``series_files/<series_uid>.txt`` beside ``--out``
(relative to the folder of ``--out``): one path per line, sorted, so ingest never walks the tree
again. Files under the working directory (the Snakemake workdir) are listed relative to the
list's folder, so a project folder moved as a whole still ingests; others by absolute path.
The lists are written first and series.tsv last (the tracked output).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import atomic_path, write_text_atomic
from lungfusion.ingest.index import SERIES_COLUMNS, index_tree
from lungfusion.ingest.select import choose_series, match_patients, read_overrides
from lungfusion.samplesheet import read_sample_sheet

log = logging.getLogger(__name__)
FILE_LIST_FOLDER = "series_files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dicom-root", default=None, help="DICOM tree (default: cohort.dicom_root)"
    )
    parser.add_argument("--sample-sheet", default=None, help="default: cohort.sample_sheet")
    parser.add_argument("--out", default="results/ingest/series.tsv", help="default: %(default)s")


def _patient_ids(sheet_path: str, cohort: dict) -> list[str]:
    sheet = read_sample_sheet(
        sheet_path,
        sheet_format=cohort.get("sheet_format", "auto"),
        sheet_name=cohort.get("sheet_name"),
        columns=cohort.get("columns") or None,
        label_from_id=cohort.get("label_from_id"),
        classes=cohort.get("classes"),
    )
    return sheet["patient_id"].astype(str).tolist()


def build_series_table(
    dicom_root: str | Path,
    patient_ids: list[str],
    out: str | Path,
    *,
    ct_slice_thickness_mm,
    study_choice: str,
    overrides: dict | None = None,
) -> pd.DataFrame:
    """Index ``dicom_root``, choose the series, write the file lists and ``out``; return it."""
    root = Path(dicom_root)
    if not root.is_dir():
        raise SystemExit(f"DICOM root not found: {root} (cohort.dicom_root)")
    rows, files, unreadable = index_tree(root)
    for path, why in unreadable:
        log.warning("unreadable DICOM file skipped: %s (%s)", path, why)
    log.info("%d series, %d unreadable files under %s", len(rows), len(unreadable), root)
    series = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    series = match_patients(series, patient_ids)
    table = choose_series(
        series,
        patient_ids,
        ct_slice_thickness_mm=tuple(ct_slice_thickness_mm),
        study_choice=study_choice,
        overrides=overrides,
    )
    for column in ("n_images", "n_frames", "rows", "columns", "samples_per_pixel"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")  # no "134.0" beside blanks
    out = Path(out)
    write_file_lists(table, files, out.parent)
    columns = ["patient_id", "chosen", "reason", *SERIES_COLUMNS[1:], "files"]
    order = table["chosen"].map({"CT": 0, "PT": 1, "RTSTRUCT": 2}).fillna(3)
    table = table.assign(_order=order).sort_values(["patient_id", "_order"], kind="stable")
    table = table[columns]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def write_file_lists(table: pd.DataFrame, files: dict[str, list[str]], folder: Path) -> None:
    """Write each indexed series' file list under ``folder`` and name it in ``table.files``."""
    workdir = os.getcwd()  # already a physical path
    lists = str((folder / FILE_LIST_FOLDER).resolve())  # ".." in entries is taken from here
    inside = lists.startswith(workdir + os.sep)
    table["files"] = ""
    for index, uid in table["series_uid"].items():
        if isinstance(uid, str) and uid in files:
            relative = f"{FILE_LIST_FOLDER}/{uid}.txt"
            paths = [os.path.abspath(path) for path in files[uid]]
            if inside:
                paths = [
                    os.path.relpath(p, lists) if p.startswith(workdir + os.sep) else p
                    for p in paths
                ]
            write_text_atomic(folder / relative, "\n".join(paths) + "\n")
            table.loc[index, "files"] = relative


def read_file_list(list_path: Path) -> list[str]:
    """The absolute paths of a file list (relative entries are relative to its folder)."""
    text = list_path.read_text(encoding="utf-8")
    return [str(list_path.parent / line) for line in text.splitlines() if line]


def run(args: argparse.Namespace, config: dict) -> int:
    cohort, ingest = config["cohort"], config["ingest"]
    dicom_root = args.dicom_root or cohort["dicom_root"]
    sheet_path = args.sample_sheet or cohort["sample_sheet"]
    overrides = (
        read_overrides(cohort["series_overrides"]) if cohort.get("series_overrides") else None
    )
    table = build_series_table(
        dicom_root,
        _patient_ids(sheet_path, cohort),
        args.out,
        ct_slice_thickness_mm=ingest["ct_slice_thickness_mm"],
        study_choice=ingest["study_choice"],
        overrides=overrides,
    )
    n_ct = int((table["chosen"] == "CT").sum())
    n_pt = int((table["chosen"] == "PT").sum())
    log.info("chose %d CT and %d PET series; wrote %s", n_ct, n_pt, args.out)
    return 0
