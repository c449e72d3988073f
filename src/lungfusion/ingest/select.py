"""Choose each patient's CT and PET series from the index, and say why for every series.

- CT: an ORIGINAL CT image series (not a localizer, secondary capture, RGB or fused image) with
  at least :data:`MIN_SLICES` slices and a slice thickness within the configured limits; axial
  first (a non-axial series is chosen only when no axial one qualifies), then the best coverage
  (within 20 mm or 10% of the best counts as equal), then the thinnest slices, then the most
  images.
- Several studies: ``study_choice`` first narrows the CTs to one study's. ``paired`` (the
  default) keeps the CTs that have an attenuation-corrected PET in their frame of reference,
  else in their study, so a PET/CT study wins over an earlier CT-only one; ``latest`` and
  ``earliest`` keep the CTs of the study scanned last or first (by series date; an
  undated study is neither, and without any dates the CT rules decide).
- PET: an attenuation-corrected PET image series (``CorrectedImage`` has ATTN) in BQML, CNTS or
  GML, in the chosen CT's frame of reference or study (frame of reference first), closest in
  time to the CT.
- An override (patient, modality) -> series UID wins over the rules.
- A patient with no usable CT gets no choice (its ingest fails with the reasons); one with no
  usable PET is CT-only, and its CT row says so.

``chosen`` is ``CT``, ``PT`` or empty; ``reason`` is one short sentence per series.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

import pandas as pd

from lungfusion.ingest.suv import combine, parse_date, parse_time

MIN_SLICES = 3
COVERAGE_MARGIN_MM = 20.0
COVERAGE_MARGIN_FRACTION = 0.1
CT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
PET_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
PET_UNITS = ("BQML", "CNTS", "GML")
FUSED_WORDS = ("FUSED", "FUSION")
STUDY_CHOICES = ("paired", "latest", "earliest")


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(number) else number


def _image_problem(row: Mapping, classes: dict[str, str]) -> str | None:
    """Why a series can never be a CT or PET volume, or None."""
    sop_class = _text(row.get("sop_class"))
    image_type = _text(row.get("image_type")).upper().split("\\")
    description = _text(row.get("series_description")).upper()
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    if (
        _number(row.get("samples_per_pixel")) not in (None, 1.0)
        or "RGB" in _text(row.get("photometric")).upper()
    ):
        return "colour (RGB) image"
    if any(word in description or word in image_type for word in FUSED_WORDS):
        return "fused image"
    if "LOCALIZER" in image_type or "SCOUT" in description or "TOPOGRAM" in description:
        return "localizer"
    if sop_class not in classes:
        return f"SOP class {sop_class or 'missing'} is not a {'/'.join(classes.values())}"
    if (_number(row.get("n_frames")) or 0) < MIN_SLICES:
        return f"fewer than {MIN_SLICES} slices"
    return None


def ct_problem(row: Mapping, thickness_limits: tuple[float, float]) -> str | None:
    if _text(row.get("modality")) != "CT":
        return "not CT"
    problem = _image_problem(row, CT_CLASSES)
    if problem:
        return problem
    if _text(row.get("image_type")).upper().split("\\")[0] != "ORIGINAL":
        return "not an ORIGINAL image"
    thickness = _number(row.get("slice_thickness_mm"))
    low, high = thickness_limits
    if thickness is not None and not low <= thickness <= high:
        return f"slice thickness {thickness:g} mm outside [{low:g}, {high:g}] mm"
    return None


def pet_problem(row: Mapping) -> str | None:
    if _text(row.get("modality")) != "PT":
        return "not PET"
    problem = _image_problem(row, PET_CLASSES)
    if problem:
        return problem
    if "ATTN" not in _text(row.get("corrected_image")).upper().split("\\"):
        return "not attenuation-corrected (CorrectedImage lacks ATTN)"
    units = _text(row.get("units")).upper()
    if units not in PET_UNITS:
        return f"Units '{units}' is not BQML, CNTS or GML"
    return None


def _when(row: Mapping) -> dt.datetime | None:
    try:
        return combine(_text(row.get("series_date")), _text(row.get("series_time")))
    except ValueError:
        return None


def _day(row: Mapping) -> dt.datetime | None:
    """When the series was scanned, for ordering studies: its date, and its time if it has one
    (anonymisers often keep the date and drop the time)."""
    try:
        day = parse_date(_text(row.get("series_date")))
        return day and day + (parse_time(_text(row.get("series_time"))) or dt.timedelta(0))
    except ValueError:
        return None


def _pairing(ct: Mapping, pets: list[Mapping]) -> int:
    """2: a usable PET shares the CT's frame of reference; 1: only its study; 0: neither."""
    frame, study = _text(ct.get("frame_of_reference")), _text(ct.get("study_uid"))
    same_frame = any(frame and _text(pet.get("frame_of_reference")) == frame for pet in pets)
    same_study = any(study and _text(pet.get("study_uid")) == study for pet in pets)
    return 2 if same_frame else 1 if same_study else 0


PAIRING_WORDS = {2: "a PET in its frame of reference", 1: "a PET in its study", 0: "no PET"}


def _study_preference(rows: pd.DataFrame, limits, study_choice: str) -> tuple[dict[int, str], str]:
    """Usable CTs set aside by ``study_choice`` (index -> reason), and a note for the chosen
    CT's reason: what the kept CTs share, or why none was set aside ("" when there is one study).

    ``paired`` keeps the CTs with the best PET partner, so an earlier CT-only study never takes a
    PET/CT patient's PET away; ``latest`` and ``earliest`` keep the CTs of one study by date.
    """
    cts = {i: row for i, row in rows.iterrows() if ct_problem(row, limits) is None}
    if len({_text(row.get("study_uid")) for row in cts.values()}) < 2:
        return {}, ""
    if study_choice == "paired":
        pets = [row for _, row in rows.iterrows() if pet_problem(row) is None]
        score = {i: _pairing(row, pets) for i, row in cts.items()}
        best = max(score.values())
        set_aside = {
            i: f"usable CT, but another study's CT has {PAIRING_WORDS[best]} (this one: "
            f"{PAIRING_WORDS[score[i]]})"
            for i in cts
            if score[i] < best
        }
        return set_aside, f"the study with {PAIRING_WORDS[best]}" if set_aside else ""
    # An undated study is neither the latest nor the earliest; with no dates at all the CT
    # rules decide, and the chosen CT's reason says so.
    dated = {i: day for i, row in cts.items() if (day := _day(row)) is not None}
    if not dated:
        return {}, "no series dates, so the CT rules chose across studies"
    pick = max if study_choice == "latest" else min
    study = _text(cts[pick(dated, key=dated.get)].get("study_uid"))
    return {
        i: f"usable CT, but not in the {study_choice} study (ingest.study_choice"
        f"{'' if i in dated else '; this series has no date'})"
        for i, row in cts.items()
        if _text(row.get("study_uid")) != study
    }, f"the {study_choice} study"


def _choose_ct(
    rows: pd.DataFrame, limits, set_aside: Mapping[int, str] | None = None
) -> tuple[int | None, dict[int, str]]:
    reasons, usable = {}, []
    set_aside = set_aside or {}
    for index, row in rows.iterrows():
        problem = ct_problem(row, limits) or set_aside.get(index)
        if problem:
            reasons[index] = problem
        else:
            axial = _text(row.get("orientation")) == "axial"
            coverage = _number(row.get("coverage_mm")) or 0.0
            thickness = _number(row.get("slice_thickness_mm")) or 0.0
            usable.append((axial, coverage, -thickness, _number(row.get("n_images")) or 0, index))
    if not usable:
        return None, reasons
    # Coverage within COVERAGE_MARGIN of the best counts as equal (a thicker recon of the same
    # scan adds a few mm); then the thinner slices win.
    any_axial = any(entry[0] for entry in usable)
    usable = [entry for entry in usable if entry[0] == any_axial] + [
        entry for entry in usable if entry[0] != any_axial
    ]
    top = max(entry[1] for entry in usable if entry[0] == any_axial)
    margin = max(COVERAGE_MARGIN_MM, COVERAGE_MARGIN_FRACTION * top)
    usable.sort(key=lambda e: (e[0] == any_axial, e[1] >= top - margin, e[2], e[3]), reverse=True)
    usable = [(entry[:4], entry[4]) for entry in usable]
    best = usable[0][1]
    for _, index in usable[1:]:
        reasons[index] = "usable CT, but another is preferred (coverage, then thinner slices)"
    orientation = _text(rows.loc[best].get("orientation"))
    reasons[best] = "chosen CT" + ("" if orientation == "axial" else f" ({orientation}, no axial)")
    return best, reasons


def _choose_pet(rows: pd.DataFrame, ct: Mapping) -> tuple[int | None, dict[int, str]]:
    reasons, usable = {}, []
    ct_time = _when(ct)
    for index, row in rows.iterrows():
        if _text(row.get("modality")) != "PT":
            continue
        problem = pet_problem(row)
        same_frame = _text(row.get("frame_of_reference")) == _text(ct.get("frame_of_reference"))
        same_study = _text(row.get("study_uid")) == _text(ct.get("study_uid"))
        if problem is None and not (same_frame or same_study):
            problem = "not in the CT's frame of reference or study"
        if problem:
            reasons[index] = problem
            continue
        pet_time = _when(row)
        gap = abs((pet_time - ct_time).total_seconds()) if pet_time and ct_time else float("inf")
        original = _text(row.get("image_type")).upper().startswith("ORIGINAL")
        coverage = _number(row.get("coverage_mm")) or 0.0
        usable.append(((not same_frame, gap, not original, -coverage), index))
    if not usable:
        return None, reasons
    usable.sort()
    best = usable[0][1]
    for _, index in usable[1:]:
        reasons[index] = "usable PET, but another is closer to the CT"
    reasons[best] = "chosen PET"
    return best, reasons


def _choose_rtstruct(rows: pd.DataFrame, ct: Mapping) -> tuple[int | None, dict[int, str]]:
    """The RTSTRUCT of the CT's study (its frame of reference is checked at ingest, from the
    file); the latest when there are several, as a re-contoured plan supersedes the first."""
    reasons, usable = {}, []
    for index, row in rows.iterrows():
        if _text(row.get("modality")) != "RTSTRUCT":
            continue
        if _text(row.get("study_uid")) != _text(ct.get("study_uid")):
            reasons[index] = "RTSTRUCT not in the CT's study"
            continue
        usable.append((_when(row) or dt.datetime.min, index))
    if not usable:
        return None, reasons
    usable.sort(reverse=True)
    best = usable[0][1]
    for _, index in usable[1:]:
        reasons[index] = "RTSTRUCT of the CT's study, but a later one is chosen"
    reasons[best] = "chosen RTSTRUCT (contours: the GTV for the lesion features)"
    return best, reasons


def choose_series(
    series: pd.DataFrame,
    patient_ids: Iterable[str],
    *,
    ct_slice_thickness_mm: tuple[float, float],
    study_choice: str,
    overrides: Mapping[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Add ``chosen`` and ``reason`` to the index rows; add a row for patients without DICOM.

    ``series`` has the columns of :data:`lungfusion.ingest.index.SERIES_COLUMNS`; patients are
    matched on ``patient_id``. Series of patients not in ``patient_ids`` are kept, unchosen.
    ``study_choice`` (``paired``, ``latest``, ``earliest``) decides between the CTs of several
    studies before the CT rules do. ``overrides`` maps (patient_id, "CT" or "PT") to a series UID.
    """
    if study_choice not in STUDY_CHOICES:
        raise ValueError(f"study_choice must be one of {STUDY_CHOICES}, not {study_choice!r}")
    low, high = ct_slice_thickness_mm
    if not 0 < low <= high:
        raise ValueError(
            f"ct_slice_thickness_mm must be 0 < low <= high, not {ct_slice_thickness_mm}"
        )
    overrides = dict(overrides or {})
    table = series.copy().reset_index(drop=True)
    table["chosen"] = ""
    table["reason"] = ""
    wanted = list(dict.fromkeys(patient_ids))
    missing_rows = []
    for patient in wanted:
        rows = table[table["patient_id"] == patient]
        if rows.empty:
            missing_rows.append({"patient_id": patient, "chosen": "", "reason": "no DICOM found"})
            continue
        _choose_for_patient(table, rows, patient, (low, high), study_choice, overrides)
    others = ~table["patient_id"].isin(wanted)
    table.loc[others, "reason"] = "patient not in the sample sheet"
    if missing_rows:
        table = pd.concat([table, pd.DataFrame(missing_rows)], ignore_index=True)
    return table


def match_patients(series: pd.DataFrame, patient_ids: Iterable[str]) -> pd.DataFrame:
    """Name each series by its sheet patient: DICOM PatientID, else a folder named by the ID.

    Collections often de-identify PatientID to the sheet's ID; when they do not, the tree's
    folders usually carry it (``Lung-PET-CT-Dx/Lung_Dx-A0001/...``).
    """
    wanted = set(str(p) for p in patient_ids)
    table = series.copy()
    for index, row in table.iterrows():
        if _text(row.get("patient_id")) in wanted:
            continue
        parts = {
            part for folder in _text(row.get("folder")).split(";") for part in folder.split("/")
        }
        named = sorted(parts & wanted)
        if len(named) == 1:
            table.loc[index, "patient_id"] = named[0]
    return table


def _override(rows: pd.DataFrame, patient: str, modality: str, overrides) -> int | None:
    uid = overrides.get((patient, modality))
    if not uid:
        return None
    match = rows.index[rows["series_uid"].astype(str) == str(uid)]
    return int(match[0]) if len(match) else None


def _choose_for_patient(table, rows, patient, limits, study_choice, overrides) -> None:
    set_aside, kept = _study_preference(rows, limits, study_choice)
    ct_index, reasons = _choose_ct(rows, limits, set_aside)
    if kept and ct_index is not None:
        reasons[ct_index] += f" (ingest.study_choice {study_choice}: {kept})"
    forced_ct = _override(rows, patient, "CT", overrides)
    if forced_ct is not None:
        if ct_index is not None and ct_index != forced_ct:
            reasons[ct_index] = "usable CT, but the override file names another"
        ct_index, reasons[forced_ct] = forced_ct, "chosen CT (override file)"
    elif (patient, "CT") in overrides:
        reasons = {i: r + "; override series not found" for i, r in reasons.items()}
    if ct_index is None:
        for index, reason in reasons.items():
            table.loc[index, "reason"] = f"no usable CT for this patient ({reason})"
        return
    pet_reasons: dict[int, str] = {}
    pet_index, pet_reasons = _choose_pet(rows, table.loc[ct_index])
    forced_pet = _override(rows, patient, "PT", overrides)
    if forced_pet is not None:
        if pet_index is not None and pet_index != forced_pet:
            pet_reasons[pet_index] = "usable PET, but the override file names another"
        pet_index, pet_reasons[forced_pet] = forced_pet, "chosen PET (override file)"
    reasons.update(pet_reasons)
    if pet_index is None:
        reasons[ct_index] += "; no usable PET: CT-only"
    rtstruct_index, rtstruct_reasons = _choose_rtstruct(rows, table.loc[ct_index])
    reasons.update(rtstruct_reasons)
    for index, reason in reasons.items():
        table.loc[index, "reason"] = reason
    table.loc[ct_index, "chosen"] = "CT"
    if pet_index is not None:
        table.loc[pet_index, "chosen"] = "PT"
    if rtstruct_index is not None:
        table.loc[rtstruct_index, "chosen"] = "RTSTRUCT"


def read_overrides(path) -> dict[tuple[str, str], str]:
    """The override TSV: columns patient_id, modality (CT or PT), series_uid."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    needed = {"patient_id", "modality", "series_uid"}
    if not needed <= set(table.columns):
        raise ValueError(f"{path}: series override file needs columns {sorted(needed)}")
    overrides = {}
    for row in table.itertuples():
        modality = str(row.modality).strip().upper()
        if modality not in ("CT", "PT"):
            raise ValueError(f"{path}: modality must be CT or PT, not {row.modality!r}")
        overrides[(str(row.patient_id).strip(), modality)] = str(row.series_uid).strip()
    return overrides
