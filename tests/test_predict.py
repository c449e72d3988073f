"""``lungfusion predict`` on a synthetic patient with checkpoints in the training engine's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from lungfusion.cli import main  # noqa: E402
from lungfusion.inference import find_checkpoints, load_checkpoint, parse_clinical  # noqa: E402
from lungfusion.models import build_model  # noqa: E402

ROI_SHAPE_XYZ = [32, 32, 16]
IN_SHAPE = (16, 32, 32)  # z, y, x
CLASSES = ["ADC", "SQC"]


def _save_checkpoint(path: Path, name: str, seed: int, *, tta: bool = False) -> None:
    """A best-model checkpoint exactly as training.engine.Trainer._save_best writes it."""
    torch.manual_seed(seed)
    build = {"n_classes": 2, "in_shape": list(IN_SHAPE), "widths": [4, 8], "blocks_per_stage": 1,
             "n_tabular": 0}  # fmt: skip
    model = build_model(name, **build)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "epoch": 1, "selection_metric": "gmean", "score": [0.5, -0.7], "val_loss": 0.7,
            "config_hash": "test", "task": "classification", "classes": CLASSES, "tta": tta,
            "model": {"name": name, "build": build, "tabular_columns": []},
        },
        path,
    )  # fmt: skip


def _save_radiomics_model(
    path: Path, seed: int, model: str = "radiomics", modalities=("ct", "pet")
) -> None:
    """A radiomics (or semantic) fold model as `lungfusion train --model radiomics` saves it:
    SQC lesions larger and hotter."""
    import joblib
    import numpy as np
    import pandas as pd

    from lungfusion.estimators.radiomics import fit_radiomics_model

    rng = np.random.default_rng(seed)
    sqc = rng.random(60) < 0.5
    table = pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(60)], "label": np.where(sqc, "SQC", "ADC"),
        "lesion_ml": rng.normal(np.where(sqc, 3.0, 1.0), 0.5),
        "pet_firstorder_Maximum": rng.normal(np.where(sqc, 9.0, 5.0), 1.0),
    })  # fmt: skip
    if model == "semantic":
        from lungfusion.estimators.radiomics import SEMANTIC_FEATURES

        table = table.assign(**{c: rng.normal(size=60) for c in SEMANTIC_FEATURES})
        table["sem_log_volume_ml"] = np.log(table.lesion_ml.clip(lower=0.1))
    model = fit_radiomics_model(table, fit_ids=table.patient_id, task="classification",
                                classes=CLASSES, C=1.0, model=model, modalities=modalities)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    from lungfusion.synth import generate_cohort

    root = tmp_path_factory.mktemp("predict")
    cohorts = {}
    for name, without_pet in (("pet", 0.0), ("nopet", 1.0)):
        generate_cohort(root / name, preset="tiny", n_patients=1, seed=5,
                        class_prior={"ADC": 0.5, "SQC": 0.5}, fraction_without_pet=without_pet)  # fmt: skip
        cohorts[name] = next((root / name / "dicom").iterdir())
    models_dir = root / "results" / "train"
    for name in ("ct", "early"):
        for fold in (0, 1):
            _save_checkpoint(models_dir / name / f"fold{fold}" / "model.pt", name, seed=fold)
    for fold in (0, 1):
        for name in ("radiomics", "semantic"):
            path = models_dir / name / f"fold{fold}" / "model.joblib"
            _save_radiomics_model(path, seed=fold, model=name)
    return {"root": root, "models_dir": models_dir, **cohorts}


def _params() -> str:
    return json.dumps(
        {"task": "classification", "cohort": {"classes": CLASSES},
         "register": {"max_iterations": 10, "shrink_factors": [2, 1], "smoothing_sigmas_mm": [1.0, 0.0]},
         "roi": {"shape": ROI_SHAPE_XYZ}}
    )  # fmt: skip


def test_checkpoint_round_trip(synthetic):
    found = find_checkpoints(synthetic["models_dir"])
    assert sorted(found) == ["ct", "early"] and len(found["ct"]) == 2
    model, payload = load_checkpoint(found["ct"][0])
    assert payload["classes"] == CLASSES and not model.training
    batch = {"ct": torch.zeros(1, 1, *IN_SHAPE), "pet": torch.zeros(1, 1, *IN_SHAPE),
             "has_pet": torch.tensor([True])}  # fmt: skip
    assert model(batch).shape == (1, 2)


def test_predict_synthetic_patient_averages_folds(synthetic, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    work = tmp_path / "work"
    rc = main(["--params", _params(), "predict", "--dicom", str(synthetic["pet"]),
               "--models-dir", str(synthetic["models_dir"]), "--work-dir", str(work),
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["imaging"]["has_pet"] is True
    assert (work / "roi" / "new_patient.npz").is_file() and (
        work / "roi" / "new_patient.png"
    ).is_file()
    for name in ("ct", "early"):
        result = record["models"][name]
        assert result["n_folds"] == 2 and "mean over the fold models" in result["averaging"]
        probs = result["probabilities"]
        assert set(probs) == set(CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        folds = [result["folds"][f"fold{k}"]["probabilities"]["SQC"] for k in (0, 1)]
        assert probs["SQC"] == pytest.approx(sum(folds) / 2, abs=1e-6)
        assert folds[0] != folds[1]  # two different fold models really were run
    for name in ("radiomics", "semantic"):
        result = record["models"][name]
        assert result["n_folds"] == 2 and "warning" not in result  # the lesion was found
        folds = [result["folds"][f"fold{k}"]["probabilities"]["SQC"] for k in (0, 1)]
        assert result["probabilities"]["SQC"] == pytest.approx(sum(folds) / 2)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "ct" in printed and "P(SQC)=" in printed and "2 folds" in printed


def test_predict_without_pet_skips_pet_models(synthetic, tmp_path):
    out = tmp_path / "predictions.json"
    rc = main(["--params", _params(), "predict", "--dicom", str(synthetic["nopet"]),
               "--models-dir", str(synthetic["models_dir"]), "--out", str(out),
               "--patient-id", "case7"])  # fmt: skip
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["patient_id"] == "case7" and record["imaging"]["has_pet"] is False
    assert "probabilities" in record["models"]["ct"]
    assert "PET" in record["models"]["early"]["skipped"]
    assert "PET" in record["models"]["radiomics"]["skipped"]
    assert "PET" in record["models"]["semantic"]["skipped"]


def test_a_ct_only_radiomics_model_scores_a_patient_without_pet(synthetic, tmp_path):
    models_dir = tmp_path / "train"
    for fold in (0, 1):
        path = models_dir / "radiomics" / f"fold{fold}" / "model.joblib"
        _save_radiomics_model(path, seed=fold, modalities=("ct",))
    out = tmp_path / "predictions.json"
    rc = main(["--params", _params(), "predict", "--dicom", str(synthetic["nopet"]),
               "--models-dir", str(models_dir), "--out", str(out)])  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())["models"]["radiomics"]
    assert result["n_folds"] == 2 and sum(result["probabilities"].values()) == pytest.approx(1.0)


def test_predict_scores_a_tta_checkpoint_as_it_was_selected(tmp_path):
    """A model trained with train.tta is scored with the mean over the eight in-plane
    symmetries, as its validation was."""
    import numpy as np

    from lungfusion.inference import predict_model, roi_batch
    from lungfusion.training.engine import symmetric_logits

    rng = np.random.default_rng(0)
    npz = tmp_path / "p.npz"
    np.savez(npz, ct=rng.uniform(0, 1, IN_SHAPE).astype(np.float32),
             pet=rng.uniform(0, 1, IN_SHAPE).astype(np.float32), has_pet=True)  # fmt: skip
    checkpoint = tmp_path / "early" / "fold0" / "model.pt"
    _save_checkpoint(checkpoint, "early", seed=3, tta=True)
    result = predict_model([checkpoint], npz, has_pet=True, tab_context=None, device="cpu")
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        batch = roi_batch(npz)
        expected = torch.softmax(symmetric_logits(model, batch), dim=1)[0, 1].item()
        plain = torch.softmax(model(batch), dim=1)[0, 1].item()
    assert result["probabilities"]["SQC"] == pytest.approx(expected, abs=1e-6)
    assert abs(plain - expected) > 1e-6


def test_predict_applies_the_folds_calibration(tmp_path):
    """calibration.json beside model.pt maps the probabilities as the fold's predictions.tsv."""
    import numpy as np

    from lungfusion.inference import predict_model

    rng = np.random.default_rng(1)
    npz = tmp_path / "p.npz"
    np.savez(npz, ct=rng.uniform(0, 1, IN_SHAPE).astype(np.float32),
             pet=rng.uniform(0, 1, IN_SHAPE).astype(np.float32), has_pet=True)  # fmt: skip
    checkpoint = tmp_path / "ct" / "fold0" / "model.pt"
    _save_checkpoint(checkpoint, "ct", seed=4)
    raw = predict_model([checkpoint], npz, has_pet=True, tab_context=None, device="cpu")
    p = raw["probabilities"]["SQC"]
    # on the centred log-probabilities (-logit/2, logit/2) this map is logit + 1
    calibration = {"method": "platt", "coef": [[-1.0, 1.0]], "intercept": [1.0]}
    (checkpoint.parent / "calibration.json").write_text(json.dumps(calibration))
    result = predict_model([checkpoint], npz, has_pet=True, tab_context=None, device="cpu")
    logit = np.log(p / (1 - p))
    assert result["probabilities"]["SQC"] == pytest.approx(1 / (1 + np.exp(-(logit + 1))), abs=1e-5)
    assert result["probabilities"]["ADC"] == pytest.approx(1 - result["probabilities"]["SQC"])


def test_parse_clinical():
    assert parse_clinical(["age=64", "sex = F"]) == {"age": "64", "sex": "F"}
    with pytest.raises(ValueError, match="key=value"):
        parse_clinical(["age"])
