"""DeLong's test for correlated ROC curves, with the fast algorithm of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of several AUCs measured on the
same patients from the placement values of each case among the controls and vice versa. Sun &
Xu (IEEE Signal Processing Letters 21(11), 2014) compute those placements from midranks, in
O(k n log n) for k predictors, instead of comparing every case with every control.
Reproduces R pROC's ``roc.test(method="delong", paired=TRUE)`` (see tests/test_delong.py).

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1])
>>> aucs, cov = fast_delong(y, np.array([[0.1, 0.4, 0.35, 0.8]]))
>>> float(aucs[0])
0.75
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if y.ndim != 1 or s.shape[1] != y.shape[0]:
        raise ValueError(f"scores shape {s.shape} does not match {y.shape[0]} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = positive)")
    if y.min() == y.max():
        raise ValueError("DeLong needs both classes among the labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), s


def fast_delong(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` predictors and their DeLong covariance matrix.

    Args:
        y_true: shape (n,), 1 for positives (cases), 0 for negatives (controls).
        scores: shape (k, n) or (n,), higher meaning more likely positive.

    Returns:
        ``(aucs, cov)`` with shapes (k,) and (k, k). Ties count one half, as in the
        Mann-Whitney statistic.
    """
    y, s = _check(y_true, scores)
    cases, controls = s[:, y], s[:, ~y]
    m, n = cases.shape[1], controls.shape[1]
    rank_cases = rankdata(cases, axis=1)
    rank_controls = rankdata(controls, axis=1)
    rank_all = rankdata(np.hstack([cases, controls]), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # placement of each case among the controls, and of each control among the cases
    v_cases = (rank_all[:, :m] - rank_cases) / n
    v_controls = 1.0 - (rank_all[:, m:] - rank_controls) / m
    cov = np.atleast_2d(np.cov(v_cases)) / m + np.atleast_2d(np.cov(v_controls)) / n
    return aucs, cov


def delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float]:
    """Two-sided DeLong test that two predictors on the same patients have equal AUC.

    Returns ``auc_a``, ``auc_b``, ``z`` and ``p``. Two identical predictors give z = 0, p = 1.
    """
    aucs, cov = fast_delong(y_true, np.vstack([scores_a, scores_b]))
    difference = aucs[0] - aucs[1]
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if variance <= 0:
        z = 0.0 if difference == 0 else float(np.sign(difference) * np.inf)
    else:
        z = float(difference / np.sqrt(variance))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "z": z,
        "p": float(2 * norm.sf(abs(z))),
    }


def delong_auc_ci(y_true: np.ndarray, scores: np.ndarray, *, ci: float = 0.95) -> tuple[float, ...]:
    """AUC with its DeLong confidence interval, clipped to [0, 1]: ``(auc, low, high)``."""
    aucs, cov = fast_delong(y_true, scores)
    half = norm.ppf(0.5 + ci / 2) * np.sqrt(cov[0, 0])
    return float(aucs[0]), float(max(0.0, aucs[0] - half)), float(min(1.0, aucs[0] + half))
