"""Body-weight SUV scale factor by the QIBA vendor-neutral rules.

``SUVbw = stored value (after rescale) x factor``. The rules, as in the QIBA vendor-neutral
pseudo-code (and its reference implementation, calculate-suv):

- ``Units GML``: the values already are SUVbw; factor 1.
- ``Units CNTS`` (Philips): the private SUV scale factor (7053,1000) if present and non-zero;
  otherwise the private activity concentration scale factor (7053,1009) times the BQML factor.
- ``Units BQML``: ``weight [g] / decayed dose [Bq]``. With ``DecayCorrection START`` the dose is
  decayed from injection to the scan time; with ``ADMIN`` the images are already corrected to
  the injection time, so the dose is not decayed.
- Scan time: the series date/time, unless it is later than the earliest acquisition date/time of
  the series (post-processing rewrote it); then GE's private scan date/time (0009,100D) if
  present, else the earliest acquisition date/time.

DICOM times keep their fractional seconds (dropping them moves the ACRIN FLT factor from
5.9425e-4 to 5.9419e-4).

>>> header = {"Units": "BQML", "DecayCorrection": "ADMIN", "PatientWeight": 70,
...           "RadionuclideTotalDose": 3.5e8}
>>> suv_factor([header])
(0.0002, 'BQML, decay ADMIN: weight / dose')
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset

from lungfusion.errors import PatientInputError

PHILIPS_PET_CREATOR = "Philips PET Private Group"
GE_PETD_CREATOR = "GEMS_PETD_01"

# The keywords the rules read, flattened out of the radiopharmaceutical sequence.
RADIOPHARMACEUTICAL_KEYWORDS = (
    "RadiopharmaceuticalStartTime",
    "RadiopharmaceuticalStartDateTime",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
)
TOP_KEYWORDS = (
    "Units",
    "DecayCorrection",
    "PatientWeight",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
)


# ---------------------------------------------------------------- DICOM date and time values


def parse_time(value: Any) -> dt.timedelta | None:
    """A DICOM TM (``HHMMSS.FFFFFF``, or the old ``HH:MM:SS``) as a time since midnight."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    whole = whole.ljust(6, "0")
    hours, minutes, seconds = int(whole[0:2]), int(whole[2:4]), int(whole[4:6])
    micro = round(float(f"0.{fraction}") * 1e6) if fraction else 0
    return dt.timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)


def parse_date(value: Any) -> dt.datetime | None:
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) < 8:
        return None
    return dt.datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]))


def parse_datetime(value: Any) -> dt.datetime | None:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``); the UTC offset is ignored (same scanner)."""
    text = str(value or "").strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    date = parse_date(text[:8])
    if date is None:
        return None
    time = parse_time(text[8:]) if len(text) > 8 else dt.timedelta(0)
    return date + time


def combine(date: Any, time: Any) -> dt.datetime | None:
    day, clock = parse_date(date), parse_time(time)
    if day is None or clock is None:
        return None
    return day + clock


# ---------------------------------------------------------------- headers of either kind


def _private_value(ds: Dataset, group: int, creator: str, element: int) -> Any:
    try:
        return ds.get_private_item(group, element, creator).value
    except (KeyError, ValueError):
        return None


def flatten_header(header: Mapping | Dataset) -> dict:
    """The values the SUV rules read, from a pydicom Dataset or a keyword dict (JSON form).

    Dicts may hold the radiopharmaceutical keywords at the top level or in
    ``RadiopharmaceuticalInformationSequence``, and the Philips values in
    ``PhilipsPETPrivateGroup`` (``SUVScaleFactor``, ``ActivityConcentrationScaleFactor``).
    """
    flat: dict[str, Any] = {}
    if isinstance(header, Dataset):
        for keyword in TOP_KEYWORDS:
            flat[keyword] = header.get(keyword)
        sequence = header.get("RadiopharmaceuticalInformationSequence") or []
        item = sequence[0] if len(sequence) else Dataset()
        for keyword in RADIOPHARMACEUTICAL_KEYWORDS:
            flat[keyword] = item.get(keyword, header.get(keyword))
        flat["SUVScaleFactor"] = _private_value(header, 0x7053, PHILIPS_PET_CREATOR, 0x00)
        flat["ActivityConcentrationScaleFactor"] = _private_value(
            header, 0x7053, PHILIPS_PET_CREATOR, 0x09
        )
        flat["GEScanDateTime"] = _private_value(header, 0x0009, GE_PETD_CREATOR, 0x0D)
        return flat
    for keyword in TOP_KEYWORDS:
        flat[keyword] = header.get(keyword)
    sequence = header.get("RadiopharmaceuticalInformationSequence") or [{}]
    for keyword in RADIOPHARMACEUTICAL_KEYWORDS:
        flat[keyword] = header.get(keyword, sequence[0].get(keyword))
    philips = header.get("PhilipsPETPrivateGroup") or {}
    flat["SUVScaleFactor"] = philips.get("SUVScaleFactor")
    flat["ActivityConcentrationScaleFactor"] = philips.get("ActivityConcentrationScaleFactor")
    flat["GEScanDateTime"] = header.get("GEPrivatePostInjectionDateTime")
    return flat


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- the rules


def scan_datetime(flat_headers: Sequence[dict]) -> tuple[dt.datetime, str]:
    """The time the dose is decayed to, and which rule gave it."""
    first = flat_headers[0]
    series = combine(first["SeriesDate"], first["SeriesTime"])
    acquisitions = []
    for flat in flat_headers:
        when = parse_datetime(flat.get("AcquisitionDateTime")) or combine(
            flat.get("AcquisitionDate"), flat.get("AcquisitionTime")
        )
        if when is not None:
            acquisitions.append(when)
    earliest = min(acquisitions) if acquisitions else None
    if series is not None and (earliest is None or series <= earliest):
        return series, "series time"
    ge_scan = parse_datetime(first.get("GEScanDateTime"))
    if ge_scan is not None:
        return ge_scan, "GE private scan time"
    if earliest is not None:
        return earliest, "earliest acquisition time"
    raise PatientInputError(
        "no series or acquisition date/time to decay the dose to", tag="SeriesTime"
    )


def _injection_datetime(first: dict, scan: dt.datetime) -> dt.datetime | None:
    start = parse_datetime(first.get("RadiopharmaceuticalStartDateTime"))
    if start is not None:
        return start
    clock = parse_time(first.get("RadiopharmaceuticalStartTime"))
    if clock is None:
        return None
    # QIBA: with only a time, the injection is on the scan day (before midnight if need be).
    start = dt.datetime(scan.year, scan.month, scan.day) + clock
    return start - dt.timedelta(days=1) if start > scan else start


def _bqml_factor(
    flat_headers: Sequence[dict],
    *,
    weight_fallback_kg: float | None,
    dose_fallback_bq: float | None,
    where: dict,
) -> tuple[float, str]:
    first = flat_headers[0]
    notes = []
    weight = _number(first.get("PatientWeight"))
    if weight is None or weight <= 0:
        if weight_fallback_kg is None:
            raise PatientInputError(
                "PET has no patient weight; set ingest.weight_fallback_kg to use a default",
                tag="PatientWeight (0010,1030)",
                **where,
            )
        weight = float(weight_fallback_kg)
        notes.append(f"weight fallback {weight:g} kg")
    dose = _number(first.get("RadionuclideTotalDose"))
    if dose is None or dose <= 0:
        if dose_fallback_bq is None:
            raise PatientInputError(
                "PET has no injected dose; set ingest.dose_fallback_bq to use a default",
                tag="RadionuclideTotalDose (0018,1074)",
                **where,
            )
        dose = float(dose_fallback_bq)
        notes.append(f"dose fallback {dose:g} Bq")
    decay = str(first.get("DecayCorrection") or "").strip().upper()
    if decay == "ADMIN":
        rule = "BQML, decay ADMIN: weight / dose"
        decayed = dose
    elif decay == "START":
        half_life = _number(first.get("RadionuclideHalfLife"))
        if half_life is None or half_life <= 0:
            raise PatientInputError(
                "PET has no radionuclide half-life", tag="RadionuclideHalfLife (0018,1075)", **where
            )
        scan, scan_rule = scan_datetime(flat_headers)
        injection = _injection_datetime(first, scan)
        if injection is None:
            raise PatientInputError(
                "PET has no injection time",
                tag="RadiopharmaceuticalStartTime (0018,1072)",
                **where,
            )
        elapsed = (scan - injection).total_seconds()
        decayed = dose * 2.0 ** (-elapsed / half_life)
        rule = f"BQML, decay START: weight / dose decayed {elapsed:.3f} s to the {scan_rule}"
    else:
        raise PatientInputError(
            f"PET DecayCorrection '{decay}' is not supported (START or ADMIN)",
            tag="DecayCorrection (0054,1102)",
            **where,
        )
    if notes:
        rule += " (" + ", ".join(notes) + ")"
    return weight * 1000.0 / decayed, rule


def suv_factor(
    headers: Sequence[Mapping | Dataset],
    *,
    weight_fallback_kg: float | None = None,
    dose_fallback_bq: float | None = None,
    patient: str | None = None,
    series: str | None = None,
    file: str | None = None,
) -> tuple[float, str]:
    """SUVbw scale factor (g/mL per stored unit) of one PET series and the rule that gave it.

    ``headers``: one per instance (pydicom Datasets, pixels not needed, or keyword dicts).
    ``patient``, ``series`` and ``file`` only name the input in error messages.
    Raises :class:`PatientInputError` naming the tag when a needed value is missing.
    """
    if not headers:
        raise ValueError("suv_factor needs at least one header")
    where = {"patient": patient, "series": series, "file": file}
    flat_headers = [flatten_header(h) for h in headers]
    units = str(flat_headers[0].get("Units") or "").strip().upper()
    if units == "GML":
        return 1.0, "GML: values already SUVbw"
    if units == "BQML":
        return _bqml_factor(
            flat_headers,
            weight_fallback_kg=weight_fallback_kg,
            dose_fallback_bq=dose_fallback_bq,
            where=where,
        )
    if units == "CNTS":
        suv_scale = _number(flat_headers[0].get("SUVScaleFactor"))
        if suv_scale:
            return suv_scale, "CNTS: Philips private SUV scale factor (7053,1000)"
        activity_scale = _number(flat_headers[0].get("ActivityConcentrationScaleFactor"))
        if activity_scale:
            factor, rule = _bqml_factor(
                flat_headers,
                weight_fallback_kg=weight_fallback_kg,
                dose_fallback_bq=dose_fallback_bq,
                where=where,
            )
            return activity_scale * factor, (
                "CNTS: Philips activity concentration scale factor (7053,1009) x " + rule
            )
        raise PatientInputError(
            "PET in CNTS without the Philips private SUV scale factor",
            tag="Philips SUVScaleFactor (7053,1000)",
            **where,
        )
    raise PatientInputError(
        f"PET Units '{units}' cannot be converted to SUVbw (BQML, CNTS or GML)",
        tag="Units (0054,1001)",
        **where,
    )
