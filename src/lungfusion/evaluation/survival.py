"""Survival metrics from risk scores, through scikit-survival.

Harrell's C-index, Uno's C-index, the cumulative/dynamic time-dependent AUC at given horizons,
the integrated Brier score, and Kaplan-Meier risk groups compared by the log-rank test.
``reference_time``/``reference_event`` estimate the censoring distribution that Uno's C, the
time-dependent AUC and the Brier score weight by (scikit-survival's ``survival_train``).
A metric that cannot be computed on the data given (a horizon beyond follow-up, no event)
is NaN rather than an error, so a bootstrap resample never stops the run.

>>> import numpy as np
>>> harrell_c(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), np.array([3.0, 2.0, 1.0]))
1.0
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sksurv.compare import compare_survival
from sksurv.exceptions import NoComparablePairException
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv


def surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """scikit-survival's structured outcome array from days and 0/1 events."""
    return Surv.from_arrays(
        event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float)
    )


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance: higher risk should mean earlier event. NaN with no event or no
    comparable pair (e.g. every event after the last censoring), as the training engine needs
    for a fold's validation patients."""
    event = np.asarray(event).astype(bool)
    if len(event) < 2 or not event.any():
        return float("nan")
    try:
        return float(concordance_index_censored(event, np.asarray(time, float), risk)[0])
    except NoComparablePairException:
        return float("nan")


def uno_c(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    reference: np.ndarray,
    tau: float | None = None,
) -> float:
    """Uno's inverse-probability-of-censoring weighted C-index, truncated at ``tau``."""
    try:
        return float(concordance_index_ipcw(reference, surv(time, event), risk, tau=tau)[0])
    except (ValueError, ZeroDivisionError):
        return float("nan")


def usable_horizons(time: np.ndarray, horizons: list[float]) -> list[float]:
    """Horizons strictly inside the follow-up, as scikit-survival requires."""
    time = np.asarray(time, dtype=float)
    return [float(h) for h in horizons if time.min() <= h < time.max()]


def time_dependent_auc(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    horizons: list[float],
    reference: np.ndarray,
) -> dict[float, float]:
    """Cumulative/dynamic AUC at each horizon (days); NaN where it is not defined."""
    result = {float(h): float("nan") for h in horizons}
    inside = usable_horizons(time, horizons)
    if not inside:
        return result
    try:
        aucs, _ = cumulative_dynamic_auc(reference, surv(time, event), risk, inside)
    except ValueError:
        return result
    result.update({h: float(a) for h, a in zip(inside, aucs, strict=True)})
    return result


def brier_grid(time: np.ndarray, *, n_points: int = 50, quantiles=(0.1, 0.8)) -> np.ndarray:
    """Time points for the integrated Brier score, between two quantiles of the follow-up."""
    low, high = np.quantile(np.asarray(time, dtype=float), quantiles)
    return np.unique(np.linspace(low, high, n_points))


def integrated_brier(
    time: np.ndarray,
    event: np.ndarray,
    survival_probabilities: np.ndarray,
    *,
    grid: np.ndarray,
    reference: np.ndarray,
) -> float:
    """Integrated Brier score of per-patient survival curves evaluated on ``grid``."""
    time = np.asarray(time, dtype=float)
    keep = (grid >= time.min()) & (grid < time.max())
    if keep.sum() < 2:
        return float("nan")
    try:
        return float(
            integrated_brier_score(
                reference, surv(time, event), survival_probabilities[:, keep], grid[keep]
            )
        )
    except ValueError:
        return float("nan")


def fit_risk_calibration(
    risk: np.ndarray, time: np.ndarray, event: np.ndarray, *, alpha: float = 0.1
) -> CoxPHSurvivalAnalysis:
    """A one-covariate Cox model on a risk score, to turn the score into survival curves."""
    model = CoxPHSurvivalAnalysis(alpha=alpha)
    model.fit(np.asarray(risk, dtype=float).reshape(-1, 1), surv(time, event))
    return model


def survival_curves(model: CoxPHSurvivalAnalysis, risk: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Survival probabilities, shape (n, len(grid)), of a calibration model at ``grid``."""
    curves = model.predict_survival_function(
        np.asarray(risk, dtype=float).reshape(-1, 1), return_array=True
    )
    index = np.searchsorted(model.unique_times_, grid, side="right") - 1
    values = curves[:, np.clip(index, 0, None)]
    values[:, index < 0] = 1.0  # before the first event time nobody has died yet
    return values


def risk_groups(risk: np.ndarray, cut: float | np.ndarray) -> np.ndarray:
    """``"high"`` where risk is above the cut (e.g. the training median), else ``"low"``."""
    return np.where(np.asarray(risk, dtype=float) > cut, "high", "low")


def logrank(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Log-rank chi-square and p-value between groups; NaN with one group or no event."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2 or not np.asarray(event).astype(bool).any():
        return float("nan"), float("nan")
    chi2, p = compare_survival(surv(time, event), groups)
    return float(chi2), float(p)


def kaplan_meier_curves(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Kaplan-Meier curve of each group as rows ``group, time, survival, n_at_start``."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    groups = np.asarray(groups)
    frames = []
    for group in sorted(np.unique(groups)):
        mask = groups == group
        times, survival = kaplan_meier_estimator(event[mask], time[mask])
        frames.append(
            pd.DataFrame(
                {
                    "group": group,
                    "time": np.concatenate([[0.0], times]),
                    "survival": np.concatenate([[1.0], survival]),
                    "n_at_start": int(mask.sum()),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    horizons: list[float],
    reference: np.ndarray,
    survival_probabilities: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    tau: float | None = None,
) -> dict[str, float]:
    """Harrell's and Uno's C, AUC at each horizon (``auc_365d``...), their mean, and the IBS."""
    result = {
        "c_harrell": harrell_c(time, event, risk),
        "c_uno": uno_c(time, event, risk, reference=reference, tau=tau),
    }
    aucs = time_dependent_auc(time, event, risk, horizons=horizons, reference=reference)
    result.update({f"auc_{h:g}d": value for h, value in aucs.items()})
    finite = [value for value in aucs.values() if np.isfinite(value)]
    result["auc_mean"] = float(np.mean(finite)) if finite else float("nan")
    result["ibs"] = float("nan")
    if survival_probabilities is not None and grid is not None:
        result["ibs"] = integrated_brier(
            time, event, survival_probabilities, grid=grid, reference=reference
        )
    return result
