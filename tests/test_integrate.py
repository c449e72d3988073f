"""Late fusion: no held-out patient in any fit, missing-PET patterns, and the two commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lungfusion.commands import evaluate as evaluate_command
from lungfusion.commands import integrate as integrate_command
from lungfusion.config import load_config
from lungfusion.estimators.clinical import fit_predict_clinical
from lungfusion.evaluation import integrate

CLASSES = ["ADC", "SQC"]
N_PATIENTS, N_FOLDS = 60, 3


def _sheet(rng) -> pd.DataFrame:
    y = np.arange(N_PATIENTS) % 2
    ids = [f"P{i:02d}" for i in range(N_PATIENTS)]
    age = 60 + 8 * y + rng.normal(scale=5, size=N_PATIENTS)
    risk = y + rng.normal(size=N_PATIENTS)
    return pd.DataFrame(
        {
            "patient_id": ids,
            "label": np.where(y == 1, "SQC", "ADC"),
            "age": [f"{a:.0f}" if i % 9 else None for i, a in enumerate(age)],  # some missing
            "sex": rng.choice(["M", "F"], N_PATIENTS),
            "smoking": rng.choice(["never", "former", "current"], N_PATIENTS),
            "t_stage": rng.choice(["T1", "T2", "T3"], N_PATIENTS),
            "survival_days": (np.exp(-risk) * 700 + 30).round().astype(str),
            "event": (rng.random(N_PATIENTS) < 0.7).astype(int).astype(str),
        }
    )


def _folds(sheet) -> pd.DataFrame:
    rows = []
    for fold in range(N_FOLDS):
        others = 0
        for i, (pid, label) in enumerate(zip(sheet.patient_id, sheet.label, strict=True)):
            if i % N_FOLDS == fold:
                role = "test"
            else:
                role = "val" if others % 5 == 0 else "train"
                others += 1
            rows.append((pid, label, fold, role, True, i % 7 != 3))
    return pd.DataFrame(rows, columns=["patient_id", "label", "fold", "role", "has_ct", "has_pet"])


def _write_model(train_dir, model, sheet, folds, rng, *, task="classification", skip=()):
    y = (sheet.set_index("patient_id").label == "SQC").astype(int)
    risk = -np.log(pd.to_numeric(sheet.set_index("patient_id").survival_days))
    for fold in range(N_FOLDS):
        part = folds[(folds.fold == fold) & ~folds.patient_id.isin(skip)]
        for role, name in (("test", "predictions.tsv"), ("val", "val_predictions.tsv")):
            ids = part.patient_id[part.role == role].to_numpy()
            table = pd.DataFrame(
                {
                    "patient_id": ids,
                    "fold": fold,
                    "label": sheet.set_index("patient_id").label[ids].to_numpy(),
                }
            )
            if task == "classification":
                p = 1 / (1 + np.exp(-(2.5 * (y[ids].to_numpy() - 0.5) + rng.normal(size=len(ids)))))
                table["prob_ADC"], table["prob_SQC"] = 1 - p, p
            else:
                table["risk"] = risk[ids].to_numpy() + rng.normal(scale=0.5, size=len(ids))
                table["survival_days"] = sheet.set_index("patient_id").survival_days[ids].to_numpy()
                table["event"] = sheet.set_index("patient_id").event[ids].to_numpy()
            folder = train_dir / model / f"fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            table.to_csv(folder / name, sep="\t", index=False)


@pytest.fixture()
def cohort(tmp_path):
    rng = np.random.default_rng(0)
    sheet = _sheet(rng)
    folds = _folds(sheet)
    no_pet = folds.patient_id[~folds.has_pet].unique()
    _write_model(tmp_path / "train", "ct", sheet, folds, rng)
    _write_model(tmp_path / "train", "pet", sheet, folds, rng, skip=no_pet)
    return {
        "sheet": sheet,
        "folds": folds,
        "train": tmp_path / "train",
        "no_pet": set(no_pet),
        "tmp": tmp_path,
    }


def _run(cohort, name="late_logistic"):
    return integrate.late_fusion(
        name=name,
        train_dir=cohort["train"],
        folds=cohort["folds"],
        sheet=cohort["sheet"],
        classes=CLASSES,
    )


def test_every_patient_gets_a_prediction_and_missing_pet_its_own_pattern(cohort):
    result = _run(cohort)
    predictions = result["predictions"]
    assert sorted(predictions.patient_id) == sorted(cohort["sheet"].patient_id)
    by_pattern = predictions.set_index("patient_id").pattern
    assert set(by_pattern[list(cohort["no_pet"])]) == {"ct+clinical"}
    assert set(by_pattern.drop(list(cohort["no_pet"]))) == {"ct+pet+clinical"}
    counts = result["summary"]["pattern_counts"]
    assert counts == {
        "ct+clinical": len(cohort["no_pet"]),
        "ct+pet+clinical": N_PATIENTS - len(cohort["no_pet"]),
    }
    np.testing.assert_allclose(predictions.prob_ADC + predictions.prob_SQC, 1.0)
    fitted = [p for f in result["summary"]["folds"] for p in f["patterns"]]
    assert all(p["method"] == "fitted" for p in fitted)
    ct_pet = next(p for p in fitted if p["pattern"] == "ct+pet+clinical")
    assert set(ct_pet["coefficients"]) == {"ct", "pet", "clinical"}
    # informative submodels -> the fused model separates the classes
    y = (predictions.label == "SQC").to_numpy()
    assert integrate.np.mean(predictions.prob_SQC[y]) > integrate.np.mean(predictions.prob_SQC[~y])
    assert set(result["val_predictions"].patient_id) == set(
        cohort["folds"].query("role == 'val'").patient_id
    )


def test_integrator_is_fit_only_on_validation_patients(cohort, monkeypatch):
    seen = []
    real_fit = integrate.fit_integrator

    def spy(features, target, **kwargs):
        seen.append(set(features.index))
        return real_fit(features, target, **kwargs)

    monkeypatch.setattr(integrate, "fit_integrator", spy)
    _run(cohort)
    folds = cohort["folds"]
    # folds run in order, one integrator per pattern: fits 2k and 2k+1 belong to fold k
    assert len(seen) == 2 * N_FOLDS
    for fold in range(N_FOLDS):
        val = set(folds.patient_id[(folds.fold == fold) & (folds.role == "val")])
        test = set(folds.patient_id[(folds.fold == fold) & (folds.role == "test")])
        for fitted_on in seen[2 * fold : 2 * fold + 2]:
            assert fitted_on <= val and not fitted_on & test
        assert seen[2 * fold] | seen[2 * fold + 1] == val  # all validation patients are used


def _coefficients(result):
    return [
        (f["fold"], p["pattern"], p["coefficients"])
        for f in result["summary"]["folds"]
        for p in f["patterns"]
    ]


def _rewrite(cohort, role_file, transform):
    for path in cohort["train"].glob(f"*/fold*/{role_file}"):
        table = pd.read_csv(path, sep="\t")
        table["prob_SQC"] = transform(table)
        table["prob_ADC"] = 1 - table["prob_SQC"]
        table.to_csv(path, sep="\t", index=False)


def test_adversarial_test_scores_do_not_move_the_integrator(cohort):
    before = _run(cohort)
    # every held-out score now points at the wrong class: a leaky fit would learn it
    _rewrite(cohort, "predictions.tsv", lambda t: np.where(t.label == "SQC", 0.01, 0.99))
    after = _run(cohort)
    assert _coefficients(after) == _coefficients(before)
    # the same change in the validation scores does move it: the check can fail
    _rewrite(cohort, "val_predictions.tsv", lambda t: np.where(t.label == "SQC", 0.01, 0.99))
    assert _coefficients(_run(cohort)) != _coefficients(before)


def test_clinical_model_learns_scaling_from_training_patients_only():
    sheet = pd.DataFrame({"patient_id": list("abcdef"), "label": ["ADC", "SQC"] * 3,
                          "age": ["50", "70", "52", "72", "1000", None]})  # fmt: skip
    # the extreme age of the scored patient 'e' must not shift the fitted scaler
    one = fit_predict_clinical(
        sheet, fit_ids=list("abcd"), score_ids=["e"], task="classification", classes=CLASSES
    )
    two = fit_predict_clinical(
        sheet, fit_ids=list("abcd"), score_ids=["e", "f"], task="classification", classes=CLASSES
    )
    assert one.prob_SQC.iloc[0] == pytest.approx(two.prob_SQC.iloc[0])
    assert two.prob_SQC.iloc[1] == pytest.approx(0.5, abs=0.25)  # missing age -> training median


def test_late_cox_survival(cohort):
    rng = np.random.default_rng(5)
    train = cohort["tmp"] / "train_surv"
    _write_model(train, "ct", cohort["sheet"], cohort["folds"], rng, task="survival")
    _write_model(
        train, "pet", cohort["sheet"], cohort["folds"], rng, task="survival", skip=cohort["no_pet"]
    )
    result = integrate.late_fusion(
        name="late_cox",
        train_dir=train,
        folds=cohort["folds"],
        sheet=cohort["sheet"],
        classes=CLASSES,
    )
    predictions = result["predictions"]
    assert {"risk", "survival_days", "event", "pattern"} <= set(predictions.columns)
    assert np.isfinite(predictions.risk).all() and len(predictions) == N_PATIENTS
    assert set(predictions.set_index("patient_id").pattern[list(cohort["no_pet"])]) == {
        "ct+clinical"
    }
    assert "ridge" in result["summary"]["integrator"]


def test_integrate_and_evaluate_commands(cohort):
    tmp = cohort["tmp"]
    cohort["folds"].to_csv(tmp / "folds.tsv", sep="\t", index=False)
    cohort["sheet"].to_csv(tmp / "clinical.tsv", sep="\t", index=False)
    config = load_config(None)
    out = tmp / "integrate" / "late_logistic"
    args = argparse.Namespace(
        name="late_logistic", train_dir=cohort["train"], folds=tmp / "folds.tsv",
        sample_sheet=tmp / "clinical.tsv", out_dir=out, submodels=None,
    )  # fmt: skip
    assert integrate_command.run(args, config) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["pattern_counts"].values()) == N_PATIENTS
    written = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(written.columns) == [
        "patient_id",
        "fold",
        "label",
        "prob_ADC",
        "prob_SQC",
        "pattern",
    ]
    assert (out / "submodels" / "clinical_logistic" / "fold0" / "val_predictions.tsv").exists()
    assert all((out / f"fold{k}" / "model.joblib").is_file() for k in range(N_FOLDS))

    config["evaluate"] = {"n_bootstrap": 30, "seed": 1, "threshold": "youden"}
    metrics = tmp / "metrics"
    args = argparse.Namespace(
        predictions=[str(cohort["train"]), str(tmp / "integrate")], out_dir=metrics
    )
    assert evaluate_command.run(args, config) == 0
    combined = pd.read_csv(metrics / "all.tsv", sep="\t")
    assert set(combined.model) == {"ct", "pet", "late_logistic", "clinical_logistic"}
    auroc = combined[combined.metric == "auroc"].set_index("model")
    assert auroc.p_delong_vs_best.isna().sum() == 1  # the best model is not tested against itself
    assert ((auroc.ci_low <= auroc.value) & (auroc.value <= auroc.ci_high)).all()
    report = json.loads((metrics / "summary.json").read_text())
    assert "Youden" in report["models"]["ct"]["threshold"]["rule"]
    assert (metrics / "late_logistic.tsv").exists()


def test_multiclass_integration_with_a_missing_modality():
    classes = ["ADC", "SQC", "SCLC"]
    rng = np.random.default_rng(7)

    def scored(ids, y):
        logits = 2.0 * np.eye(3)[y] + rng.normal(size=(len(ids), 3))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return pd.DataFrame(
            {"patient_id": ids, **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}}
        )

    val_ids, test_ids = [f"v{i}" for i in range(30)], [f"t{i}" for i in range(12)]
    y_val, y_test = np.arange(30) % 3, np.arange(12) % 3

    def features(ids, y, drop_pet=()):
        ct = integrate.score_features(
            scored(ids, y), submodel="ct", task="classification", classes=classes
        )
        pet = integrate.score_features(
            scored(ids, y), submodel="pet", task="classification", classes=classes
        )
        pet.loc[list(drop_pet)] = np.nan
        return pd.concat([ct, pet], axis=1)

    assert list(features(val_ids, y_val).columns) == ["ct:SQC", "ct:SCLC", "pet:SQC", "pet:SCLC"]
    target = pd.DataFrame({"y": y_val}, index=val_ids)
    test_x, fitted = features(test_ids, y_test, drop_pet=["t0", "t1", "t2"]), {}
    test_pred, val_pred, records = integrate.integrate_fold(
        features(val_ids, y_val), target, test_x, kind="classification", classes=classes,
        fitted=fitted,
    )  # fmt: skip
    assert test_pred.loc[["t0", "t1", "t2"], "pattern"].tolist() == ["ct"] * 3
    assert set(test_pred.drop(["t0", "t1", "t2"]).pattern) == {"ct+pet"}
    probs = test_pred[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == y_test).mean() > 0.5
    assert {r["pattern"] for r in records} == {"ct", "ct+pet"}
    assert np.array(records[1]["coefficients"]["pet:SQC"]).shape == (3,)  # one per class
    # the fold's saved integrators score new patients as they scored the test patients, and a
    # pattern the fold never saw (PET alone) by the mean of its scores
    saved = {"patterns": fitted}
    again = integrate.apply_fold_integrators(saved, test_x, kind="classification", classes=classes)
    pd.testing.assert_frame_equal(again.loc[test_pred.index], test_pred)
    pet_only = test_x.loc[["t5"]].assign(**{"ct:SQC": np.nan, "ct:SCLC": np.nan})
    fallback = integrate.apply_fold_integrators(
        saved, pet_only, kind="classification", classes=classes
    )
    assert fallback.pattern.tolist() == ["pet"]
    mean = integrate.mean_fallback(
        pet_only[["pet:SQC", "pet:SCLC"]], kind="classification", classes=classes
    )
    pd.testing.assert_frame_equal(fallback.drop(columns="pattern"), mean)


def test_evaluation_layer_does_not_import_torch():
    code = (
        "import sys, lungfusion.commands.evaluate, lungfusion.commands.integrate;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')"
        " or m.startswith('lungfusion.training')]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_table_estimators_and_folds_do_not_import_torch():
    code = (
        "import sys, lungfusion.estimators.clinical, lungfusion.estimators.radiomics,"
        " lungfusion.estimators.integrator, lungfusion.folds;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')"
        " or m.startswith('lungfusion.training')]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("modalities", "kept"), [(["ct"], True), (["ct", "pet"], False)])
def test_a_ct_only_radiomics_submodel_keeps_the_patients_without_pet(cohort, modalities, kept):
    """The integrator masks a submodel's scores by the modalities its summary.json names: a
    radiomics model run CT-only scores the patients without PET too; a CT+PET one that wrote a
    score for them anyway has it ignored."""
    rng = np.random.default_rng(1)
    _write_model(cohort["train"], "radiomics", cohort["sheet"], cohort["folds"], rng)
    for fold in range(N_FOLDS):
        summary = cohort["train"] / "radiomics" / f"fold{fold}" / "summary.json"
        summary.write_text(json.dumps({"status": "ok", "modalities": modalities}))
    result = integrate.late_fusion(
        name="late_logistic", train_dir=cohort["train"], folds=cohort["folds"],
        sheet=cohort["sheet"], classes=CLASSES, submodels=("ct", "radiomics", "clinical"),
    )  # fmt: skip
    patterns = result["predictions"].set_index("patient_id").pattern
    without_pet = set(patterns[list(cohort["no_pet"])])
    assert without_pet == ({"ct+clinical+radiomics"} if kept else {"ct+clinical"})
    assert set(patterns.drop(list(cohort["no_pet"]))) == {"ct+clinical+radiomics"}
