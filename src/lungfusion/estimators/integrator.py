"""The late-fusion integrator's estimator: standardised submodel scores into a logistic
regression (classification) or a ridge Cox model (survival), and the unfitted mean of the
scores for an availability pattern with too few patients to fit on.

What the integrator is fit on, per fold and per pattern, is :mod:`lungfusion.evaluation.integrate`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv


def make_integrator(kind: str, *, C: float = 1.0, alpha: float = 1.0) -> Pipeline:
    """Standardise the scores, then logistic regression (``classification``) or ridge Cox."""
    if kind == "classification":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, solver="newton-cg", max_iter=1000)
        )
    if kind == "survival":
        return make_pipeline(StandardScaler(), CoxPHSurvivalAnalysis(alpha=alpha))
    raise ValueError(f"integrator kind must be classification or survival, got {kind!r}")


def integrator_target(kind: str, target: pd.DataFrame):
    """What the estimator fits on: the class indices ``y``, or a Surv array of
    ``survival_days`` and ``event``."""
    if kind == "classification":
        return target["y"].to_numpy(int)
    return Surv.from_arrays(event=target["event"].to_numpy() > 0, time=target["survival_days"])


def fit_integrator(
    features: pd.DataFrame, target: pd.DataFrame, *, kind: str, C: float = 1.0, alpha: float = 1.0
) -> Pipeline:
    """Fit one integrator. ``features`` and ``target`` are indexed by patient_id, same rows.

    ``target`` holds ``y`` (class index) for classification, ``survival_days`` and ``event``
    for survival. The only place an integrator sees patients: tests spy on it for leakage.
    """
    if not features.index.equals(target.index):
        raise ValueError("integrator features and target must have the same patients in order")
    model = make_integrator(kind, C=C, alpha=alpha)
    model.fit(features, integrator_target(kind, target))
    return model


def predict_integrator(
    model: Pipeline, features: pd.DataFrame, *, kind: str, classes: list[str]
) -> pd.DataFrame:
    """``prob_<class>`` columns (classification) or ``risk`` (survival), indexed like features."""
    if kind == "survival":
        return pd.DataFrame({"risk": model.predict(features)}, index=features.index)
    probs = np.zeros((len(features), len(classes)))
    probs[:, model.classes_] = model.predict_proba(features)
    return pd.DataFrame(probs, index=features.index, columns=[f"prob_{c}" for c in classes])


def mean_fallback(features: pd.DataFrame, *, kind: str, classes: list[str]) -> pd.DataFrame:
    """Unfitted combination when a pattern has too few validation patients: mean log-odds/risk."""
    if kind == "survival":
        return pd.DataFrame({"risk": features.mean(axis=1)}, index=features.index)
    if len(classes) == 2:
        positive = 1 / (1 + np.exp(-features.mean(axis=1).to_numpy()))
        probs = np.column_stack([1 - positive, positive])
    else:
        logits = np.zeros((len(features), len(classes)))
        for i, c in enumerate(classes[1:], start=1):
            logits[:, i] = features[[col for col in features if col.endswith(f":{c}")]].mean(axis=1)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    return pd.DataFrame(probs, index=features.index, columns=[f"prob_{c}" for c in classes])
