from __future__ import annotations

import json
import math
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from training_helpers import write_cohort

from lungfusion.clinical import (
    DEFAULT_FEATURES,
    clinical_tabular_features,
    fit_preprocessor,
    parse_age,
    parse_clinical_table,
    parse_histology,
    parse_overall_stage,
    parse_sex,
    parse_smoking,
    parse_stage,
    patient_features,
)
from lungfusion.estimators.clinical import fit_predict_clinical
from lungfusion.samplesheet import read_sample_sheet

nan = math.nan


def _same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# Lung-PET-CT-Dx (statistics-clinical-20201221.xlsx) spellings
@pytest.mark.parametrize(
    ("value", "letter", "expected"),
    [
        ("1a", "T", 1), ("1b", "T", 1), ("1c", "T", 1), ("2", "T", 2), ("2a", "T", 2),
        ("2b", "T", 2), ("3", "T", 3), ("4", "T", 4), ("is", "T", 0), ("", "T", nan),
        (None, "T", nan), ("x", "T", nan), ("T2a", "T", 2), ("Tis", "T", 0), ("Tx", "T", nan),
        ("0", "N", 0), ("1", "N", 1), ("N1", "N", 1), ("3", "N", 3), ("Nx", "N", nan),
        ("0", "M", 0), ("1a", "M", 1), ("1b", "M", 1), ("1c", "M", 1), ("M1b", "M", 1),
        ("１ｂ", "M", 1),  # full-width, as Lung-PET-CT-Dx writes its M column header
        # NSCLC-Radiomics: T 1-5 where 5 is not an AJCC category (read as Tx), and NA
        (1, "T", 1), (4.0, "T", 4), (5, "T", nan), ("NA", "T", nan), (float("nan"), "N", nan),
        (2, "N", 2), (4, "N", nan), (3, "M", nan),
    ],
)  # fmt: skip
def test_stage_spellings(value, letter, expected):
    assert _same(parse_stage(value, letter), float(expected))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("I", 1), ("II", 2), ("IIIa", 3), ("IIIb", 3), ("IV", 4), ("IB", 1), ("NA", nan),
     ("Stage IIB", 2), (None, nan)],
)  # fmt: skip
def test_overall_stage_spellings(value, expected):
    assert _same(parse_overall_stage(value), float(expected))


def test_sex_age_and_histology_spellings():
    spellings = ["M", "F", "male", "female", "Male", "FEMALE", None, ""]
    expected = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, nan, nan]
    assert all(_same(parse_sex(v), e) for v, e in zip(spellings, expected, strict=True))
    assert parse_age("64") == 64 and parse_age(71.5) == 71.5 and parse_age("064Y") == 64
    assert parse_age("006M") == 0.5 and math.isnan(parse_age("NA"))
    histology = ["large cell", "squamous cell carcinoma", "adenocarcinoma", "nos", "NA", None]
    assert [parse_histology(v) for v in histology] == ["LCC", "SQC", "ADC", "NOS", None, None]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("never", (0, 0, 0)), ("Never smoker", (0, 0, 0)), ("Non-smoker", (0, 0, 0)),
        ("no", (0, 0, 0)), ("former", (1, 0, nan)), ("Ex-smoker", (1, 0, nan)),
        ("former smoker, 30 pack-years", (1, 0, 30)), ("current", (1, 1, nan)),
        ("Current smoker", (1, 1, nan)), ("yes", (1, nan, nan)), ("Smoker", (1, nan, nan)),
        ("40", (1, nan, 40)), ("0", (0, 0, 0)), ("", (nan, nan, nan)), (None, (nan, nan, nan)),
        ("NA", (nan, nan, nan)),
    ],
)  # fmt: skip
def test_smoking_spellings(value, expected):
    got = parse_smoking(value)
    assert all(_same(a, float(b)) for a, b in zip(got, expected, strict=True)), got


def test_lung_pet_ct_dx_sheet_through_the_sample_sheet_reader(tmp_path):
    """The collection's own headers (full-width M) mapped by cohort.columns, then parsed."""
    sheet = pd.DataFrame(
        {
            "NewPatientID": ["Lung_Dx-A0001", "Lung_Dx-A0002", "Lung_Dx-G0001", "Lung_Dx-G0002"],
            "Sex": ["M", "F", "M", "F"],
            "Age": [65, 58, None, 71],
            "weight (kg)": [72, "60", None, 55.5],
            "T-Stage": ["1a", "is", "2b", None],
            "N-Stage": ["0", "1", "2", None],
            "Ｍ-Stage": ["0", "1a", "1b", None],
            "Smoking History": ["never", "current", None, "former"],
        }
    )
    path = tmp_path / "clinical.csv"
    sheet.to_csv(path, index=False)
    columns = {
        "patient_id": "NewPatientID", "sex": "Sex", "age": "Age", "weight_kg": "weight (kg)",
        "t_stage": "T-Stage", "n_stage": "N-Stage", "m_stage": "M-Stage",
        "smoking": "Smoking History",
    }  # fmt: skip
    table = read_sample_sheet(
        path,
        columns=columns,
        label_from_id={"pattern": "Lung_Dx-([ABEG])", "map": {"A": "ADC", "G": "SQC"}},
        classes=["ADC", "SQC"],
    )
    parsed = parse_clinical_table(table)
    assert parsed["male"].tolist() == [1, 0, 1, 0]
    assert parsed["age"].tolist()[:2] == [65, 58] and math.isnan(parsed["age"][2])
    assert parsed["weight_kg"].tolist()[-1] == 55.5
    assert parsed["t_stage"].tolist()[:3] == [1, 0, 2]
    assert parsed["m_stage"].tolist()[:3] == [0, 1, 1]
    assert parsed["smoker"].tolist()[:2] == [0, 1] and parsed["current_smoker"][3] == 0


def test_nsclc_radiomics_sheet():
    sheet = pd.DataFrame(
        {
            "patient_id": ["LUNG1-001", "LUNG1-002", "LUNG1-003", "LUNG1-004"],
            "age": ["78.7", "83.8", "68.2", "NA"],
            "sex": ["male", "male", "female", "female"],
            "t_stage": ["2", "5", "NA", "4"],
            "n_stage": ["3", "0", "1", "4"],
            "m_stage": ["0", "0", "0", "3"],
            "overall_stage": ["IIIb", "I", "IIIa", "NA"],
            "histology": ["large cell", "squamous cell carcinoma", "nos", "adenocarcinoma"],
        }
    )
    parsed = parse_clinical_table(sheet)
    assert parsed["male"].tolist() == [1, 1, 0, 0]
    assert _same(parsed["t_stage"][1], nan) and parsed["t_stage"][3] == 4
    assert parsed["overall_stage"].tolist()[:3] == [3, 1, 3]
    assert parsed["histology"].tolist() == ["LCC", "SQC", "NOS", "ADC"]
    features, transformer = clinical_tabular_features(sheet, fit_ids=list(sheet.patient_id))
    assert "histology" not in features.columns  # the label of a subtype study, not a feature
    assert features.notna().all().all() and features.dtypes.eq(np.float32).all()
    with_histology, _ = clinical_tabular_features(
        sheet, fit_ids=list(sheet.patient_id), columns=["age", "histology"]
    )
    assert {"histology_ADC", "histology_SQC"} <= set(with_histology.columns)


def _cohort_sheet(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "label": rng.choice(["ADC", "SQC"], n),
            "age": [str(round(a)) if rng.random() > 0.1 else "" for a in rng.normal(65, 8, n)],
            "sex": rng.choice(["M", "F", None], n),
            "weight_kg": [f"{w:.1f}" for w in rng.normal(70, 12, n)],
            "smoking": rng.choice(["never", "former", "current", ""], n),
            "t_stage": rng.choice(["1a", "2b", "3", "is", ""], n),
            "n_stage": rng.choice(["0", "1", "2", "x"], n),
            "m_stage": rng.choice(["0", "1a", "1b", ""], n),
        }
    )


def test_held_out_values_do_not_leak_into_imputation_or_scaling():
    sheet = _cohort_sheet()
    train_ids = list(sheet.patient_id[:28])
    held_out = ~sheet.patient_id.isin(train_ids)
    wild = sheet.copy()
    wild.loc[held_out, "age"] = "950"
    wild.loc[held_out, "weight_kg"] = ""
    wild.loc[held_out, "sex"] = "F"
    wild.loc[held_out, "t_stage"] = "4"
    wild.loc[held_out, "smoking"] = "current"
    features_a, fitted_a = clinical_tabular_features(sheet, fit_ids=train_ids)
    features_b, fitted_b = clinical_tabular_features(wild, fit_ids=train_ids)
    assert pickle.dumps(fitted_a) == pickle.dumps(fitted_b)  # the fitted transformer is identical
    assert features_a.loc[train_ids].equals(features_b.loc[train_ids])
    # held-out patients' missing weights take the TRAINING median, scaled by training statistics
    weights = parse_clinical_table(sheet.iloc[:28])["weight_kg"]
    expected = (weights.median() - weights.mean()) / weights.std(ddof=0)
    imputed = features_b.loc[held_out.to_numpy(), "weight_kg"]
    assert np.allclose(imputed, expected, atol=1e-5)


def test_preprocessor_fits_on_training_rows_only_and_scores_a_new_patient():
    sheet = _cohort_sheet()
    features, fitted = clinical_tabular_features(sheet, fit_ids=list(sheet.patient_id[:30]))
    train = features.iloc[:30]
    continuous = ["age", "weight_kg", "t_stage", "n_stage", "m_stage"]
    assert np.allclose(train[continuous].mean(), 0.0, atol=1e-5)
    assert set(features.columns) <= set(DEFAULT_FEATURES)
    vector = patient_features(fitted, {"age": "64", "sex": "female", "t_stage": "T2a"})
    assert vector.shape == (features.shape[1],) and np.isfinite(vector).all()
    assert vector[list(features.columns).index("male")] == 0.0
    with pytest.raises(ValueError, match="unknown clinical feature"):
        fit_preprocessor(parse_clinical_table(sheet), columns=["age", "shoe_size"])
    with pytest.raises(ValueError, match="no clinical column"):
        fit_preprocessor(parse_clinical_table(sheet[["patient_id"]]))


def test_evaluation_clinical_model_uses_the_parser():
    sheet = _cohort_sheet()
    sheet["t_stage"] = np.where(sheet.label == "SQC", "T3", "1a")  # a signal in the text
    scored = fit_predict_clinical(
        sheet, fit_ids=list(sheet.patient_id[:30]), score_ids=list(sheet.patient_id[30:]),
        task="classification", classes=["ADC", "SQC"],
    )  # fmt: skip
    truth = sheet.label.iloc[30:].to_numpy()
    assert ((scored.prob_SQC.to_numpy() > 0.5) == (truth == "SQC")).all()


def _train_clinical(tmp_path, task: str = "classification") -> tuple:
    from lungfusion.cli import main

    roi_dir, sheet_path = write_cohort(tmp_path / "cohort", n=16)
    sheet = pd.read_csv(sheet_path, sep="\t")
    sheet["t_stage"] = np.where(sheet.label == "SQC", "3", "1b")
    sheet["smoking"] = ["current", "never", "former", ""] * 4
    sheet.to_csv(sheet_path, sep="\t", index=False)
    params = {
        "task": task,
        "splits": {"n_folds": 2, "validation_fraction": 0.25, "seed": 0},
        "train": {"epochs": 1, "device": "cpu"},
    }
    common = ["--params", json.dumps(params)]
    io = ["--sample-sheet", str(sheet_path), "--roi-dir", str(roi_dir)]
    folds = tmp_path / "folds.tsv"
    assert main([*common, "splits", *io, "--out", str(folds)]) == 0
    out = tmp_path / "clinical" / "fold0"
    argv = [*common, "train", "--model", "clinical", "--fold", "0", "--folds", str(folds), *io]
    assert main([*argv, "--out-dir", str(out), "--no-progress"]) == 0
    return out, pd.read_csv(folds, sep="\t")


def test_train_command_fits_the_clinical_model_like_a_network(tmp_path):
    out, folds = _train_clinical(tmp_path)
    for name in ("model.joblib", "history.tsv", "val_predictions.tsv", "predictions.tsv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == "clinical"
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(predictions.columns) == ["patient_id", "fold", "label", "prob_ADC", "prob_SQC"]
    test_ids = folds[(folds.fold == 0) & (folds.role == "test")].patient_id.astype(str)
    assert sorted(predictions.patient_id) == sorted(test_ids)
    assert ((predictions.prob_SQC > 0.5) == (predictions.label == "SQC")).all()
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert len(history) == 1 and {"val_auc", "val_gmean", "val_loss"} <= set(history.columns)
    model = joblib.load(out / "model.joblib")
    row = pd.DataFrame([{"patient_id": "new", "t_stage": "T3", "sex": "F", "age": "60"}])
    assert model.score(row)["prob_SQC"][0] > 0.5


def test_train_command_fits_a_clinical_cox_model(tmp_path):
    out, _ = _train_clinical(tmp_path, task="survival")
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(predictions.columns) == ["patient_id", "fold", "risk", "survival_days", "event"]
    assert np.isfinite(predictions.risk).all()
    assert "val_cindex" in pd.read_csv(out / "history.tsv", sep="\t").columns


def test_clinical_model_on_one_class_predicts_the_prior():
    from lungfusion.estimators.clinical import fit_predict_clinical

    sheet = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d"],
            "label": ["ADC", "ADC", "ADC", "SQC"],
            "age": ["60", "70", "65", "80"],
            "sex": ["M", "F", "M", "F"],
        }
    )
    scored = fit_predict_clinical(
        sheet,
        fit_ids=["a", "b", "c"],
        score_ids=["d"],
        task="classification",
        classes=["ADC", "SQC"],
    )
    assert scored.loc[0, "prob_ADC"] == 1.0 and scored.loc[0, "prob_SQC"] == 0.0
