"""SUVbw factor by the QIBA vendor-neutral rules, on real vendor headers."""

from __future__ import annotations

import csv
import json

import pydicom
import pytest

from lungfusion.errors import PatientInputError
from lungfusion.ingest.suv import parse_datetime, parse_time, suv_factor


def test_every_vendor_case_within_tolerance(fixtures_dir):
    folder = fixtures_dir / "suv-headers"
    with open(folder / "expected.tsv", encoding="utf-8") as handle:
        cases = list(csv.DictReader(handle, delimiter="\t"))
    assert len(cases) == 6
    for case in cases:
        headers = json.loads((folder / f"{case['case']}-instances.json").read_text())
        factor, rule = suv_factor(headers)
        assert abs(factor - float(case["suvbw_factor"])) < 1e-6 * float(case["tolerance"]) / 1e-6
        assert factor == pytest.approx(float(case["suvbw_factor"]), rel=1e-9), case["case"]
        if case["case"].startswith("PHILIPS_CNTS"):
            assert "Philips private SUV scale factor" in rule
        if case["case"].startswith("BQML_AC_DT_lessThan"):
            assert "earliest acquisition time" in rule


def test_acrin_flt_keeps_fractional_seconds(fixtures_dir):
    ds = pydicom.dcmread(
        fixtures_dir / "dicom/acrin-flt-breast/pet-slice.dcm", stop_before_pixels=True
    )
    factor, _ = suv_factor([ds])
    assert factor == pytest.approx(5.9425e-4, abs=5e-8)
    assert abs(factor - 5.9419e-4) > 3e-8


def test_sts_001_factor(fixtures_dir):
    files = sorted((fixtures_dir / "dicom/sts-001/pet-raw-bqml").iterdir())[:5]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    factor, rule = suv_factor(headers)
    assert factor == pytest.approx(2.429030e-4, rel=1e-5)
    assert rule.startswith("BQML, decay START")


BASE = {
    "Units": "BQML",
    "DecayCorrection": "START",
    "PatientWeight": 70,
    "RadionuclideTotalDose": 3.5e8,
    "RadionuclideHalfLife": 6586.2,
    "RadiopharmaceuticalStartTime": "100000",
    "SeriesDate": "20200101",
    "SeriesTime": "110000",
    "AcquisitionDate": "20200101",
    "AcquisitionTime": "110000",
}


def test_decay_admin_gml_and_fallbacks():
    assert suv_factor([BASE | {"DecayCorrection": "ADMIN"}])[0] == pytest.approx(70000 / 3.5e8)
    assert suv_factor([BASE | {"Units": "GML"}]) == (1.0, "GML: values already SUVbw")
    start = suv_factor([BASE])[0]
    assert start == pytest.approx(70000 / (3.5e8 * 2 ** (-3600 / 6586.2)))
    factor, rule = suv_factor([BASE | {"PatientWeight": None}], weight_fallback_kg=70)
    assert factor == pytest.approx(start) and "weight fallback" in rule
    factor, rule = suv_factor([BASE | {"RadionuclideTotalDose": ""}], dose_fallback_bq=3.5e8)
    assert factor == pytest.approx(start) and "dose fallback" in rule


def test_activity_concentration_scale_factor_used_without_suv_scale():
    header = BASE | {
        "Units": "CNTS",
        "PhilipsPETPrivateGroup": {"ActivityConcentrationScaleFactor": "2.0"},
    }
    factor, rule = suv_factor([header])
    assert factor == pytest.approx(2.0 * suv_factor([BASE])[0])
    assert "(7053,1009)" in rule


@pytest.mark.parametrize(
    ("change", "tag"),
    [
        ({"PatientWeight": None}, "PatientWeight"),
        ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({"RadiopharmaceuticalStartTime": None}, "RadiopharmaceuticalStartTime"),
        ({"RadionuclideHalfLife": None}, "RadionuclideHalfLife"),
        ({"DecayCorrection": "NONE"}, "DecayCorrection"),
        ({"Units": "PROPCNTS"}, "Units"),
        ({"Units": "CNTS"}, "7053,1000"),
    ],
)
def test_missing_tags_name_patient_file_and_tag(change, tag):
    with pytest.raises(PatientInputError) as error:
        suv_factor([BASE | change], patient="P7", series="1.2.3", file="pet/1.dcm")
    assert tag in error.value.tag
    assert error.value.patient == "P7" and error.value.file == "pet/1.dcm"
    assert "P7" in str(error.value) and tag in str(error.value)


def test_dicom_time_parsing():
    assert parse_time("152316.921").total_seconds() == pytest.approx(15 * 3600 + 23 * 60 + 16.921)
    assert parse_time("1523").total_seconds() == 15 * 3600 + 23 * 60
    assert parse_time("15:23:16").total_seconds() == 15 * 3600 + 23 * 60 + 16
    when = parse_datetime("20201217084500.00 ")
    assert (when.hour, when.minute, when.second) == (8, 45, 0)
    assert parse_datetime("20201217084500+0100").hour == 8
