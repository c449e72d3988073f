"""The skeleton every table model shares: its target from the sheet, its scores out.

A classification target is the class index of each patient whose label is among ``classes``;
a survival target is scikit-survival's structured array of ``survival_days`` and ``event`` for
each patient with both. ``known`` marks the rows of the fitting table that have a target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sksurv.util import Surv


def classification_target(
    fit: pd.DataFrame, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(known, class indices)`` of the rows whose ``label`` is among ``classes``."""
    known = fit["label"].isin(classes).to_numpy()
    target = fit["label"][known].map({c: i for i, c in enumerate(classes)}).to_numpy(int)
    return known, target


def survival_target(fit: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(known, Surv array)`` of the rows with both ``survival_days`` and ``event``."""
    days = pd.to_numeric(fit["survival_days"], errors="coerce")
    event = pd.to_numeric(fit["event"], errors="coerce")
    known = (days.notna() & event.notna()).to_numpy()
    return known, Surv.from_arrays(event=event[known] > 0, time=days[known].astype(float))


def estimator_scores(estimator, x, task: str, classes: Sequence[str] | None) -> dict:
    """A fitted scikit-learn estimator's ``{"prob_<class>": ...}`` for every class, including
    any its training patients lacked (probability 0), or ``{"risk": ...}`` for survival."""
    if task == "survival":
        return {"risk": np.asarray(estimator.predict(x), dtype=float)}
    probs = np.zeros((len(x), len(classes)))
    probs[:, estimator.classes_] = estimator.predict_proba(x)
    return {f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}
