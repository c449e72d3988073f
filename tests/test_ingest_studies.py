"""Index on the quirks of public collections, built from real fixture files in tmp_path:
several studies per patient (an earlier CT-only study beside a PET/CT study), and anonymised
files whose dataset UIDs are blank while the file meta keeps them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from lungfusion.cli import main as cli_main
from lungfusion.ingest.index import build_series_table
from lungfusion.ingest.select import choose_series

LUNG1 = "dicom/nsclc-radiomics-LUNG1-001/ct"
STS = "dicom/sts-001"


def _copy(files, folder, *, patient, prefix="im", study=None, frame=None, date=None, blank=""):
    """Copy ``files`` as one series of ``patient``; ``blank`` ("empty" or "absent") empties or
    removes the dataset's UIDs the way some anonymisers do, leaving the file meta's."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if study:
            ds.StudyInstanceUID = study
        if frame:
            ds.FrameOfReferenceUID = frame
        if date:
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID") if blank else ():
            if blank == "absent":
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, "")
        ds.save_as(folder / f"{prefix}{index:03d}.dcm", enforce_file_format=False)


@pytest.fixture(scope="module")
def two_studies(fixtures_dir, tmp_path_factory):
    """PS: an earlier CT-only study whose CT covers more (the CT rules alone would take it) and a
    later PET/CT study whose CT and PET share a frame of reference."""
    root = tmp_path_factory.mktemp("studies") / "dicom"
    lung1 = sorted((fixtures_dir / LUNG1).glob("*.dcm"))[50:62]
    ct_sts = sorted((fixtures_dir / STS / "ct-cropped").iterdir())[20:26]
    pet_sts = sorted((fixtures_dir / STS / "pet-suv-cropped").iterdir())[20:26]
    early = dict(study=generate_uid(), frame=generate_uid(), date="20090301")
    _copy(lung1, root / "PS" / "2009-chest" / "ct", patient="PS", **early)
    late = dict(study=generate_uid(), frame=generate_uid(), date="20100415")
    _copy(ct_sts, root / "PS" / "2010-petct" / "ct", patient="PS", **late)
    _copy(pet_sts, root / "PS" / "2010-petct" / "pet", patient="PS", **late)
    return root


def _choose(root, tmp_path, study_choice):
    out = tmp_path / study_choice / "series.tsv"
    table = build_series_table(
        root, ["PS"], out, ct_slice_thickness_mm=(0.5, 5.0), study_choice=study_choice
    )
    return table.set_index("folder")


@pytest.mark.parametrize("study_choice", ["paired", "latest"])
def test_pet_ct_study_wins_over_an_earlier_ct_only_study(two_studies, tmp_path, study_choice):
    table = _choose(two_studies, tmp_path, study_choice)
    assert table.loc["PS/2010-petct/ct", "chosen"] == "CT"
    assert table.loc["PS/2010-petct/pet", "chosen"] == "PT"
    assert table.loc["PS/2009-chest/ct", "chosen"] == ""
    assert f"ingest.study_choice {study_choice}" in table.loc["PS/2010-petct/ct", "reason"]
    set_aside = table.loc["PS/2009-chest/ct", "reason"]
    assert set_aside.startswith("usable CT, but")
    if study_choice == "paired":
        assert "a PET in its frame of reference" in set_aside and "(this one: no PET)" in set_aside


def test_earliest_takes_the_ct_only_study_and_says_why_the_pet_is_left(two_studies, tmp_path):
    table = _choose(two_studies, tmp_path, "earliest")
    assert table.loc["PS/2009-chest/ct", "chosen"] == "CT"
    assert table.loc["PS/2009-chest/ct", "reason"].endswith("; no usable PET: CT-only")
    assert table.loc["PS/2010-petct/pet", "reason"] == "not in the CT's frame of reference or study"
    assert "not in the earliest study" in table.loc["PS/2010-petct/ct", "reason"]


def _ct_row(study: str, date: str, coverage_mm: float) -> dict:
    """An index row of a usable axial CT alone in its study (no time: anonymisers drop it)."""
    return dict(
        patient_id="PD", study_uid=study, series_uid=f"{study}.1", frame_of_reference=f"{study}.2",
        modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2", image_type="ORIGINAL\\PRIMARY\\AXIAL",
        n_images=100, n_frames=100, slice_thickness_mm=3.0, coverage_mm=coverage_mm,
        orientation="axial", series_date=date, series_time="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("dates", "study_choice", "chosen", "note"),
    [
        # Dates without times still order the studies (the later study comes first in the index).
        (("20100415", "20090301"), "earliest", "1.1", "the earliest study"),
        (("20100415", "20090301"), "latest", "2.1", "the latest study"),
        # An undated study is neither the earliest nor the latest.
        (("", "20100415"), "earliest", "1.1", "the earliest study"),
        (("", "20090301"), "latest", "1.1", "the latest study"),
        # Without any dates the CT rules decide (here: the better coverage) and say so.
        (("", ""), "earliest", "2.1", "no series dates, so the CT rules chose across studies"),
    ],
)
def test_latest_and_earliest_order_studies_by_date(dates, study_choice, chosen, note):
    rows = [_ct_row("2", dates[0], 400.0), _ct_row("1", dates[1], 300.0)]
    table = choose_series(
        pd.DataFrame(rows), ["PD"], ct_slice_thickness_mm=(0.5, 5.0), study_choice=study_choice
    ).set_index("series_uid")
    assert table.loc[chosen, "chosen"] == "CT"
    reason = f"chosen CT (ingest.study_choice {study_choice}: {note}); no usable PET: CT-only"
    assert table.loc[chosen, "reason"] == reason
    other = table.drop(chosen).iloc[0]
    assert other.chosen == ""
    if note.startswith("no series dates"):
        assert other.reason == "usable CT, but another is preferred (coverage, then thinner slices)"
    else:
        assert other.reason.startswith(f"usable CT, but not in the {study_choice} study")
        assert other.reason.endswith("; this series has no date)") == (other.series_date == "")


@pytest.fixture(scope="module")
def anonymised(fixtures_dir, tmp_path_factory):
    """The same real CT and PET written three times: with their UIDs, and with the dataset's SOP
    class, SOP instance and series UIDs empty or absent, both series in one folder."""
    roots = {}
    ct = sorted((fixtures_dir / STS / "ct-cropped").iterdir())[20:26]
    pet = sorted((fixtures_dir / STS / "pet-suv-cropped").iterdir())[20:26]
    for name, blank in (("intact", ""), ("blank", "empty"), ("absent", "absent")):
        root = tmp_path_factory.mktemp(name) / "dicom"
        _copy(ct, root / "PX" / "all", patient="PX", prefix="ct", blank=blank)
        _copy(pet, root / "PX" / "all", patient="PX", prefix="pet", blank=blank)
        roots[name] = root
    return roots


@pytest.mark.parametrize("variant", ["blank", "absent"])
def test_blank_uids_fall_back_to_the_file_meta(anonymised, tmp_path, variant):
    written = next((anonymised[variant] / "PX" / "all").iterdir())
    ds = pydicom.dcmread(written)
    assert not ds.get("SOPInstanceUID") and not ds.get("SeriesInstanceUID")  # the quirk is there
    assert ("SOPClassUID" in ds) == (variant == "blank")
    assert ds.file_meta.MediaStorageSOPInstanceUID
    table = build_series_table(
        anonymised[variant], ["PX"], tmp_path / "series.tsv",
        ct_slice_thickness_mm=(0.5, 5.0), study_choice="paired",
    )  # fmt: skip
    assert sorted(table.chosen) == ["CT", "PT"]  # grouped apart though both UIDs are blank
    assert set(table.n_images) == {6}
    for note in table.note:
        assert "SeriesInstanceUID (0020,000E) blank" in note
        assert "SOPClassUID (0008,0016) blank" in note
    again = build_series_table(
        anonymised[variant], ["PX"], tmp_path / "again.tsv",
        ct_slice_thickness_mm=(0.5, 5.0), study_choice="paired",
    )  # fmt: skip
    assert list(again.series_uid) == list(table.series_uid)  # stand-in UIDs are repeatable


def _index_and_ingest(root, out_dir, repo_dir):
    config = ["--config", str(repo_dir / "config.yaml")]
    sheet = out_dir / "sheet.tsv"
    out_dir.mkdir(parents=True)
    sheet.write_text("patient_id\tlabel\nPX\tADC\n")
    series = out_dir / "series.tsv"
    index = ["index", "--dicom-root", str(root), "--sample-sheet", str(sheet), "--out", str(series)]
    assert cli_main([*config, *index]) == 0
    ingest = [
        "ingest",
        "--patient",
        "PX",
        "--series",
        str(series),
        "--out-dir",
        str(out_dir / "PX"),
    ]
    assert cli_main([*config, *ingest]) == 0
    return out_dir / "PX"


@pytest.mark.parametrize("variant", ["blank", "absent"])
def test_anonymised_series_ingest_like_the_intact_ones(anonymised, tmp_path, repo_dir, variant):
    intact = _index_and_ingest(anonymised["intact"], tmp_path / "intact", repo_dir)
    blank = _index_and_ingest(anonymised[variant], tmp_path / "blank", repo_dir)
    for name in ("ct.nii.gz", "pet_suv.nii.gz"):
        a, b = (sitk.ReadImage(str(folder / name)) for folder in (intact, blank))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
    sidecar = json.loads((blank / "ingest.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["has_pet"]
    # The slice map keeps the instance UIDs (annotation boxes are keyed by them).
    meta_uids = {
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
        for path in (anonymised[variant] / "PX" / "all").iterdir()
    }
    assert {entry["sop_instance_uid"] for entry in sidecar["ct_slices"]} <= meta_uids
    assert len(sidecar["ct_slices"]) == 6
    assert pd.read_csv(tmp_path / "blank" / "series.tsv", sep="\t").note.str.contains("blank").all()
