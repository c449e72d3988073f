"""What Snakemake reruns after a change, on one tiny cohort built once for the module.

The cohort: 7 synthetic patients generated here, read through `cohort.source: dicom` from a
sample sheet that lists 6 of them (so one can be added later), CT model only, 2 folds, 1 epoch,
tiny widths. The workflow runs once to the end in the module fixture; each test then asks
Snakemake what it would do (`--dry-run`) or runs it and reads the job counts it prints (its
"Job stats" table) and the sidecars' modification times.

The tests run in file order: the dry runs leave the results as they are, then a patient is
added (a real run to the end), then a training job is killed and redone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from lungfusion.synth import generate_cohort

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
N_PATIENTS = 6  # in the first sample sheet; the generated tree holds one more
IMAGING = ("ingest", "register", "segment", "roi")
COHORT_STAGES = ("splits", "train", "integrate", "evaluate")
CONFIG = {
    "results": "results",
    "cohort": {"source": "dicom", "dicom_root": "cohort/dicom", "sample_sheet": "clinical.tsv"},
    "register": {"max_iterations": 30},
    "roi": {"shape": [32, 32, 16]},
    "splits": {"n_folds": 2, "validation_fraction": 0.34},
    "train": {"models": ["ct"], "epochs": 1, "batch_size": 2, "widths": [4, 8, 16]},
    "integrate": {"submodels": ["ct", "clinical"]},
}


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Snakemake on the module's cohort, output captured (and kept in workdir/last_run.log)."""
    result = subprocess.run(
        [*snakemake_command(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    (workdir / "last_run.log").write_text(output)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{output[-4000:]}"
    return result


def snakemake_command(workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        "--cores", "2",
    ]  # fmt: skip


def job_counts(result: subprocess.CompletedProcess) -> dict[str, int]:
    """rule -> jobs, from the first "Job stats" table Snakemake printed; {} if none."""
    output = result.stdout + result.stderr
    table = output.split("Job stats:", 1)
    if len(table) == 1:
        return {}
    counts = {}
    for line in table[1].splitlines()[3:]:
        match = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def sidecar(workdir: Path, stage: str, pid: str) -> Path:
    if stage == "roi":
        return workdir / "results" / "roi" / f"{pid}.json"
    return workdir / "results" / stage / pid / f"{stage}.json"


def imaging_mtimes(workdir: Path, pids: list[str]) -> dict[str, int]:
    return {
        f"{stage}/{pid}": sidecar(workdir, stage, pid).stat().st_mtime_ns
        for stage in IMAGING
        for pid in pids
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """A finished tiny run: its folder, the patients in its sheet and the one left out."""
    workdir = tmp_path_factory.mktemp("reruns")
    generate_cohort(
        workdir / "cohort",
        preset="tiny",
        n_patients=N_PATIENTS + 1,
        seed=11,
        class_prior={"ADC": 0.5, "SQC": 0.5},
        fraction_without_pet=0.0,
    )
    lines = (workdir / "cohort" / "clinical.tsv").read_text().splitlines(keepends=True)
    (workdir / "clinical.tsv").write_text("".join(lines[: N_PATIENTS + 1]))
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(workdir, "--rerun-incomplete")
    counts = job_counts(result)
    assert counts["ingest"] == counts["roi"] == N_PATIENTS, counts
    pids = [line.split("\t", 1)[0] for line in lines[1:]]
    return {"dir": workdir, "pids": pids[:N_PATIENTS], "extra": pids[N_PATIENTS]}


def test_a_second_run_does_nothing(cohort):
    result = snakemake(cohort["dir"], "--rerun-incomplete")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert job_counts(result) == {}


def test_adding_a_model_or_retuning_another_trains_only_the_new_one(cohort):
    config = yaml.safe_load((cohort["dir"] / "config.yaml").read_text())
    config["train"]["models"] = ["ct", "pet"]
    config["train"]["semantic"] = {"C": 0.5}  # another model's own section
    config["train"]["sfsa_epochs"] = 3  # only sfsa reads it
    changed = cohort["dir"] / "config_more_models.yaml"
    changed.write_text(yaml.safe_dump(config))
    command = [*snakemake_command(cohort["dir"])[:-4], "--configfile", str(changed)]
    result = subprocess.run([*command, "--cores", "2", "-n"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = job_counts(result)
    assert counts["train"] == 2, counts  # pet's two folds; ct's stay
    assert "model=pet, fold=0" in result.stdout and "model=ct," not in result.stdout


def test_a_registration_parameter_reruns_registration_and_downstream_only(cohort):
    workdir = cohort["dir"]
    override = workdir / "register_override.yaml"
    override.write_text(yaml.safe_dump({"register": {"max_iterations": 31}}))
    result = snakemake(
        workdir, "--dry-run", "--configfile", str(workdir / "config.yaml"), str(override)
    )
    counts = job_counts(result)
    n = N_PATIENTS
    assert {r: counts.get(r) for r in ("register", "segment", "roi")} == dict.fromkeys(
        ("register", "segment", "roi"), n
    ), counts
    assert not {"synth", "index", "ingest"} & counts.keys(), counts
    # 2 folds of the ct model and of the clinical submodel the integrator reads
    assert counts["splits"] == 1 and counts["train"] == 4 and counts["evaluate"] == 1, counts
    assert "params have changed" in result.stdout + result.stderr


def test_forcing_segment_reruns_segmentation_and_downstream_only(cohort):
    result = snakemake(cohort["dir"], "--dry-run", "-R", "segment")
    counts = job_counts(result)
    assert counts["segment"] == counts["roi"] == N_PATIENTS, counts
    assert not {"synth", "index", "ingest", "register"} & counts.keys(), counts
    assert all(counts.get(stage) for stage in COHORT_STAGES), counts


def test_adding_a_patient_runs_its_imaging_and_the_cohort_stages_only(cohort):
    workdir, pids, extra = cohort["dir"], cohort["pids"], cohort["extra"]
    before = imaging_mtimes(workdir, pids)
    shutil.copyfile(workdir / "cohort" / "clinical.tsv", workdir / "clinical.tsv")

    result = snakemake(workdir, "--rerun-incomplete")

    counts = job_counts(result)
    assert {stage: counts.get(stage) for stage in IMAGING} == dict.fromkeys(IMAGING, 1), counts
    assert all(counts.get(stage) for stage in COHORT_STAGES), counts
    assert imaging_mtimes(workdir, pids) == before, "another patient's imaging job reran"
    for stage in IMAGING:
        assert json.loads(sidecar(workdir, stage, extra).read_text())["status"] == "ok"
    folds = (workdir / "results" / "splits" / "folds.tsv").read_text()
    assert extra in folds


def test_a_killed_job_leaves_no_complete_looking_output_and_is_redone(cohort):
    workdir = cohort["dir"]
    target = workdir / "results" / "train" / "ct" / "fold0" / "summary.json"
    assert target.exists()
    relative = str(target.relative_to(workdir))
    started = time.monotonic()
    run = subprocess.Popen(
        [*snakemake_command(workdir), relative, "--forcerun", relative],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed whole below
    )
    try:
        job = wait_for_descendant(run.pid, ("train", "--fold"), timeout=300)
        # into the job: the engine drops the old sidecar as it starts (after importing torch,
        # seconds on a busy machine), then trains for about 15 s
        deadline = time.monotonic() + 120
        while target.exists() and job.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert job.is_running(), "the training job ended before it could be killed"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    assert not target.exists(), "a killed training job left its sidecar behind"
    # A killed Snakemake leaves its lock: the user runs --unlock once, then runs again.
    snakemake(workdir, "--unlock")

    result = snakemake(workdir, relative, "--rerun-incomplete")

    assert job_counts(result) == {"train": 1}
    assert target.stat().st_mtime > started
    assert json.loads(target.read_text())["status"] == "ok"


def wait_for_descendant(pid: int, words: tuple[str, ...], *, timeout: float) -> psutil.Process:
    """The first process under `pid` whose command line holds all `words`."""
    parent = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if all(word in cmdline for word in words) and "lungfusion" in " ".join(cmdline):
                return child
        assert parent.is_running(), "snakemake ended before the training job started"
        time.sleep(0.1)
    raise AssertionError(f"no process with {words} started under snakemake in {timeout} s")
