"""The per-patient status protocol: images only for patients that succeed, sidecars last, and
the first failure carried down the chain of stages to the cohort table."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest
import SimpleITK as sitk

from lungfusion.commands import register as register_command
from lungfusion.commands import roi as roi_command
from lungfusion.commands import segment as segment_command
from lungfusion.errors import PatientInputError
from lungfusion.evaluation.tables import excluded_patients
from lungfusion.status import (
    describe,
    failure_of,
    first_upstream_failure,
    run_patient_stage,
    staging_dir,
)
from lungfusion.training.splits import cohort_table


def _image(path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), str(path))


def _run(tmp_path, work, **kwargs):
    return run_patient_stage(
        stage="segment", patient="P1", sidecar_path=tmp_path / "out" / "segment.json",
        image_dir=tmp_path / "out", image_names=("lungs.nii.gz", "region.nii.gz"),
        record={"inputs": {}, "parameters": {"a": 1}}, work=work, **kwargs,
    )  # fmt: skip


def test_images_move_into_place_only_when_the_stage_succeeds(tmp_path):
    def work(staging, timer):
        _image(staging / "lungs.nii.gz")
        return {"outputs": {"lungs": "lungs.nii.gz"}, "warnings": ["thin lungs"]}

    record = _run(tmp_path, work)
    out = tmp_path / "out"
    assert record["status"] == "ok" and record["warnings"] == ["thin lungs"]
    assert sorted(p.name for p in out.iterdir()) == ["lungs.nii.gz", "segment.json"]
    assert json.loads((out / "segment.json").read_text())["parameters"] == {"a": 1}


def test_a_failed_patient_keeps_its_sidecar_and_no_image(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _image(out / "region.nii.gz")  # stale, from an earlier successful run

    def work(staging, timer):
        _image(staging / "lungs.nii.gz")
        raise PatientInputError("no lungs found", file="ct.nii.gz", tag="ImagePositionPatient")

    record = _run(tmp_path, work)
    assert record["status"] == "failed" and record["error"]["tag"] == "ImagePositionPatient"
    assert record["error"]["patient"] == "P1"
    assert [p.name for p in out.iterdir()] == ["segment.json"]


def test_an_interrupted_stage_leaves_no_final_image_and_no_sidecar(tmp_path):
    def work(staging, timer):
        _image(staging / "lungs.nii.gz")
        raise KeyboardInterrupt  # a killed job: not bad input

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, work)
    assert list((tmp_path / "out").iterdir()) == []
    # a staging folder a SIGKILL left behind goes at the patient's next run
    left = staging_dir(tmp_path / "out", "segment", "P1")
    left.mkdir()
    _image(left / "lungs.nii.gz")
    _run(tmp_path, lambda staging, timer: {"outputs": {}})
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["segment.json"]


def test_a_run_leaves_the_staging_folder_of_a_patient_with_a_longer_id_alone(tmp_path):
    """roi stages every patient in one folder: P1's run must not clear P1-2's, live beside it."""
    out = tmp_path / "out"
    live = staging_dir(out, "segment", "P1-2")
    live.mkdir(parents=True)
    _image(live / "lungs.nii.gz")
    _run(tmp_path, lambda staging, timer: {"outputs": {}})
    assert [p.name for p in live.iterdir()] == ["lungs.nii.gz"]


def test_the_first_failure_travels_down_the_stages(tmp_path):
    """ingest failed -> register, segment and roi skipped, each naming ingest and its message."""
    ingest = tmp_path / "ingest" / "P1"

    def no_weight(staging, timer):
        _image(staging / "ct.nii.gz")  # the CT was read before the PET failed
        raise PatientInputError(
            "PET has no patient weight", series="1.2.3.4", file="pet/1.dcm",
            tag="PatientWeight (0010,1030)",
        )  # fmt: skip

    run_patient_stage(
        stage="ingest", patient="P1", sidecar_path=ingest / "ingest.json", image_dir=ingest,
        image_names=("ct.nii.gz", "pet_suv.nii.gz"), record={}, work=no_weight,
    )  # fmt: skip
    assert [p.name for p in ingest.iterdir()] == ["ingest.json"]
    register, segment, roi = (tmp_path / name / "P1" for name in ("register", "segment", "roi"))
    args = argparse.Namespace(patient="P1", ingest_dir=str(ingest), out_dir=str(register))
    register_command.run(args, {"register": {}})
    args = argparse.Namespace(patient="P1", register_dir=register, out_dir=segment)
    segment_command.run(args, {})
    args = argparse.Namespace(
        patient="P1",
        register_dir=register,
        segment_dir=segment,
        out=roi / "P1.npz",
        ingest_dir=None,
    )
    roi_command.run(args, {})
    for path in (register / "register.json", segment / "segment.json", roi / "P1.json"):
        record = json.loads(path.read_text())
        assert record["status"] == "skipped"
        assert record["upstream"]["stage"] == "ingest"
        assert record["upstream"]["error"]["tag"] == "PatientWeight (0010,1030)"
    assert sorted(p.name for p in roi.iterdir()) == ["P1.json"]
    failure = first_upstream_failure({"segment": segment / "segment.json"})
    reason = (
        "ingest failed: patient P1: PET has no patient weight"
        " [series 1.2.3.4] [file pet/1.dcm] [tag PatientWeight (0010,1030)]"
    )
    assert describe(failure) == reason

    sheet = pd.DataFrame({"patient_id": ["P1"], "label": ["ADC"]})
    table = cohort_table(sheet, roi, classes=["ADC", "SQC"]).iloc[0]
    assert (table.included, table.excluded_at) == ("no", "ingest")
    assert table.reason == reason

    # results/metrics carries the same: the evaluate stage's exclusions.tsv
    cohort = tmp_path / "cohort.tsv"
    cohort_table(sheet, roi, classes=["ADC", "SQC"]).to_csv(cohort, sep="\t", index=False)
    excluded = excluded_patients(cohort)
    assert excluded.to_dict("records") == [
        {"patient_id": "P1", "label": "ADC", "excluded_at": "ingest", "reason": table.reason}
    ]


def test_a_missing_sidecar_is_a_failure_of_its_stage(tmp_path):
    failure = first_upstream_failure({"register": tmp_path / "register.json"})
    assert failure["stage"] == "register" and failure["status"] == "missing"
    assert describe(failure).startswith("register missing: no register sidecar")


def test_a_failure_recorded_before_text_existed_still_names_file_and_tag():
    """A workdir kept across an upgrade holds sidecars whose error has no ``text``."""
    error = {"message": "PET has no patient weight", "patient": "P1", "series": None,
             "file": "pet/1.dcm", "tag": "PatientWeight"}  # fmt: skip
    failure = failure_of({"stage": "ingest", "status": "failed", "error": error}, stage="ingest")
    assert failure["message"] == (
        "patient P1: PET has no patient weight [file pet/1.dcm] [tag PatientWeight]"
    )
