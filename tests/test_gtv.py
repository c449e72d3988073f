"""A collection's GTV contours through the stages, on the real NSCLC-Radiomics LUNG1-001 (CT and
a Varian RTSTRUCT): index chooses the RTSTRUCT, ingest rasterises GTV-1, register carries it
onto the 0.977 x 0.977 x 3.27 mm grid, the gtv crop centres the ROI on it and the radiomics
stage reads the whole contour as the lesion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lungfusion.cli import main
from lungfusion.errors import PatientInputError
from lungfusion.ingest.rtstruct import gtv_mask, rtstruct_to_mask

PID = "LUNG1-001"


@pytest.fixture(scope="module")
def lung1(fixtures_dir) -> Path:
    return fixtures_dir / "dicom" / "nsclc-radiomics-LUNG1-001"


@pytest.fixture(scope="module")
def ct(lung1) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(lung1 / "ct")))
    return reader.Execute()


def _volume_ml(image: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(image).sum() * np.prod(image.GetSpacing()) / 1e3)


@pytest.fixture(scope="module")
def run(lung1, tmp_path_factory) -> Path:
    """index -> ingest -> register -> segment -> roi (gtv crop) -> radiomics, by the CLI."""
    root = tmp_path_factory.mktemp("gtv")
    sheet = root / "sheet.tsv"
    pd.DataFrame({"patient_id": [PID], "label": ["SQC"]}).to_csv(sheet, sep="\t", index=False)
    params = ["--params", json.dumps({"cohort": {"source": "dicom"}, "roi": {"crop": "gtv"}})]
    results = root / "results"
    steps = [
        ["index", "--dicom-root", str(lung1), "--sample-sheet", str(sheet),
         "--out", str(results / "ingest/series.tsv")],
        ["ingest", "--patient", PID, "--series", str(results / "ingest/series.tsv"),
         "--out-dir", str(results / "ingest" / PID)],
        ["register", "--patient", PID, "--ingest-dir", str(results / "ingest" / PID),
         "--out-dir", str(results / "register" / PID)],
        ["segment", "--patient", PID, "--register-dir", str(results / "register" / PID),
         "--out-dir", str(results / "segment" / PID)],
        ["roi", "--patient", PID, "--ingest-dir", str(results / "ingest" / PID),
         "--register-dir", str(results / "register" / PID),
         "--segment-dir", str(results / "segment" / PID), "--out", str(results / "roi" / f"{PID}.npz")],
        ["radiomics", "--sample-sheet", str(sheet), "--roi-dir", str(results / "roi"),
         "--segment-dir", str(results / "segment"), "--register-dir", str(results / "register"),
         "--out", str(results / "radiomics/features.tsv")],
    ]  # fmt: skip
    for step in steps:
        assert main([*params, *step]) == 0, step[0]
    return results


def test_index_chooses_the_rtstruct_of_the_cts_study(run):
    series = pd.read_csv(run / "ingest/series.tsv", sep="\t", dtype=str).set_index("chosen")
    assert series.loc["RTSTRUCT", "modality"] == "RTSTRUCT"
    assert series.loc["RTSTRUCT", "study_uid"] == series.loc["CT", "study_uid"]


def test_ingest_writes_the_clinicians_gtv_on_the_ct_grid(run, lung1, ct):
    record = json.loads((run / "ingest" / PID / "ingest.json").read_text())
    assert record["status"] == "ok" and record["gtv"]["rois"] == ["GTV-1"]
    gtv = sitk.ReadImage(str(run / "ingest" / PID / "gtv.nii.gz"))
    reference = rtstruct_to_mask(lung1 / "rtstruct/1-1.dcm", ct, "GTV-1")
    assert gtv.GetSize() == ct.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(gtv), sitk.GetArrayFromImage(reference))
    assert record["gtv"]["voxels"] == int(sitk.GetArrayViewFromImage(reference).sum())


def test_register_keeps_the_gtv_volume_on_the_target_grid(run):
    gtv = sitk.ReadImage(str(run / "register" / PID / "gtv.nii.gz"))
    ct = sitk.ReadImage(str(run / "register" / PID / "ct.nii.gz"))
    assert gtv.GetSize() == ct.GetSize() and gtv.GetSpacing() == pytest.approx((0.977, 0.977, 3.27))
    original = _volume_ml(sitk.ReadImage(str(run / "ingest" / PID / "gtv.nii.gz")))
    assert _volume_ml(gtv) == pytest.approx(original, rel=0.02)  # about 156 mL


def test_the_gtv_crop_centres_the_roi_on_the_contour(run):
    record = json.loads((run / "roi" / f"{PID}.json").read_text())
    assert record["crop_used"] == "gtv" and record["placement"]["placement"] == "gtv"
    gtv = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "register" / PID / "gtv.nii.gz")))
    centre_xyz = np.argwhere(gtv > 0).mean(axis=0)[::-1]
    first, last = (np.array(record["box"][k]) for k in ("index_first", "index_last"))
    assert np.all(np.abs((first + last) / 2 - centre_xyz) < [6, 6, 3])  # voxels


def test_radiomics_reads_the_whole_gtv_as_the_lesion(run):
    table = pd.read_csv(run / "radiomics/features.tsv", sep="\t").set_index("patient_id")
    row = table.loc[PID]
    assert row["status"] == "ok" and row["mask"] == "gtv"
    gtv = sitk.ReadImage(str(run / "register" / PID / "gtv.nii.gz"))
    assert row["lesion_ml"] == pytest.approx(_volume_ml(gtv), rel=1e-5)  # beyond the 64 px ROI
    assert row["ct_shape_Maximum3DDiameter"] > 80  # mm: a 9 cm hilar mass
    assert row["loc_inner_third"] == 1.0  # it reaches the hilum
    assert 0 < row["ct_firstorder_Median"] < 80  # soft tissue HU
    summary = json.loads((run / "radiomics/features.json").read_text())
    assert summary["masks"] == {"gtv": 1}


def test_gtv_mask_warns_on_no_matching_roi_and_another_frame(lung1, ct):
    path = lung1 / "rtstruct/1-1.dcm"
    frame = "1.3.6.1.4.1.32722.99.99.227938121586608072508444156170535578236"
    mask, info = gtv_mask(path, ct, ct_frame_of_reference="", pattern="^ctv")
    assert (
        mask is None and "no ROI matching '^ctv'" in info["warning"] and "GTV-1" in info["warning"]
    )
    mask, info = gtv_mask(path, ct, ct_frame_of_reference=frame + "9", pattern="^gtv")
    assert mask is None and "ReferencedFrameOfReferenceSequence" in info["warning"]


def test_an_unreadable_rtstruct_names_its_file(tmp_path, ct):
    broken = tmp_path / "rtstruct.dcm"
    broken.write_bytes(b"not dicom")
    with pytest.raises(PatientInputError, match="RTSTRUCT") as error:
        gtv_mask(broken, ct, ct_frame_of_reference="", pattern="^gtv")
    assert str(broken) in str(error.value)


def test_a_broken_rtstruct_leaves_the_images_ingested(run, tmp_path):
    """The RTSTRUCT's file list points at a broken file: ingest still writes the CT, warns, and
    writes no GTV."""
    series = run / "ingest/series.tsv"
    folder = tmp_path / "ingest"
    shutil.copytree(series.parent / "series_files", folder / "series_files")
    table = pd.read_csv(series, sep="\t", dtype=str, keep_default_na=False)
    rtstruct_list = folder / table.set_index("chosen").loc["RTSTRUCT", "files"]
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    rtstruct_list.write_text(f"{broken}\n")
    table.to_csv(folder / "series.tsv", sep="\t", index=False)
    out = folder / PID
    argv = ["--params", json.dumps({"cohort": {"source": "dicom"}}), "ingest", "--patient", PID]
    assert main([*argv, "--series", str(folder / "series.tsv"), "--out-dir", str(out)]) == 0
    record = json.loads((out / "ingest.json").read_text())
    assert record["status"] == "ok" and record["gtv"] is None
    assert any("RTSTRUCT" in w and str(broken) in w for w in record["warnings"])
    assert (out / "ct.nii.gz").is_file() and not (out / "gtv.nii.gz").exists()
