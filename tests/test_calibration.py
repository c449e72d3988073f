"""Per-fold calibration of class probabilities (training/calibration.py)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lungfusion.training.calibration import apply_calibration, fit_calibration

CLASSES = ("ADC", "SQC")


def _fold(rng, n, *, centre, spread, fold):
    """Predictions of one fold: the same signal, on the fold's own probability scale."""
    label = rng.random(n) < 0.3
    signal = 1.2 * label + rng.standard_normal(n)
    p = 1 / (1 + np.exp(-(centre + spread * signal)))
    return pd.DataFrame(
        {"patient_id": [f"P{fold}{i}" for i in range(n)], "fold": fold,
         "label": np.where(label, "SQC", "ADC"), "prob_ADC": 1 - p, "prob_SQC": p}
    )  # fmt: skip


def test_calibration_puts_folds_on_one_scale_and_keeps_each_folds_order():
    rng = np.random.default_rng(0)
    # fold 0 was selected early (everything near 0.12), fold 1 late (spread over 0..1)
    scales = [dict(centre=-2.0, spread=0.02), dict(centre=1.0, spread=2.0)]
    raw, calibrated = [], []
    for fold, scale in enumerate(scales):
        val, test = (_fold(rng, n, fold=fold, **scale) for n in (60, 200))
        calibration = fit_calibration(val, CLASSES)
        assert calibration["method"] == "platt" and calibration["n_val"] == 60
        out = apply_calibration(test, calibration, CLASSES)
        np.testing.assert_allclose(out.prob_ADC + out.prob_SQC, 1.0, atol=1e-12)
        np.testing.assert_array_equal(out.raw_prob_SQC, test.prob_SQC)
        y = out.label == "SQC"
        assert roc_auc_score(y, out.prob_SQC) == pytest.approx(roc_auc_score(y, test.prob_SQC))
        raw.append(test)
        calibrated.append(out)
    pooled = pd.concat(raw), pd.concat(calibrated)
    auc = [roc_auc_score(t.label == "SQC", t.prob_SQC) for t in pooled]
    assert auc[1] > auc[0] + 0.05  # the mixed scales cost pooled AUROC; calibration wins it back
    # calibrated probabilities mean what they say: about 30% SQC on average in both folds
    for table in calibrated:
        assert table.prob_SQC.mean() == pytest.approx(0.3, abs=0.08)


def test_a_validation_set_without_a_class_is_left_uncalibrated():
    val = pd.DataFrame({"label": ["ADC", "ADC"], "prob_ADC": [0.6, 0.7], "prob_SQC": [0.4, 0.3]})
    calibration = fit_calibration(val, CLASSES)
    assert calibration["method"] == "none" and "SQC" in calibration["reason"]
    assert apply_calibration(val, calibration, CLASSES) is val


def test_three_classes_get_a_multinomial_map():
    rng = np.random.default_rng(1)
    classes = ("ADC", "SQC", "SCLC")
    labels = rng.integers(0, 3, 90)
    logits = rng.standard_normal((90, 3)) * 0.1 + 0.3 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = pd.DataFrame({f"prob_{c}": probs[:, k] for k, c in enumerate(classes)})
    table["label"] = [classes[k] for k in labels]
    calibration = fit_calibration(table, classes)
    assert np.array(calibration["coef"]).shape == (3, 3)
    out = apply_calibration(table, calibration, classes)
    np.testing.assert_allclose(out[[f"prob_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-12)
    # a stronger map: the true class gets more probability than the raw near-uniform one did
    hit = [out[f"prob_{classes[k]}"].iloc[i] for i, k in enumerate(labels)]
    raw = [table[f"prob_{classes[k]}"].iloc[i] for i, k in enumerate(labels)]
    assert np.mean(hit) > np.mean(raw) + 0.05


def test_a_validation_set_ranking_against_the_network_only_shifts_it():
    """A few dozen validation patients can rank against the network (its AUROC there < 0.5);
    a fitted map would then turn the fold's test ranking upside down. Only the offset is fit."""
    rng = np.random.default_rng(2)
    test = _fold(rng, 200, centre=-2.0, spread=1.0, fold=0)
    val = _fold(rng, 40, centre=-2.0, spread=1.0, fold=0)
    val["label"] = np.where(val.label == "SQC", "ADC", "SQC")  # ranks against the network
    assert roc_auc_score(val.label == "SQC", val.prob_SQC) < 0.5
    calibration = fit_calibration(val, CLASSES)
    assert calibration["method"] == "shift" and calibration["coef"] == [[-1.0, 1.0]]
    out = apply_calibration(test, calibration, CLASSES)
    y = out.label == "SQC"
    assert roc_auc_score(y, out.prob_SQC) == pytest.approx(roc_auc_score(y, test.prob_SQC))
    shifted = apply_calibration(val, calibration, CLASSES)
    assert shifted.prob_SQC.mean() == pytest.approx((val.label == "SQC").mean(), abs=0.05)
