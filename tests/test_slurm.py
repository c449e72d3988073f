"""The workflow on a real one-node SLURM cluster through profiles/slurm.

The module fixture uses a cluster that already answers (`scontrol ping`), or starts one with
.ci/slurm-up.sh (root; installs slurm-wlm and munge when missing) and stops it afterwards with
.ci/slurm-down.sh. Where neither works, the tests are skipped with the reason.

What is checked: the run ends successfully, every SLURM job it submitted completed, training jobs
were submitted with a GPU request (`--gpus=1` in the sbatch call, a gpu TRES on the job in
slurmctld) to the GPU partition, and the other jobs asked for no GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SLURM_UP = REPO / ".ci" / "slurm-up.sh"
SLURM_DOWN = REPO / ".ci" / "slurm-down.sh"
PROFILE = REPO / "profiles" / "slurm"
TINY_CONFIG = REPO / "tests" / "tiny_config.yaml"

# Rules that train networks: they request gpu=1 and the profile sends them to this partition.
TRAINING_RULES = {"train", "sfsa"}
GPU_PARTITION = "gpu"

# Which workflow the test runs: "toy" (a three-rule Snakefile written here) or "real" (the
# repository's Snakefile on the tiny config, trimmed further below). One line to switch.
WORKFLOW = "real"

# Trims the tiny config further for the cluster run: every job pays SLURM's scheduling and a
# Snakemake start-up, on 2 cores. One model (2 folds: two GPU jobs), and the late-fusion
# integrator on it and the clinical model only, so no other model has to be trained for it;
# none of the tiny config's optional analyses (grid, exhaustive SFSA, robustness, saliency).
REAL_OVERRIDES = {
    "synthetic": {"n_patients": 6},
    "train": {"models": ["ct"], "multistage": {"grid": None}, "sfsa_exhaustive": False},
    "integrate": {"submodels": ["ct", "clinical"]},
    "robustness": {"misalignment_mm": [], "drop_pet_fraction": []},
    "saliency": {"enabled": False},
}

# Toy workflow: one CPU rule chain and one training rule that requests a GPU like the real ones.
TOY_SNAKEFILE = """
rule all:
    input:
        "b.txt",
        "train.txt",


rule a:
    output:
        "a.txt",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "echo a > {output}"


rule b:
    input:
        "a.txt",
    output:
        "b.txt",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "cat {input} > {output} && echo b >> {output}"


rule train:
    input:
        "a.txt",
    output:
        "train.txt",
    threads: 2
    resources:
        mem_mb=500,
        runtime=5,
        gpu=1,
    shell:
        "echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def cluster_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    try:
        return _run(["scontrol", "ping"], timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def partitions() -> set[str]:
    out = _run(["sinfo", "-h", "-o", "%P"], timeout=20).stdout
    return {p.rstrip("*") for p in out.split()}


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running SLURM cluster with a GPU partition; stops it afterwards if it started it."""
    started = False
    if not cluster_answers():
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers and starting one needs root")
        if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
            pytest.skip(
                "no SLURM cluster answers, slurm-wlm is not installed and there is no apt-get"
            )
        up = _run(["bash", str(SLURM_UP)], timeout=900)
        if up.returncode != 0:
            pytest.skip(
                f"could not start SLURM with {SLURM_UP.name}: {(up.stderr or up.stdout)[-800:]}"
            )
        started = True
    try:
        if GPU_PARTITION not in partitions():
            pytest.skip(f"the running SLURM cluster has no '{GPU_PARTITION}' partition")
        yield
    finally:
        if started:
            down = _run(["bash", str(SLURM_DOWN)], timeout=120)
            assert down.returncode == 0, down.stderr


def prepare_workflow(workdir: Path) -> tuple[Path, list[str]]:
    """The Snakefile to run and its extra arguments, for WORKFLOW."""
    if WORKFLOW == "toy":
        snakefile = workdir / "Snakefile"
        snakefile.write_text(TOY_SNAKEFILE)
        return snakefile, []
    overrides = workdir / "slurm_overrides.yaml"
    overrides.write_text(yaml.safe_dump(REAL_OVERRIDES))
    return REPO / "Snakefile", ["--configfile", str(TINY_CONFIG), str(overrides)]


def run_workflow(
    workdir: Path, profile: Path, extra_args: list[str], *, snakefile: Path
) -> subprocess.CompletedProcess:
    """Run Snakemake with a profile in `workdir`; its output goes to workdir/snakemake.log."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        "--profile", str(profile),
        *extra_args,
    ]  # fmt: skip
    result = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=600, check=False
    )
    (workdir / "snakemake.log").write_text(result.stdout + result.stderr)
    return result


def last_job_id() -> int:
    out = _run(["squeue", "--states=all", "-h", "-o", "%i"], timeout=20).stdout
    ids = [int(i.split("_")[0]) for i in out.split() if i.split("_")[0].isdigit()]
    return max(ids, default=0)


def jobs_since(first_id: int) -> list[dict[str, str]]:
    """slurmctld's record of every job from first_id on (finished jobs stay for MinJobAge)."""
    out = _run(["scontrol", "show", "job", "-o"], timeout=30).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobId", "").isdigit() and int(fields["JobId"]) >= first_id:
            jobs.append(fields)
    return jobs


def rule_of(job: dict[str, str]) -> str:
    """The rule a job ran: the executor sets the comment to rule_<name>[_wildcards_...]."""
    match = re.match(r"rule_(.+?)(_wildcards_.*)?$", job.get("Comment", ""))
    assert match, f"job {job['JobId']} has no rule comment: {job.get('Comment')!r}"
    return match.group(1)


def sbatch_calls(log: str) -> dict[str, list[str]]:
    """rule -> the sbatch command lines Snakemake logged (with --verbose)."""
    calls: dict[str, list[str]] = {}
    for line in log.splitlines():
        match = re.search(
            r"sbatch call: (sbatch .*?--comment '?rule_([A-Za-z0-9_]+?)(_wildcards_\S*)?'? .*)",
            line,
        )
        if match:
            calls.setdefault(match.group(2), []).append(match.group(1))
    return calls


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """Runs the workflow once through profiles/slurm; the tests below inspect the run."""
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    snakefile, args = prepare_workflow(workdir)
    first_id = last_job_id() + 1
    result = run_workflow(
        workdir,
        PROFILE,
        [
            *args,
            "--verbose",  # logs each sbatch call
            "--slurm-keep-successful-logs",
            "--slurm-init-seconds-before-status-checks", "2",
            "--seconds-between-status-checks", "2",
            "--latency-wait", "10",
        ],
        snakefile=snakefile,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake failed (see {workdir}/snakemake.log):\n{log[-4000:]}"
    return {"workdir": workdir, "log": log, "jobs": jobs_since(first_id)}


def test_every_job_ran_on_slurm_and_completed(slurm_run):
    jobs = slurm_run["jobs"]
    assert jobs, "slurmctld knows no job from this run"
    states = {job["JobId"]: job["JobState"] for job in jobs}
    assert set(states.values()) == {"COMPLETED"}, states
    rules = {rule_of(job) for job in jobs}
    assert rules & TRAINING_RULES, f"no training job was submitted; rules seen: {sorted(rules)}"
    assert rules - TRAINING_RULES, f"only training jobs were submitted: {sorted(rules)}"


def test_training_jobs_request_a_gpu_on_the_gpu_partition(slurm_run):
    for job in slurm_run["jobs"]:
        rule = rule_of(job)
        gpu_request = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
        if rule in TRAINING_RULES:
            assert gpu_request, f"{rule} job {job['JobId']} has no GPU request: {job}"
            assert job["Partition"] == GPU_PARTITION, job["Partition"]
        else:
            assert not gpu_request, f"{rule} job {job['JobId']} requests a GPU: {job}"
            assert job["Partition"] != GPU_PARTITION, f"{rule} job went to the GPU partition"


def test_sbatch_calls_carry_resources_from_the_rules(slurm_run):
    calls = sbatch_calls(slurm_run["log"])
    training = [call for rule in TRAINING_RULES for call in calls.get(rule, [])]
    assert training, f"no sbatch call for a training rule in the log; rules: {sorted(calls)}"
    for call in training:
        assert "--gpus=1" in call, call
        assert f"-p {GPU_PARTITION}" in call, call
        assert "--gres" not in call, f"GPU requested twice (gpu resource and gres): {call}"
    for rule, rule_calls in calls.items():
        for call in rule_calls:
            assert re.search(r"--mem \d+", call), f"{rule}: no memory request: {call}"
            assert re.search(r" -t \d+", call), f"{rule}: no runtime: {call}"
            if rule not in TRAINING_RULES:
                assert "--gpus" not in call, f"{rule} requests a GPU: {call}"


@pytest.mark.skipif(WORKFLOW != "toy", reason="only the toy training rule records its GPU")
def test_training_job_saw_its_gpu(slurm_run):
    """SLURM bound the fake GPU to the job step: CUDA_VISIBLE_DEVICES is set inside it."""
    text = (slurm_run["workdir"] / "train.txt").read_text()
    assert re.fullmatch(r"CUDA_VISIBLE_DEVICES=\d+\s*", text), text
