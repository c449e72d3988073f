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
from lungfusion.commands.index import build_series_table

LUNG1 = "dicom/nsclc-radiomics-LUNG1-001/ct"
STS = "dicom/sts-001"


def _copy(files, folder, *, patient, prefix="im", study=None, frame=None, date=None, blank=False):
    """Copy ``files`` as one series of ``patient``; ``blank`` empties the dataset's UIDs the way
    some anonymisers do, leaving the file meta's."""
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
        if blank:
            ds.SOPClassUID = ""
            ds.SOPInstanceUID = ""
            ds.SeriesInstanceUID = ""
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


@pytest.fixture(scope="module")
def anonymised(fixtures_dir, tmp_path_factory):
    """The same real CT and PET written twice: with their UIDs, and with the dataset's SOP class,
    SOP instance and series UIDs blank, both series in one folder."""
    roots = {}
    ct = sorted((fixtures_dir / STS / "ct-cropped").iterdir())[20:26]
    pet = sorted((fixtures_dir / STS / "pet-suv-cropped").iterdir())[20:26]
    for name, blank in (("intact", False), ("blank", True)):
        root = tmp_path_factory.mktemp(name) / "dicom"
        _copy(ct, root / "PX" / "all", patient="PX", prefix="ct", blank=blank)
        _copy(pet, root / "PX" / "all", patient="PX", prefix="pet", blank=blank)
        roots[name] = root
    return roots


def test_blank_uids_fall_back_to_the_file_meta(anonymised, tmp_path):
    written = next((anonymised["blank"] / "PX" / "all").iterdir())
    ds = pydicom.dcmread(written)
    assert ds.SOPInstanceUID == "" and ds.SeriesInstanceUID == ""  # the quirk is really there
    assert ds.file_meta.MediaStorageSOPInstanceUID
    table = build_series_table(
        anonymised["blank"], ["PX"], tmp_path / "series.tsv",
        ct_slice_thickness_mm=(0.5, 5.0), study_choice="paired",
    )  # fmt: skip
    assert sorted(table.chosen) == ["CT", "PT"]  # grouped apart though both UIDs are blank
    assert set(table.n_images) == {6}
    for note in table.note:
        assert "SeriesInstanceUID (0020,000E) blank" in note
        assert "SOPClassUID (0008,0016) blank" in note
    again = build_series_table(
        anonymised["blank"], ["PX"], tmp_path / "again.tsv",
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


def test_anonymised_series_ingest_like_the_intact_ones(anonymised, tmp_path, repo_dir):
    intact = _index_and_ingest(anonymised["intact"], tmp_path / "intact", repo_dir)
    blank = _index_and_ingest(anonymised["blank"], tmp_path / "blank", repo_dir)
    for name in ("ct.nii.gz", "pet_suv.nii.gz"):
        a, b = (sitk.ReadImage(str(folder / name)) for folder in (intact, blank))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
    sidecar = json.loads((blank / "ingest.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["has_pet"]
    # The slice map keeps the instance UIDs (annotation boxes are keyed by them).
    meta_uids = {
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
        for path in (anonymised["blank"] / "PX" / "all").iterdir()
    }
    assert {entry["sop_instance_uid"] for entry in sidecar["ct_slices"]} <= meta_uids
    assert len(sidecar["ct_slices"]) == 6
    assert pd.read_csv(tmp_path / "blank" / "series.tsv", sep="\t").note.str.contains("blank").all()
