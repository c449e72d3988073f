"""Survival metrics by hand, against scikit-learn where they coincide, and end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sksurv.nonparametric import kaplan_meier_estimator

from lungfusion.evaluation import survival as sv
from lungfusion.evaluation.scoring import evaluate_survival


def test_harrell_c_by_hand():
    time = np.array([1.0, 2, 3, 4, 5])
    event = np.array([1, 0, 1, 1, 0])
    # comparable pairs (earlier time is an event): (0,1..4), (2,3), (2,4), (3,4) = 7;
    # patient 3 (risk 0.05) is ranked below patient 4 (0.1): one discordant -> 6/7
    risk = np.array([0.9, 0.5, 0.7, 0.05, 0.1])
    assert sv.harrell_c(time, event, risk) == pytest.approx(6 / 7)
    assert np.isnan(sv.harrell_c(time, np.zeros(5), risk))


def test_without_censoring_uno_equals_harrell_and_td_auc_equals_roc_auc():
    rng = np.random.default_rng(0)
    time = rng.permutation(np.arange(1.0, 61.0)) * 10
    event = np.ones(60, dtype=int)
    risk = -time + rng.normal(scale=200, size=60)
    reference = sv.surv(time, event)
    assert sv.uno_c(time, event, risk, reference=reference) == pytest.approx(
        sv.harrell_c(time, event, risk)
    )
    aucs = sv.time_dependent_auc(time, event, risk, horizons=[150, 300, 9999], reference=reference)
    assert aucs[150.0] == pytest.approx(roc_auc_score(time <= 150, risk))
    assert aucs[300.0] == pytest.approx(roc_auc_score(time <= 300, risk))
    assert np.isnan(aucs[9999.0])  # beyond follow-up: undefined, not an error


def test_integrated_brier_of_a_coin_is_a_quarter():
    time = np.arange(1.0, 41.0)
    event = np.ones(40, dtype=int)
    grid = sv.brier_grid(time)
    reference = sv.surv(time, event)
    coin = np.full((40, len(grid)), 0.5)
    assert sv.integrated_brier(time, event, coin, grid=grid, reference=reference) == pytest.approx(
        0.25
    )
    perfect = (time[:, None] > grid[None, :]).astype(float)
    assert sv.integrated_brier(time, event, perfect, grid=grid, reference=reference) < 0.01


def test_calibration_curves_match_scikit_survival_step_functions():
    rng = np.random.default_rng(1)
    risk = rng.normal(size=30)
    time = np.exp(-risk + rng.normal(scale=0.3, size=30)) * 100
    event = rng.random(30) < 0.8
    model = sv.fit_risk_calibration(risk, time, event)
    grid = np.array([0.5 * time.min(), np.median(time), time.max() * 2])
    curves = sv.survival_curves(model, risk[:3], grid)
    steps = model.predict_survival_function(risk[:3].reshape(-1, 1))
    assert curves[:, 0].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(curves[:, 1], [f(grid[1]) for f in steps])
    np.testing.assert_allclose(curves[:, 2], [f(model.unique_times_[-1]) for f in steps])


def test_risk_groups_kaplan_meier_and_logrank():
    time = np.array([1.0, 2, 3, 4, 10, 11, 12, 13])
    event = np.array([1, 1, 1, 1, 1, 0, 1, 0])
    risk = np.array([9, 8, 7, 6, 1, 2, 3, 4])
    groups = sv.risk_groups(risk, 5)
    assert groups.tolist() == ["high"] * 4 + ["low"] * 4
    curves = sv.kaplan_meier_curves(time, event, groups)
    high = curves[curves.group == "high"]
    assert high.survival.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    low_times, low_survival = kaplan_meier_estimator(event[4:].astype(bool), time[4:])
    np.testing.assert_allclose(curves[curves.group == "low"].survival.to_numpy()[1:], low_survival)
    chi2, p = sv.logrank(time, event, groups)
    assert chi2 > 0 and p < 0.01
    assert np.isnan(sv.logrank(time, event, np.array(["low"] * 8))[1])


def _survival_predictions(rng, fold, n, prefix):
    risk = rng.normal(size=n)
    time = np.round(np.exp(-risk + rng.normal(scale=0.5, size=n)) * 500) + 1
    event = (rng.random(n) < 0.75).astype(int)
    return pd.DataFrame(
        {"patient_id": [f"{prefix}{fold}_{i}" for i in range(n)], "fold": fold,
         "risk": risk * 3 + 10 * fold, "survival_days": time, "event": event}
    )  # fmt: skip


def test_evaluate_survival_end_to_end():
    rng = np.random.default_rng(2)
    test = pd.concat([_survival_predictions(rng, k, 40, "t") for k in range(3)])
    val = pd.concat([_survival_predictions(rng, k, 20, "v") for k in range(3)])
    table, km, info = evaluate_survival(test, val, horizons=[200, 500], n_bootstrap=40, seed=0)
    values = table.set_index("metric")
    for metric in ("c_harrell", "c_uno", "auc_200d", "auc_500d", "ibs"):
        row = values.loc[metric]
        assert row.ci_low <= row.value <= row.ci_high, metric
    assert values.loc["c_harrell", "value"] > 0.65  # the risk is informative
    assert 0 < values.loc["ibs", "value"] < 0.25
    assert values.loc["logrank_p", "value"] < 0.05
    assert values.loc["n", "value"] == 120
    assert values.loc["n_high_risk", "value"] + values.loc["n_low_risk", "value"] == 120
    assert set(km.group) == {"high", "low"}
    assert info["ibs"] == "computed"
