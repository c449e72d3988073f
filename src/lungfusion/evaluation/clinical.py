"""The clinical submodel of late fusion: logistic regression or Cox PH on the clinical sheet.

Numbers (age, weight, pack-years) are median-imputed and standardised; categories (sex,
smoking, T/N/M stage) are mode-imputed and one-hot encoded. Imputation, scaling and encoding
are part of the fitted pipeline, so they are learnt from a fold's training patients only.
The sheet's values arrive as text (``read_sample_sheet`` reads everything as text).

>>> import pandas as pd
>>> sheet = pd.DataFrame({"patient_id": list("abcd"), "label": ["ADC", "SQC"] * 2,
...                       "age": ["60", "70", "65", None], "sex": ["M", "F", "M", "F"]})
>>> probs = fit_predict_clinical(sheet, fit_ids=list("abcd"), score_ids=["d"],
...                              task="classification", classes=["ADC", "SQC"])
>>> list(probs.columns)
['patient_id', 'prob_ADC', 'prob_SQC']
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

NUMERIC_COLUMNS = ("age", "weight_kg", "pack_years")
CATEGORICAL_COLUMNS = ("sex", "smoking", "t_stage", "n_stage", "m_stage")


def clinical_features(sheet: pd.DataFrame) -> pd.DataFrame:
    """The clinical columns present in ``sheet``, numbers as floats, categories as text."""
    features = pd.DataFrame(index=sheet.index)
    for column in NUMERIC_COLUMNS:
        if column in sheet.columns:
            features[column] = pd.to_numeric(sheet[column], errors="coerce")
    for column in CATEGORICAL_COLUMNS:
        if column in sheet.columns:
            text = sheet[column].astype("string").str.strip().str.upper()
            features[column] = text.where(text.notna() & (text != ""), None).astype(object)
    return features


def _pipeline(features: pd.DataFrame, estimator) -> Pipeline:
    numeric = [c for c in NUMERIC_COLUMNS if c in features and features[c].notna().any()]
    categorical = [c for c in CATEGORICAL_COLUMNS if c in features and features[c].notna().any()]
    if not numeric and not categorical:
        raise ValueError("no clinical column has a value among the training patients")
    transformers = []
    if numeric:
        transformers.append(
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                categorical,
            )
        )
    return Pipeline([("columns", ColumnTransformer(transformers)), ("model", estimator)])


def fit_predict_clinical(
    sheet: pd.DataFrame,
    *,
    fit_ids: list[str],
    score_ids: list[str],
    task: str,
    classes: list[str] | None = None,
    C: float = 1.0,
    alpha: float = 1.0,
) -> pd.DataFrame:
    """Fit on ``fit_ids`` and score ``score_ids``.

    Returns ``patient_id`` and ``prob_<class>`` columns (classification, ``classes`` in order)
    or ``risk`` (survival, higher = worse). Patients without a usable target are not fit on.
    """
    table = sheet.set_index(sheet["patient_id"].astype(str))
    fit = table.loc[[str(p) for p in fit_ids]]
    score = table.loc[[str(p) for p in score_ids]]
    fit_x = clinical_features(fit)
    if task == "classification":
        if classes is None:
            raise ValueError("classes are needed for a classification clinical model")
        known = fit["label"].isin(classes).to_numpy()
        target = fit["label"][known].map({c: i for i, c in enumerate(classes)}).to_numpy(int)
        if len(np.unique(target)) < 2:
            raise ValueError("the clinical model needs both classes among its training patients")
        model = _pipeline(fit_x[known], LogisticRegression(C=C, solver="newton-cg", max_iter=1000))
        model.fit(fit_x[known], target)
        probs = np.zeros((len(score), len(classes)))
        probs[:, model.classes_] = model.predict_proba(clinical_features(score))
        columns = {f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}
    elif task == "survival":
        days = pd.to_numeric(fit["survival_days"], errors="coerce")
        event = pd.to_numeric(fit["event"], errors="coerce")
        known = (days.notna() & event.notna()).to_numpy()
        if not (event[known] > 0).any():
            raise ValueError("the clinical Cox model needs at least one event to fit")
        outcome = Surv.from_arrays(event=event[known] > 0, time=days[known].astype(float))
        model = _pipeline(fit_x[known], CoxPHSurvivalAnalysis(alpha=alpha))
        model.fit(fit_x[known], outcome)
        columns = {"risk": model.predict(clinical_features(score))}
    else:
        raise ValueError(f"task must be classification or survival, got {task!r}")
    return pd.DataFrame({"patient_id": score.index.to_list(), **columns})
