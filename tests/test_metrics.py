"""Classification metrics by hand and against scikit-learn; the seeded bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from lungfusion.evaluation.bootstrap import bootstrap_ci, stratified_bootstrap_indices
from lungfusion.evaluation.metrics import (
    auroc,
    binary_metrics,
    classification_metrics,
    gmean_threshold,
    multiclass_metrics,
    youden_threshold,
)
from lungfusion.evaluation.scoring import evaluate_classification, fold_thresholds

# 4 positives, 6 negatives; at 0.5: TP 3 (0.9, 0.8, 0.6), FN 1 (0.3), FP 2 (0.7, 0.55), TN 4
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P, P >= 0.5)
    # pairs (pos, neg) ordered right: 0.9 and 0.8 beat all 6, 0.6 beats 5, 0.3 beats 3 -> 20/24
    assert m["auroc"] == pytest.approx(20 / 24)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["gmean"] == pytest.approx(np.sqrt(3 / 4 * 4 / 6))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)


def test_binary_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(y * 0.3 + rng.random(200), 2)  # rounding makes ties
    pred = score >= 0.6
    m = binary_metrics(y, score, pred)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_undefined_ratios_are_nan_and_one_class_auc_is_nan():
    m = binary_metrics(Y, P, np.zeros_like(Y))  # no positive call
    assert np.isnan(m["ppv"]) and m["sensitivity"] == 0.0
    assert np.isnan(auroc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_multiclass_one_vs_rest_and_macro_match_sklearn():
    rng = np.random.default_rng(1)
    classes = ["ADC", "SQC", "SCLC"]
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    m = multiclass_metrics(y, probs, pred, classes)
    ovr = skm.roc_auc_score(y, probs, multi_class="ovr", average=None)
    for i, name in enumerate(classes):
        assert m[f"auroc_{name}"] == pytest.approx(ovr[i])
    assert m["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert m["sensitivity_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["ppv_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    two = classification_metrics(
        Y, np.column_stack([1 - P, P]), (P >= 0.5).astype(int), ["ADC", "SQC"]
    )
    assert two["auroc"] == pytest.approx(20 / 24)


def test_youden_threshold_by_hand():
    # cut 0.6 calls 0.9, 0.8, 0.6 and 0.7 positive: sens 3/4, spec 5/6, J 0.583 (the best)
    assert youden_threshold(Y, P) == pytest.approx(0.6)


def test_gmean_threshold_by_hand_and_by_brute_force():
    # cut 0.6: sens 3/4, spec 5/6, G-mean 0.791; the next best (0.8, 0.55, 0.3) reach 0.707
    assert gmean_threshold(Y, P) == pytest.approx(0.6)
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = (rng.random(30) < 0.25).astype(int)
        y[:2] = [0, 1]
        p = rng.random(30) * 0.6 + 0.3 * y
        best = max(binary_metrics(y, p, p >= cut)["gmean"] for cut in p)
        chosen = binary_metrics(y, p, p >= gmean_threshold(y, p))["gmean"]
        assert chosen == pytest.approx(best)


def test_a_model_that_calls_one_class_is_counted():
    test = pd.concat([_predictions(0, Y, P * 0.5), _predictions(1, Y, P * 0.5)])
    val = pd.concat([_predictions(0, Y, P * 0.5), _predictions(1, Y, P * 0.5)])
    # calibrated to a low prevalence, every probability is below 0.5: a fixed cut calls all ADC
    table, info = evaluate_classification(
        test, val, classes=["ADC", "SQC"], threshold=0.5, n_bootstrap=20, seed=0
    )
    values = table.set_index("metric")["value"]
    assert values["predicted_classes"] == 1 and values["sensitivity"] == 0
    assert info["predicted_per_class"] == {"ADC": 20, "SQC": 0}
    # the validation-chosen operating point gives both classes where the AUROC allows
    for rule in ("youden", "gmean"):
        table, info = evaluate_classification(
            test, val, classes=["ADC", "SQC"], threshold=rule, n_bootstrap=20, seed=0
        )
        values = table.set_index("metric")["value"]
        assert values["predicted_classes"] == 2 and values["sensitivity"] == pytest.approx(0.75)
        assert "validation predictions" in info["threshold"]["rule"]
        assert info["predicted_per_class"] == {"ADC": 12, "SQC": 8}


def test_bootstrap_is_seeded_stratified_and_contains_the_estimate():
    strata = Y
    first = list(stratified_bootstrap_indices(strata, n_resamples=5, seed=11))
    again = list(stratified_bootstrap_indices(strata, n_resamples=5, seed=11))
    other = list(stratified_bootstrap_indices(strata, n_resamples=5, seed=12))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(np.bincount(strata[i]).tolist() == [6, 4] for i in first)

    def statistic(index):
        return binary_metrics(Y[index], P[index], P[index] >= 0.5)

    ci = bootstrap_ci(statistic, strata, n_resamples=300, seed=5)
    assert ci == bootstrap_ci(statistic, strata, n_resamples=300, seed=5)
    point = statistic(np.arange(len(Y)))
    for name in ("auroc", "accuracy", "sensitivity", "specificity", "gmean"):
        assert ci[name]["ci_low"] <= point[name] <= ci[name]["ci_high"], name
        assert ci[name]["ci_low"] < ci[name]["ci_high"]
    with pytest.raises(ValueError, match="ci"):
        bootstrap_ci(statistic, strata, n_resamples=2, ci=1.5)


def _predictions(fold, y, p):
    return pd.DataFrame(
        {"patient_id": [f"f{fold}p{i}" for i in range(len(y))], "fold": fold,
         "label": np.where(y == 1, "SQC", "ADC"), "prob_ADC": 1 - p, "prob_SQC": p}
    )  # fmt: skip


def test_youden_threshold_comes_from_each_folds_validation_predictions():
    test = pd.concat([_predictions(0, Y, P), _predictions(1, Y, P)])
    # fold 0's validation says cut at 0.35; fold 1 has no validation rows -> 0.5
    val = _predictions(0, np.array([1, 1, 0, 0]), np.array([0.4, 0.35, 0.3, 0.1]))
    cuts = fold_thresholds(test, val, classes=["ADC", "SQC"], threshold="youden")
    assert cuts[0]["threshold"] == pytest.approx(0.35)
    assert cuts[1]["threshold"] == 0.5 and "no validation" in cuts[1]["source"]
    table, info = evaluate_classification(
        test, val, classes=["ADC", "SQC"], threshold="youden", n_bootstrap=50, seed=0
    )
    values = table.set_index("metric")["value"]
    # fold 0 at 0.35: TP 3 FN 1 FP 3 TN 3; fold 1 at 0.5: TP 3 FN 1 FP 2 TN 4
    assert values["sensitivity"] == pytest.approx(6 / 8)
    assert values["specificity"] == pytest.approx(7 / 12)
    assert values["n"] == 20
    assert "Youden" in info["threshold"]["rule"]
    assert list(table.columns) == ["metric", "value", "ci_low", "ci_high", "p_delong_vs_best"]
