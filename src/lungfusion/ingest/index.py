"""Walk a DICOM tree reading headers only and summarise it as one row per series.

Any folder layout and file names; files that are not DICOM and DICOMDIR are skipped, and files
that look like DICOM but cannot be read are returned in ``unreadable`` (the command logs them).
Only the tags the selection needs are parsed (``specific_tags``), pixels never.

Each series row (see :data:`SERIES_COLUMNS`) carries geometry in the units named by the column;
``coverage_mm`` is the extent along the slice normal from the first to the last slice centre
plus one slice thickness. Files of a series whose geometry (rows, columns, orientation) differs
from the series' majority (a localizer filed under the same UID, say) are left out of its file
list and counted in ``note``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from lungfusion.artifacts import atomic_path, write_text_atomic
from lungfusion.errors import PatientInputError
from lungfusion.ingest.select import choose_series, match_patients

log = logging.getLogger(__name__)
FILE_LIST_FOLDER = "series_files"

HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "SeriesTime",
    "AcquisitionTime",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "PatientID",
    "SliceThickness",
    "PatientPosition",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "CorrectedImage",
    "Units",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
SPECIFIC_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

SERIES_COLUMNS = (
    "patient_id",
    "study_uid",
    "series_uid",
    "modality",
    "sop_class",
    "image_type",
    "series_description",
    "n_images",
    "n_frames",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "coverage_mm",
    "orientation",
    "patient_position",
    "photometric",
    "samples_per_pixel",
    "units",
    "corrected_image",
    "frame_of_reference",
    "series_date",
    "series_time",
    "folder",
    "note",
)


@dataclass
class FileHeader:
    path: str
    ds: pydicom.Dataset


def _read_header(path: str) -> pydicom.Dataset | None:
    """The header, or None for a file that is not DICOM. Raises for a broken DICOM file."""
    with open(path, "rb") as handle:
        handle.seek(128)
        if handle.read(4) != b"DICM":
            return None  # no DICOM preamble: a README, a spreadsheet, a picture...
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=SPECIFIC_TAGS)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while many small header objects are made and all kept:
    the collector's passes over them are wasted work that grows with what is already held."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@gc_paused()
def walk_headers(root: str | Path) -> tuple[list[FileHeader], list[tuple[str, str]]]:
    """Every DICOM image header under ``root`` and the (path, reason) of unreadable files."""
    headers: list[FileHeader] = []
    unreadable: list[tuple[str, str]] = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders.sort()
        for name in sorted(names):
            if name.upper() == "DICOMDIR":
                continue
            path = os.path.join(folder, name)
            try:
                ds = _read_header(path)
            except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
                unreadable.append((path, f"{type(exc).__name__}: {exc}"))
                continue
            if ds is None:
                continue
            media_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
            if media_class == DICOMDIR_CLASS:
                continue
            if "SeriesInstanceUID" not in ds and "Rows" not in ds:  # cut short in its header
                unreadable.append((path, "no SeriesInstanceUID (truncated file?)"))
                continue
            headers.append(FileHeader(path, ds))
    return headers, unreadable


# ---------------------------------------------------------------- per-series summary


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    """A UID of the dataset, or, where an anonymiser blanked it there, of the file meta."""
    meta = {
        "SOPClassUID": "MediaStorageSOPClassUID",
        "SOPInstanceUID": "MediaStorageSOPInstanceUID",
    }
    value = _text(ds, keyword)
    if not value and keyword in meta:
        value = str(getattr(getattr(ds, "file_meta", None), meta[keyword], "") or "").strip()
    return value


def series_key(header: FileHeader, root: Path) -> tuple[str, str]:
    """The file's series UID, and a warning when it is a stand-in.

    A blank SeriesInstanceUID (some anonymisers drop it) is replaced by a UID derived from the
    frame of reference, orientation, pixel spacing and folder, so a series split only by its
    UID is still read whole and apart from the other series of its folder.
    """
    ds = header.ds
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid, ""
    orientation = _floats(_plane(ds, "ImageOrientationPatient", "PlaneOrientationSequence") or [])
    spacing = _floats(_plane(ds, "PixelSpacing", "PixelMeasuresSequence") or [])
    parts = (
        _text(ds, "FrameOfReferenceUID"),
        str(np.round(orientation, 3).tolist() if orientation is not None else ""),
        str(np.round(spacing, 4).tolist() if spacing is not None else ""),
        os.path.relpath(os.path.dirname(header.path), root),
        _text(ds, "Modality"),
    )
    warning = (
        "SeriesInstanceUID (0020,000E) blank: files grouped by frame of reference, orientation, "
        "pixel spacing and folder under a stand-in UID"
    )
    return generate_uid(entropy_srcs=["lungfusion-blank-series", *parts]), warning


def _floats(value) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None


def _plane(ds: pydicom.Dataset, keyword: str, sequence: str):
    """A plane tag from the top level or the first frame of an enhanced multi-frame header."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and sequence in items[0]:
            return items[0][sequence][0].get(keyword)
    return None


def _frame_positions(ds: pydicom.Dataset) -> list[np.ndarray]:
    if "ImagePositionPatient" in ds:
        position = _floats(ds.ImagePositionPatient)
        return [] if position is None else [position]
    positions = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        if "PlanePositionSequence" in item:
            position = _floats(item.PlanePositionSequence[0].get("ImagePositionPatient"))
            if position is not None:
                positions.append(position)
    return positions


def orientation_label(orientation: np.ndarray | None) -> str:
    """axial, coronal, sagittal (slice normal within ~25 degrees of an axis) or oblique."""
    if orientation is None or orientation.shape != (6,):
        return ""
    normal = np.cross(orientation[:3], orientation[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _geometry_key(ds: pydicom.Dataset) -> tuple:
    orientation = _floats(_plane(ds, "ImageOrientationPatient", "PlaneOrientationSequence") or [])
    rounded = tuple(np.round(orientation, 2)) if orientation is not None else ()
    return (ds.get("Rows"), ds.get("Columns"), rounded)


def summarise_series(
    files: list[FileHeader], root: Path, *, series_uid: str | None = None, warning: str = ""
) -> tuple[dict, list[str]]:
    """One series row and its file list (the files of the majority geometry).

    ``series_uid`` names a series whose files carry no UID (see :func:`series_key`); ``warning``
    says so in the row's ``note``."""
    keys = [_geometry_key(f.ds) for f in files]
    majority, _ = Counter(keys).most_common(1)[0]
    kept = [f for f, key in zip(files, keys, strict=True) if key == majority]
    left_out = len(files) - len(kept)
    first = kept[0].ds
    orientation = _floats(
        _plane(first, "ImageOrientationPatient", "PlaneOrientationSequence") or []
    )
    spacing = _floats(_plane(first, "PixelSpacing", "PixelMeasuresSequence") or [])
    thickness = _floats([_plane(first, "SliceThickness", "PixelMeasuresSequence")])
    thickness_mm = float(thickness[0]) if thickness is not None else None
    positions = [p for f in kept for p in _frame_positions(f.ds)]
    coverage = None
    if orientation is not None and orientation.shape == (6,) and positions:
        normal = np.cross(orientation[:3], orientation[3:])
        along = np.array([p @ normal for p in positions])
        coverage = float(along.max() - along.min()) + (thickness_mm or 0.0)
    folders = sorted({os.path.relpath(os.path.dirname(f.path), root) for f in kept})
    notes = [warning, f"{left_out} file(s) with other geometry left out" if left_out else ""]
    if not _text(first, "SOPClassUID") and _uid(first, "SOPClassUID"):
        notes.append("SOPClassUID (0008,0016) blank: the file meta's MediaStorageSOPClassUID used")
    n_frames = sum(int(f.ds.get("NumberOfFrames", 1) or 1) for f in kept)
    row = {
        "patient_id": _text(first, "PatientID"),
        "study_uid": _text(first, "StudyInstanceUID"),
        "series_uid": series_uid or _text(first, "SeriesInstanceUID"),
        "modality": _text(first, "Modality"),
        "sop_class": _uid(first, "SOPClassUID"),
        "image_type": _text(first, "ImageType"),
        "series_description": _text(first, "SeriesDescription"),
        "n_images": len(kept),
        "n_frames": n_frames,
        "rows": first.get("Rows"),
        "columns": first.get("Columns"),
        "pixel_spacing_mm": "\\".join(f"{v:g}" for v in spacing) if spacing is not None else "",
        "slice_thickness_mm": thickness_mm,
        "coverage_mm": round(coverage, 3) if coverage is not None else None,
        "orientation": orientation_label(orientation),
        "patient_position": _text(first, "PatientPosition"),
        "photometric": _text(first, "PhotometricInterpretation"),
        "samples_per_pixel": first.get("SamplesPerPixel"),
        "units": _text(first, "Units"),
        "corrected_image": _text(first, "CorrectedImage"),
        "frame_of_reference": _text(first, "FrameOfReferenceUID"),
        "series_date": _text(first, "SeriesDate") or _text(first, "StudyDate"),
        "series_time": _text(first, "SeriesTime") or _text(first, "AcquisitionTime"),
        "folder": ";".join(folders),
        "note": "; ".join(note for note in notes if note),
    }
    return row, sorted(f.path for f in kept)


def index_tree(root: str | Path) -> tuple[list[dict], dict[str, list[str]], list[tuple[str, str]]]:
    """Series rows, the files of each series (by series UID) and the unreadable files."""
    root = Path(root).resolve()
    headers, unreadable = walk_headers(root)
    by_series: dict[str, list[FileHeader]] = defaultdict(list)
    warnings: dict[str, str] = {}
    for header in headers:
        uid, warning = series_key(header, root)
        by_series[uid].append(header)
        if warning:
            warnings[uid] = warning
    rows, files = [], {}
    for series_uid in sorted(by_series):
        row, paths = summarise_series(
            by_series[series_uid], root, series_uid=series_uid, warning=warnings.get(series_uid, "")
        )
        rows.append(row)
        files[series_uid] = paths
    return rows, files, unreadable


# ------------------------------------------------------------------ the series table on disk


def build_series_table(
    dicom_root: str | Path,
    patient_ids: list[str],
    out: str | Path,
    *,
    ct_slice_thickness_mm,
    study_choice: str,
    overrides: dict | None = None,
) -> pd.DataFrame:
    """Index ``dicom_root``, choose the series, write the file lists and ``out``; return it.

    ``out`` (``results/ingest/series.tsv``) holds one row per series with the columns of
    :data:`SERIES_COLUMNS` plus ``files``, ``chosen`` (CT, PT, RTSTRUCT or empty) and
    ``reason``; patients with no DICOM get a row with reason "no DICOM found". The file lists
    are written first and ``out`` last (the tracked output).
    """
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


def index_one_patient(
    dicom_dir: Path, out: Path, patient: str, *, ct_slice_thickness_mm, study_choice: str
) -> Path:
    """Index a folder as ONE patient (``lungfusion predict``), choose its series and write
    ``out`` as :func:`build_series_table` does; the folder's PatientID is replaced by
    ``patient``."""
    if not dicom_dir.is_dir():
        raise PatientInputError(f"DICOM folder not found: {dicom_dir}", patient=patient)
    rows, files, _ = index_tree(dicom_dir)
    series = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    if series.empty:
        raise PatientInputError(f"no readable DICOM series under {dicom_dir}", patient=patient)
    n_ids = series["patient_id"].nunique()
    if n_ids > 1:  # the IDs themselves may be PHI: give only their number
        raise PatientInputError(
            f"{dicom_dir} holds {n_ids} DICOM PatientIDs; give one patient's folder",
            patient=patient,
        )
    series["patient_id"] = patient
    table = choose_series(
        series,
        [patient],
        ct_slice_thickness_mm=tuple(ct_slice_thickness_mm),
        study_choice=study_choice,
    )
    write_file_lists(table, files, out.parent)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return out


def write_file_lists(table: pd.DataFrame, files: dict[str, list[str]], folder: Path) -> None:
    """Write each indexed series' file list under ``folder`` and name it in ``table.files``.

    ``series_files/<series_uid>.txt``: one path per line, sorted, so ingest never walks the
    tree again. Files under the working directory (the Snakemake workdir) are listed relative
    to the list's folder, so a project folder moved as a whole still ingests; others by
    absolute path.
    """
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
