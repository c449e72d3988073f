"""Fast DeLong against R pROC on its aSAH example and against the 1988 definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungfusion.evaluation.delong import delong_auc_ci, delong_test, fast_delong

# pROC's aSAH data set (Turck et al. 2010; 113 aneurysmal subarachnoid haemorrhage patients):
# outcome Poor = 1 (41 patients), the s100b biomarker, the WFNS grade (ordinal 1-5, so ties)
# and ndka. pROC documents roc.test(roc(outcome, s100b), roc(outcome, wfns)) as
# "DeLong's test for two correlated ROC curves: Z = -2.209, p-value = 0.02718,
# AUC of roc1 0.7313686, AUC of roc2 0.8236789". The unrounded values below are pROC 1.19.1's
# auc(), var(), cov() and roc.test() printed to 17 digits (direction "<", levels 0/1).
ASAH_POOR = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0,
    0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0,
    0,
]  # fmt: skip
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]  # fmt: skip
ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2,
    1, 1, 3, 4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1,
    2, 2, 2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4,
    2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1,
    1,
]  # fmt: skip
ASAH_NDKA = [
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6.0, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18,
    8.9, 13.41, 20.75, 11.6, 16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29,
    12.53, 6.54, 6.3, 80.3, 12.8, 9.8, 9.81, 9.85, 18.21, 5.03, 14.04, 21.93, 8.02,
    7.42, 8.38, 6.59, 9.63, 13.12, 7.96, 14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87,
    9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95, 21.22, 11.73, 10.4, 58.83, 6.39,
    11.09, 12.22, 13.67, 17.21, 22.63, 12.9, 9.7, 21.57, 8.23, 72.57, 15.54, 10.51,
    10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44, 11.07, 19.46, 10.83, 5.37,
    11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01, 9.57,
    34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45,
]  # fmt: skip
PROC_AUC = (0.73136856368563685, 0.82367886178861793, 0.61195799457994582)
PROC_VAR = (0.0026686824571724378, 0.0014699147088236264, 0.0031908105493913021)
PROC_COV_S100B_WFNS = 0.0011961556737675448
PROC_COV_S100B_NDKA = -0.00075616493805657884
PROC_TEST_S100B_WFNS = (-2.2089835914409077, 0.02717578222918815)
PROC_TEST_S100B_NDKA = (1.3907700257355771, 0.16429517522305448)


@pytest.fixture(scope="module")
def asah():
    y = np.array(ASAH_POOR)
    scores = np.vstack([ASAH_S100B, ASAH_WFNS, ASAH_NDKA]).astype(float)
    assert (len(y), int(y.sum())) == (113, 41)
    return y, scores


def test_aucs_and_covariance_match_proc(asah):
    y, scores = asah
    aucs, cov = fast_delong(y, scores)
    np.testing.assert_allclose(aucs, PROC_AUC, rtol=1e-12)
    np.testing.assert_allclose(np.diag(cov), PROC_VAR, rtol=1e-10)
    assert cov[0, 1] == pytest.approx(PROC_COV_S100B_WFNS, rel=1e-10)
    assert cov[0, 2] == pytest.approx(PROC_COV_S100B_NDKA, rel=1e-10)
    np.testing.assert_allclose(cov, cov.T)


def test_roc_test_matches_proc_documented_example(asah):
    y, scores = asah
    result = delong_test(y, scores[0], scores[1])
    # the rounded values pROC's documentation prints
    assert round(result["z"], 3) == -2.209
    assert round(result["p"], 5) == 0.02718
    assert round(result["auc_a"], 7) == 0.7313686
    assert round(result["auc_b"], 7) == 0.8236789
    assert (result["z"], result["p"]) == pytest.approx(PROC_TEST_S100B_WFNS, rel=1e-9)
    other = delong_test(y, scores[0], scores[2])
    assert (other["z"], other["p"]) == pytest.approx(PROC_TEST_S100B_NDKA, rel=1e-9)


def _brute_force(y, scores):
    """DeLong 1988 by its definition: psi(case, control) = 1, 1/2 or 0, O(m n)."""
    cases, controls = scores[:, y == 1], scores[:, y == 0]
    psi = (cases[:, :, None] > controls[:, None, :]) + 0.5 * (
        cases[:, :, None] == controls[:, None, :]
    )
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    cov = np.cov(v10) / cases.shape[1] + np.cov(v01) / controls.shape[1]
    return psi.mean(axis=(1, 2)), cov


def test_fast_algorithm_equals_definition_and_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    scores = np.vstack([y + rng.normal(size=40), np.round(rng.normal(size=40), 1)])
    aucs, cov = fast_delong(y, scores)
    ref_aucs, ref_cov = _brute_force(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(y, scores[0]))


def test_identical_predictors_and_bad_input():
    y = np.array([0, 1, 0, 1, 1])
    s = np.array([0.1, 0.8, 0.3, 0.6, 0.2])
    assert delong_test(y, s, s) == {"auc_a": 5 / 6, "auc_b": 5 / 6, "z": 0.0, "p": 1.0}
    auc, low, high = delong_auc_ci(y, s)
    assert low <= auc <= high and low >= 0 and high <= 1
    with pytest.raises(ValueError, match="both classes"):
        fast_delong(np.ones(3), s[:3])
    with pytest.raises(ValueError, match="shape"):
        fast_delong(y, s[:4])
