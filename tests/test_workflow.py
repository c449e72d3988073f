"""The whole Snakefile on the tiny synthetic cohort: every artifact appears, a rerun does nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lungfusion.models import required_modalities

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        *SNAKEMAKE,
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "tests" / "tiny_config.yaml"),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(workdir, "--cores", "2")
    if result.returncode != 0:
        pytest.fail(f"workflow failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return workdir / "results"


def test_every_stage_leaves_its_artifacts(tiny_run):
    sheet = pd.read_csv(tiny_run.parent / "resources/synthetic/clinical.tsv", sep="\t")
    assert len(sheet) == 8
    series = pd.read_csv(tiny_run / "ingest/series.tsv", sep="\t", dtype=str)
    assert set(series.loc[series.chosen == "CT", "patient_id"]) == set(sheet.patient_id)
    for pid in sheet.patient_id:
        for stage in ("ingest", "register", "segment"):
            record = json.loads((tiny_run / stage / pid / f"{stage}.json").read_text())
            assert record["status"] == "ok", (pid, stage, record.get("error"))
        assert (tiny_run / "ingest" / pid / "ct.nii.gz").stat().st_size > 0
        assert (tiny_run / "register" / pid / "ct.nii.gz").stat().st_size > 0
        assert (tiny_run / "segment" / pid / "lungs.nii.gz").stat().st_size > 0
        roi = np.load(tiny_run / "roi" / f"{pid}.npz")
        assert roi["ct"].shape == (16, 32, 32)  # (z, y, x) of roi.shape [32, 32, 16]
        assert roi["ct"].min() >= 0.0 and roi["ct"].max() <= 1.0
        assert (tiny_run / "roi" / f"{pid}.png").stat().st_size > 0


def test_patients_with_an_earlier_ct_only_study_keep_their_pet(tiny_run):
    truth_dir = tiny_run.parent / "resources/synthetic/ground_truth"
    with_prior = json.loads((truth_dir / "cohort.json").read_text())["with_prior_ct_study"]
    assert len(with_prior) == 2  # fraction_with_prior_study 0.25 of 8
    series = pd.read_csv(tiny_run / "ingest/series.tsv", sep="\t", dtype=str)
    for pid in with_prior:
        uids = json.loads((truth_dir / pid / "latents.json").read_text())["series_uids"]
        chosen = series[series.patient_id == pid].set_index("series_uid").chosen
        assert chosen[uids["ct"]] == "CT" and chosen[uids["pet"]] == "PT"
        assert pd.isna(chosen[uids["prior_ct"]])
        assert json.loads((tiny_run / "ingest" / pid / "ingest.json").read_text())["has_pet"]


def test_patients_without_pet_are_ct_only(tiny_run):
    truth = pd.read_csv(tiny_run.parent / "resources/synthetic/ground_truth/latents.tsv", sep="\t")
    for pid in truth.patient_id:
        ingest = json.loads((tiny_run / "ingest" / pid / "ingest.json").read_text())
        assert ingest["has_pet"] == (tiny_run / "ingest" / pid / "pet_suv.nii.gz").exists()
        roi = np.load(tiny_run / "roi" / f"{pid}.npz")
        assert bool(roi["has_pet"]) == ingest["has_pet"]
        if not ingest["has_pet"]:
            assert not roi["pet"].any()


def test_every_model_predicts_every_fold(tiny_run):
    folds = pd.read_csv(tiny_run / "splits/folds.tsv", sep="\t")
    for model in ("ct", "pet", "early", "late", "single_stage", "multistage", "mmtm"):
        tested = []
        for fold in (0, 1):
            fold_dir = tiny_run / "train" / model / f"fold{fold}"
            assert json.loads((fold_dir / "summary.json").read_text())["status"] == "ok"
            predictions = pd.read_csv(fold_dir / "predictions.tsv", sep="\t")
            assert np.allclose(predictions[["prob_ADC", "prob_SQC"]].sum(axis=1), 1.0, atol=1e-5)
            expected = folds[(folds.fold == fold) & (folds.role == "test")]
            if "pet" in required_modalities(model):
                expected = expected[expected.has_pet]  # CT-only patients are left out, counted
            assert set(predictions.patient_id) == set(expected.patient_id)
            tested += list(predictions.patient_id)
        assert len(tested) == len(set(tested))  # each patient tested at most once


def test_the_radiomics_model_reads_the_lesion_features(tiny_run):
    features = pd.read_csv(tiny_run / "radiomics/features.tsv", sep="\t", dtype={"patient_id": str})
    folds = pd.read_csv(tiny_run / "splits/folds.tsv", sep="\t", dtype={"patient_id": str})
    assert set(features.patient_id) == set(folds.patient_id)
    assert (features.status == "ok").mean() >= 0.75  # the tiny preset's smallest lesions may vanish
    ok = features[features.status == "ok"]
    assert (ok.lesion_ml > 0).all() and ok.ct_firstorder_Mean.notna().all()
    for fold in (0, 1):
        fold_dir = tiny_run / "train" / "radiomics" / f"fold{fold}"
        assert json.loads((fold_dir / "summary.json").read_text())["status"] == "ok"
        predictions = pd.read_csv(fold_dir / "predictions.tsv", sep="\t", dtype={"patient_id": str})
        expected = folds[(folds.fold == fold) & (folds.role == "test") & folds.has_pet]
        assert set(predictions.patient_id) == set(expected.patient_id)
    assert ok[ok.has_pet].ctpet_offset_cosine.between(-1, 1).all()
    assert ok.loc_lateral_fraction.between(0, 1).all() and ok.sem_solid_fraction.notna().all()
    summary = json.loads((tiny_run / "train/semantic/fold0/summary.json").read_text())
    assert summary["status"] == "ok" and len(summary["features"]) == 7
    metrics = pd.read_csv(tiny_run / "metrics/all.tsv", sep="\t")
    assert {"radiomics", "semantic"} <= set(metrics.model)


def test_late_fusion_integrates_the_image_submodels(tiny_run):
    """The integrator reads every configured submodel's fold predictions, not only its own
    clinical fit: CT and PET scores are features in every fold."""
    summary = json.loads((tiny_run / "integrate/late_logistic/summary.json").read_text())
    for fold in summary["folds"]:
        assert {"ct", "pet", "clinical"} <= set(fold["submodel_sources"]), fold["fold"]
        used = {name for p in fold["patterns"] for name in p["pattern"].split("+")}
        assert {"ct", "clinical"} <= used, fold["patterns"]


def test_robustness_scores_every_image_fusion_network_at_every_level(tiny_run):
    """The sweep scores each CT+PET network's test patients with PET at every configured level;
    unperturbed, the scores are the model's own test predictions; a withheld PET changes them."""
    summary = pd.read_csv(tiny_run / "robustness/summary.tsv", sep="\t")
    scores = pd.read_csv(tiny_run / "robustness/scores.tsv", sep="\t", dtype={"patient_id": str})
    folds = pd.read_csv(tiny_run / "splits/folds.tsv", sep="\t", dtype={"patient_id": str})
    n_test = int((folds.role == "test")[folds.has_pet].sum())
    networks = {"early", "late", "single_stage", "multistage", "mmtm", "sfsa"}
    assert set(summary.model) == networks | {"late_logistic"}
    integrator = summary[summary.model == "late_logistic"]
    assert list(integrator.level) == [0.0, 1.0] and set(integrator.perturbation) == {"drop_pet"}
    assert integrator.withheld_pet.str.contains("no-PET pattern").all()
    own = pd.read_csv(tiny_run / "integrate/late_logistic/predictions.tsv", sep="\t",
                      dtype={"patient_id": str}).set_index("patient_id")  # fmt: skip
    still = scores[(scores.model == "late_logistic") & (scores.level == 0)]
    expected = own.loc[still.patient_id, "prob_SQC"].to_numpy()
    np.testing.assert_allclose(still.prob_SQC.to_numpy(), expected, atol=1e-6)
    scores = scores[scores.model != "late_logistic"]
    for model in networks:
        rows = summary[summary.model == model]
        assert list(zip(rows.perturbation, rows.level, strict=True)) == [
            ("shift_mm", 0.0),
            ("shift_mm", 5.0),
            ("drop_pet", 0.0),
            ("drop_pet", 1.0),
        ]
        assert (rows.n == n_test).all()
        own = pd.concat(
            pd.read_csv(path, sep="\t", dtype={"patient_id": str})
            for path in (tiny_run / "train" / model).glob("fold*/predictions.tsv")
        ).set_index("patient_id")
        model_scores = scores[scores.model == model]
        for perturbation in ("shift_mm", "drop_pet"):
            still = model_scores[
                (model_scores.perturbation == perturbation) & (model_scores.level == 0)
            ]
            expected = own.loc[still.patient_id, "prob_SQC"].to_numpy()
            np.testing.assert_allclose(still.prob_SQC.to_numpy(), expected, atol=1e-4)
    dropped = scores[(scores.perturbation == "drop_pet") & (scores.level == 1.0)]
    kept = scores[(scores.perturbation == "drop_pet") & (scores.level == 0.0)]
    assert not np.allclose(dropped.prob_SQC.to_numpy(), kept.prob_SQC.to_numpy(), atol=1e-4)
    page = (tiny_run / "report/index.html").read_text()
    assert "Robustness to a misaligned or missing PET" in page
    assert (tiny_run / "report/figures/robustness.png").stat().st_size > 0


def test_saliency_explains_every_image_fusion_network(tiny_run):
    patients = pd.read_csv(tiny_run / "saliency/patients.tsv", sep="\t", dtype={"patient_id": str})
    summary = pd.read_csv(tiny_run / "saliency/summary.tsv", sep="\t")
    folds = pd.read_csv(tiny_run / "splits/folds.tsv", sep="\t", dtype={"patient_id": str})
    tested = set(folds.patient_id[(folds.role == "test") & folds.has_pet])
    networks = {"early", "late", "single_stage", "multistage", "mmtm", "sfsa"}
    assert set(summary.model) == networks
    for model in networks:
        rows = patients[patients.model == model]
        assert set(rows.patient_id) == tested
        for pid in rows.patient_id:
            assert (tiny_run / "saliency" / model / f"{pid}.png").stat().st_size > 0
    shares = patients[["ct_share_in_lesion", "pet_share_in_lesion", "pet_share_of_saliency"]]
    assert shares.stack().between(0, 1).all() and shares.notna().any().all()
    page = (tiny_run / "report/index.html").read_text()
    assert "<h2" in page and "Saliency" in page and "alt='saliency " in page


def test_the_fusion_depth_grid_trains_each_cell_on_the_same_folds(tiny_run):
    folds = pd.read_csv(tiny_run / "splits/folds.tsv", sep="\t", dtype={"patient_id": str})
    metrics = pd.read_csv(tiny_run / "metrics/all.tsv", sep="\t")
    for stages in (1, 2):
        name = f"multistage_L{stages}_N1"
        assert name in set(metrics.model)
        for fold in sorted(folds.fold.unique()):
            fold_dir = tiny_run / "train" / name / f"fold{fold}"
            tested = pd.read_csv(fold_dir / "predictions.tsv", sep="\t", dtype={"patient_id": str})
            expected = folds[(folds.fold == fold) & (folds.role == "test") & folds.has_pet]
            assert set(tested.patient_id) == set(expected.patient_id)
            build = torch.load(fold_dir / "model.pt", weights_only=False)["model"]["build"]
            assert len(build["widths"]) == stages and build["blocks_per_stage"] == 1
    assert (tiny_run / "report/figures/fusion_grid.png").stat().st_size > 0


def test_sfsa_is_ranked_against_every_position_subset(tiny_run):
    """train.sfsa_exhaustive: every subset of the MMTM positions (the baseline included) per fold,
    the greedy choice's rank in best.json and the report's section."""
    from lungfusion.models import MMTM_POSITIONS

    n_subsets = 2 ** len(MMTM_POSITIONS)
    paths = sorted(tiny_run.glob("sfsa/fold*/exhaustive.tsv"))
    assert len(paths) == 2
    for path in paths:
        table = pd.read_csv(path, sep="\t", dtype={"positions": str})
        assert len(table) == n_subsets and table.positions.is_unique
        assert (table.positions != "none").sum() == n_subsets - 1
        record = json.loads((path.parent / "best.json").read_text())["exhaustive"]
        assert record["n_subsets"] == n_subsets and 1 <= record["rank"] <= n_subsets
    page = (tiny_run / "report/index.html").read_text()
    assert "SFSA against exhaustive search" in page


def test_metrics_and_report(tiny_run):
    table = pd.read_csv(tiny_run / "metrics/all.tsv", sep="\t")
    assert {"ct", "multistage", "mmtm", "late_logistic"} <= set(table.model)
    auc = table[table.metric == "auroc"]
    assert auc.value.between(0, 1).all()
    assert (auc.ci_low <= auc.value + 1e-9).all() and (auc.value <= auc.ci_high + 1e-9).all()
    page = (tiny_run / "report/index.html").read_text()
    assert "multistage" in page and "data:image/png;base64," in page
    assert (tiny_run / "report/tables/metrics.tex").read_text().count("\\textbf") >= 1


def test_a_second_run_does_nothing(tiny_run):
    result = snakemake(tiny_run.parent, "--cores", "2", "-n")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_and_format_are_clean(repo_dir, tmp_path):
    lint = subprocess.run(
        [
            *SNAKEMAKE,
            "--lint",
            "--directory",
            str(tmp_path),
            "--configfile",
            str(repo_dir / "tests/tiny_config.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=repo_dir,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    snakefmt = Path(sys.executable).with_name("snakefmt")
    fmt = subprocess.run(
        [str(snakefmt), "--check", "Snakefile", "workflow"],
        capture_output=True,
        text=True,
        cwd=repo_dir,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_survival_task_end_to_end(tiny_run, tmp_path):
    """task: survival reuses the imaging stages and trains Cox models, a Cox integrator, KM curves."""
    workdir = tmp_path / "survival"
    workdir.mkdir()
    shutil.copytree(tiny_run.parent / "resources", workdir / "resources")
    for stage in ("ingest", "register", "segment", "roi"):  # keep the imaging stages only
        shutil.copytree(tiny_run / stage, workdir / "results" / stage)
    result = snakemake(
        workdir,
        "--cores",
        "2",
        "--config",
        "task=survival",
        "train={models: [ct, pet, mmtm, clinical]}",
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert "rule register:" not in result.stdout + result.stderr  # imaging not redone
    results = workdir / "results"
    predictions = pd.read_csv(results / "train/ct/fold0/predictions.tsv", sep="\t")
    assert {"risk", "survival_days", "event"} <= set(predictions.columns)
    table = pd.read_csv(results / "metrics/all.tsv", sep="\t")
    assert {"ct", "pet", "mmtm", "clinical", "late_cox"} <= set(table.model)
    harrell = table[table.metric == "c_harrell"].value.dropna()
    assert len(harrell) >= 4 and harrell.between(0, 1).all()
    assert (results / "report/figures/km.png").stat().st_size > 0


def test_pretrained_starts_end_to_end(tiny_run, tmp_path):
    """train.init pretrain with auxiliary targets: the pretrain jobs run per modality and fold on
    the fold's training and validation patients only, and every network starts from them."""
    workdir = tmp_path / "pretrain"
    workdir.mkdir()
    shutil.copytree(tiny_run.parent / "resources", workdir / "resources")
    for stage in ("ingest", "register", "segment", "roi", "radiomics"):  # imaging only
        shutil.copytree(tiny_run / stage, workdir / "results" / stage)
    aux = ["sem_log_volume_ml", "sem_solid_fraction"]
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["train"].update(
        models=["early", "late", "semantic"], init="pretrain", encoder="resnet10",
        freeze_encoder_epochs=1, aux_targets={"features": aux}, multistage={"grid": None},
        sfsa_exhaustive=False,
    )  # fmt: skip
    config.update(robustness={"misalignment_mm": [], "drop_pet_fraction": []})
    config.update(saliency={"enabled": False})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", "config.yaml"]
    result = subprocess.run([*command, "--cores", "2"], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, result.stderr[-6000:]
    results = workdir / "results"
    folds = pd.read_csv(results / "splits/folds.tsv", sep="\t", dtype={"patient_id": str})
    for modality in ("ct", "pet"):
        for fold in (0, 1):
            folder = results / "pretrain" / modality / f"fold{fold}"
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["transductive"] is False
            seen = set(torch.load(folder / "encoder.pt", weights_only=False)["patients"])
            part = folds[folds.fold == fold]
            assert seen and not seen & set(part[part.role == "test"].patient_id)
    for model, encoders in (("early", {"ct+pet"}), ("late", {"ct", "pet"})):
        for fold in (0, 1):
            summary = json.loads((results / f"train/{model}/fold{fold}/summary.json").read_text())
            assert summary["init"]["mode"] == "pretrain"
            assert set(summary["init"]["loaded"]) == encoders
            assert summary["aux_targets"]["features"] == aux
    networks = pd.read_csv(results / "report/tables/networks.csv", dtype=str)
    assert set(networks.model) == {"early", "late", "ct", "pet"}  # ct, pet: late fusion's
    assert networks.initialisation.str.startswith("pretrain").all()
    assert (
        "Pretraining, where used, never read a fold" in (results / "report/index.html").read_text()
    )
