"""External validation on two synthetic cohorts of different seeds: the tiny internal cohort
trains the models, a second one (another seed and class mix, the same patient IDs) is scored
by them and never fit on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungfusion.models import required_modalities

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
MODELS = ["ct", "pet", "early", "clinical", "semantic"]
INTEGRATOR = "late_logistic"
EXTERNAL_SYNTHETIC = {
    "preset": "tiny",
    "n_patients": 6,
    "seed": 5,
    "class_prior": {"ADC": 0.5, "SQC": 0.5},
    "fraction_without_pet": 0.2,
}


def external_config(workdir: Path) -> Path:
    """The tiny config with fewer models, no fusion-depth grid, robustness or saliency, and the
    external cohort."""
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["train"]["models"] = MODELS
    config["train"].pop("multistage", None)  # no fusion-depth grid
    config["robustness"] = {}
    config["saliency"] = {"enabled": False}
    config["evaluate"] = {
        "n_bootstrap": 50,
        "external": {"dicom_root": "external/dicom", "sample_sheet": "external/clinical.tsv"},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(command: list[str], workdir: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if done.returncode != 0:
        pytest.fail(f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


@pytest.fixture(scope="module")
def external_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("external")
    params = json.dumps({"synthetic": EXTERNAL_SYNTHETIC})
    run([sys.executable, "-m", "lungfusion", "--params", params, "synth", "--out-dir", "external"],
        workdir)  # fmt: skip
    config = external_config(workdir)
    run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(config), "--cores", "2"],
        workdir)  # fmt: skip
    return workdir / "results"


def external_rois(results: Path) -> dict[str, bool]:
    """``{patient: has_pet}`` of the external patients whose ROI stage succeeded."""
    records = {p.stem: json.loads(p.read_text()) for p in (results / "external/roi").glob("*.json")}
    return {p: bool(r["has_pet"]) for p, r in records.items() if r["status"] == "ok"}


def test_every_model_scores_every_external_patient(external_run):
    rois = external_rois(external_run)
    assert len(rois) == EXTERNAL_SYNTHETIC["n_patients"]
    for model in [*MODELS, INTEGRATOR]:
        path = external_run / "external/predictions" / model / "predictions.tsv"
        table = pd.read_csv(path, sep="\t", dtype={"patient_id": str})
        reads_pet = model in ("pet", "early", "semantic")
        expected = {p for p, has_pet in rois.items() if has_pet or not reads_pet}
        assert set(table.patient_id) == expected, model
        assert (table.fold == -1).all()
        probs = table[["prob_ADC", "prob_SQC"]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all(), model
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for model in ("pet", "early"):
        assert "pet" in required_modalities(model)


def test_metrics_and_report_show_the_external_results(external_run):
    metrics = pd.read_csv(external_run / "external/metrics/all.tsv", sep="\t")
    assert set(metrics.model) == {*MODELS, INTEGRATOR}
    assert metrics[metrics.metric == "auroc"].value.between(0, 1).all()
    page = (external_run / "report/index.html").read_text()
    assert "External validation" in page
    table = pd.read_csv(external_run / "report/tables/external.csv")
    assert set(table.model) == {*MODELS, INTEGRATOR}


def test_an_id_shared_with_the_internal_cohort_does_not_clash(external_run):
    internal = pd.read_csv(external_run / "splits/folds.tsv", sep="\t", dtype=str)
    shared = sorted(set(internal.patient_id) & set(external_rois(external_run)))
    assert shared  # both cohorts number their patients SYN0001...
    for patient in shared:
        inside = np.load(external_run / "roi" / f"{patient}.npz")["ct"]
        outside = np.load(external_run / "external/roi" / f"{patient}.npz")["ct"]
        assert not np.array_equal(inside, outside)


def test_external_patients_never_reach_a_fit(external_run, tmp_path, monkeypatch):
    """Scoring the external cohort again with every fit of the code base made to fail gives
    the workflow's predictions: only saved models were applied."""
    import torch
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    from lungfusion import external
    from lungfusion.config import load_config
    from lungfusion.estimators import clinical, integrator, radiomics
    from lungfusion.training.engine import Trainer

    def no_fit(*args, **kwargs):
        raise AssertionError("an external patient reached a fit")

    for owner in (Pipeline, ColumnTransformer, SimpleImputer, StandardScaler,
                  LogisticRegression, CoxPHSurvivalAnalysis):  # fmt: skip
        monkeypatch.setattr(owner, "fit", no_fit)
    monkeypatch.setattr(ColumnTransformer, "fit_transform", no_fit)
    monkeypatch.setattr(Trainer, "fit", no_fit)
    monkeypatch.setattr(torch.Tensor, "backward", no_fit)
    monkeypatch.setattr(integrator, "fit_integrator", no_fit)
    monkeypatch.setattr(clinical, "fit_clinical_model", no_fit)
    monkeypatch.setattr(radiomics, "fit_radiomics_model", no_fit)

    root = external_run.parent
    ext = external_run / "external"
    config = load_config(root / "config.yaml")
    sheet = root / config["evaluate"]["external"]["sample_sheet"]  # its columns are ours
    external.run_external(
        train_dir=external_run / "train", integrator_dir=external_run / "integrate" / INTEGRATOR,
        roi_dir=ext / "roi", features_path=ext / "radiomics/features.tsv",
        sample_sheet=sheet, models=MODELS, out_dir=tmp_path, config=config,
    )  # fmt: skip
    for model in [*MODELS, INTEGRATOR]:
        again = pd.read_csv(tmp_path / "predictions" / model / "predictions.tsv", sep="\t")
        first = pd.read_csv(ext / "predictions" / model / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(again, first)


def test_survival_models_score_the_external_cohort(external_run, tmp_path):
    """task: survival on the same two cohorts (the imaging stages reused): the Cox models and
    the Cox integrator score every external patient with a risk, and the external metrics
    are concordance indices."""
    import shutil

    root = tmp_path / "survival"
    for folder in ("resources", "external"):
        shutil.copytree(external_run.parent / folder, root / folder)
    for stage in ("ingest", "register", "segment", "roi"):  # internal and external imaging
        shutil.copytree(external_run / stage, root / "results" / stage)
        shutil.copytree(external_run / "external" / stage, root / "results/external" / stage)
    config = yaml.safe_load((external_run.parent / "config.yaml").read_text())
    config.update(task="survival")
    config["train"]["models"] = ["ct", "pet", "clinical"]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(root), "--configfile", str(root / "config.yaml"), "--cores", "2"],
        root)  # fmt: skip
    ext = root / "results/external"
    rois = external_rois(root / "results")
    for model in ("ct", "pet", "clinical", "late_cox"):
        table = pd.read_csv(ext / "predictions" / model / "predictions.tsv", sep="\t",
                            dtype={"patient_id": str})  # fmt: skip
        assert {"risk", "survival_days", "event"} <= set(table.columns), model
        expected = {p for p, has_pet in rois.items() if has_pet or model != "pet"}
        assert set(table.patient_id) == expected, model
        assert (table.fold == -1).all()
        assert np.isfinite(table.risk).all() and table.risk.std() > 0, model
    metrics = pd.read_csv(ext / "metrics/all.tsv", sep="\t")
    assert set(metrics.model) == {"ct", "pet", "clinical", "late_cox"}
    harrell = metrics[metrics.metric == "c_harrell"].set_index("model").value
    assert harrell.between(0, 1).all() and len(harrell) == 4
    assert "auroc" not in set(metrics.metric)
