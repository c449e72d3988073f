"""The clinical model: logistic regression or Cox PH on the parsed clinical sheet.

It is both a trained model of its own (``lungfusion train --model clinical``) and the clinical
submodel of late fusion. The sheet's text values are parsed by :mod:`lungfusion.clinical`
(sex, age, weight, smoking, pack-years, TNM as the collections write them); imputation,
scaling and encoding are fit on a fold's training patients only, inside :class:`ClinicalModel`.

>>> import pandas as pd
>>> sheet = pd.DataFrame({"patient_id": list("abcd"), "label": ["ADC", "SQC"] * 2,
...                       "age": ["60", "70", "65", None], "sex": ["M", "F", "M", "F"]})
>>> probs = fit_predict_clinical(sheet, fit_ids=list("abcd"), score_ids=["d"],
...                              task="classification", classes=["ADC", "SQC"])
>>> list(probs.columns)
['patient_id', 'prob_ADC', 'prob_SQC']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LogisticRegression
from sksurv.linear_model import CoxPHSurvivalAnalysis

from lungfusion.clinical import fit_preprocessor, parse_clinical_table, transform_features
from lungfusion.estimators.targets import (
    classification_target,
    estimator_scores,
    survival_target,
)

TASKS = ("classification", "survival")
log = logging.getLogger(__name__)


def clinical_features(sheet: pd.DataFrame) -> pd.DataFrame:
    """The parsed clinical features of ``sheet`` (see :func:`lungfusion.clinical.parse_clinical_table`)."""
    return parse_clinical_table(sheet)


@dataclass
class ClinicalModel:
    """A fitted preprocessing (``ColumnTransformer``) and estimator; scores raw sheet rows."""

    task: str
    classes: list[str] | None
    preprocessor: ColumnTransformer
    estimator: object

    def features(self, sheet: pd.DataFrame) -> pd.DataFrame:
        return transform_features(self.preprocessor, parse_clinical_table(sheet))

    def score(self, sheet: pd.DataFrame) -> dict[str, np.ndarray]:
        """``{"prob_<class>": ...}`` (classification) or ``{"risk": ...}`` (survival)."""
        return estimator_scores(self.estimator, self.features(sheet), self.task, self.classes)


def fit_clinical_model(
    sheet: pd.DataFrame,
    *,
    fit_ids: Sequence[str],
    task: str,
    classes: Sequence[str] | None = None,
    C: float = 1.0,
    alpha: float = 1.0,
    columns: Sequence[str] | None = None,
) -> ClinicalModel:
    """Fit on the ``fit_ids`` patients; those without a usable target are not fit on."""
    if task not in TASKS:
        raise ValueError(f"task must be classification or survival, got {task!r}")
    table = sheet.set_index("patient_id", drop=False)
    fit = table.loc[[str(p) for p in fit_ids]]
    if task == "classification":
        if classes is None:
            raise ValueError("classes are needed for a classification clinical model")
        known, target = classification_target(fit, classes)
        if len(np.unique(target)) < 2:
            # a tiny fold can hold one class only: predict its prior instead of stopping the run
            log.warning(
                "one class among the clinical model's training patients: predicting the prior"
            )
            estimator = DummyClassifier(strategy="prior")
        else:
            estimator = LogisticRegression(C=C, solver="newton-cg", max_iter=1000)
    else:
        known, target = survival_target(fit)
        if not target["event"].any():
            log.warning("no event among the clinical Cox model's training patients: constant risk")
            target = np.zeros(int(known.sum()))
            estimator = DummyRegressor(strategy="constant", constant=0.0)
        else:
            estimator = CoxPHSurvivalAnalysis(alpha=alpha)
    parsed = parse_clinical_table(fit[known])
    preprocessor = fit_preprocessor(parsed, columns=columns)
    estimator.fit(transform_features(preprocessor, parsed), target)
    return ClinicalModel(
        task=task,
        classes=None if classes is None else list(classes),
        preprocessor=preprocessor,
        estimator=estimator,
    )


def fit_predict_clinical(
    sheet: pd.DataFrame,
    *,
    fit_ids: list[str],
    score_ids: list[str],
    task: str,
    classes: list[str] | None = None,
    C: float = 1.0,
    alpha: float = 1.0,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Fit on ``fit_ids`` and score ``score_ids``.

    Returns ``patient_id`` and ``prob_<class>`` columns (classification, ``classes`` in order)
    or ``risk`` (survival, higher = worse). Patients without a usable target are not fit on.
    """
    model = fit_clinical_model(
        sheet, fit_ids=fit_ids, task=task, classes=classes, C=C, alpha=alpha, columns=columns
    )
    table = sheet.set_index("patient_id", drop=False)
    score = table.loc[[str(p) for p in score_ids]]
    return pd.DataFrame({"patient_id": score.index.to_list(), **model.score(score)})
