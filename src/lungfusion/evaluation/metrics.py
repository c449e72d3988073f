"""Classification metrics as the seed papers report them, fast enough to bootstrap.

Binary: AUROC, accuracy, F1, sensitivity, specificity, PPV, NPV, G-mean and balanced accuracy,
the positive class being the last of ``cohort.classes``. Multi-class: every metric one-vs-rest
per class (``auroc_ADC``...) and their unweighted mean (``auroc_macro``...), plus the overall
accuracy. They are written with numpy rather than called from scikit-learn because a bootstrap
calls them thousands of times; tests/test_metrics.py checks them against scikit-learn.
A ratio whose denominator is zero (e.g. PPV with no positive call) is NaN, not 0.
The training engine's per-epoch selection scores (:func:`auc_score`, :func:`gmean_score`) are
scikit-learn's AUROC and an arg-max G-mean, as the engine has always chosen its epochs.

>>> import numpy as np
>>> m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), np.array([0, 1, 0, 1]))
>>> m["auroc"], m["sensitivity"], m["specificity"]
(0.75, 0.5, 0.5)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

BINARY_METRICS = (
    "auroc",
    "accuracy",
    "f1",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "gmean",
    "balanced_accuracy",
)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney midrank formula; NaN with one class."""
    y = np.asarray(y_true).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - m * (m + 1) / 2) / (m * n))


def binary_metrics(y_true: np.ndarray, score: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Every binary metric from true 0/1 labels, a positive-class score and 0/1 decisions."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_pred).astype(bool)
    tp = float(np.sum(y & pred))
    tn = float(np.sum(~y & ~pred))
    fp = float(np.sum(~y & pred))
    fn = float(np.sum(y & ~pred))
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "auroc": auroc(y, score),
        "accuracy": _ratio(tp + tn, len(y)),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "gmean": float(np.sqrt(sensitivity * specificity)),
        "balanced_accuracy": (sensitivity + specificity) / 2,
    }


def multiclass_metrics(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """One-vs-rest metrics per class, their macro mean, and the overall accuracy.

    Args:
        y_true: class indices, shape (n,).
        probs: class probabilities, shape (n, len(classes)).
        y_pred: predicted class indices, shape (n,) (usually the arg-max).
    """
    y = np.asarray(y_true)
    pred = np.asarray(y_pred)
    result: dict[str, float] = {}
    per_class = []
    for index, name in enumerate(classes):
        one = binary_metrics(y == index, probs[:, index], pred == index)
        per_class.append(one)
        result.update({f"{key}_{name}": value for key, value in one.items()})
    for key in BINARY_METRICS:
        values = [one[key] for one in per_class]
        result[f"{key}_macro"] = float(np.mean(values))
    result["accuracy"] = float(np.mean(y == pred))
    return result


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Binary metrics for two classes (the last is positive), one-vs-rest and macro otherwise."""
    probs = np.asarray(probs, dtype=float)
    if len(classes) == 2:
        return binary_metrics(np.asarray(y_true) == 1, probs[:, 1], np.asarray(y_pred) == 1)
    return multiclass_metrics(y_true, probs, y_pred, classes)


def _best_cut(y_true: np.ndarray, score: np.ndarray, objective) -> float:
    """The score cut that maximises ``objective(tpr, fpr)``; positives are ``score >= cut``.

    Among equal values the highest cut wins (fewest positive calls). The cut is capped to 1
    when scikit-learn proposes its ``inf`` sentinel.
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(y_true).astype(int), score, drop_intermediate=False)
    value = objective(tpr, fpr)
    best = int(np.flatnonzero(value == value.max())[0])
    return float(min(thresholds[best], 1.0))


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """The cut that maximises Youden's J = sensitivity + specificity - 1."""
    return _best_cut(y_true, score, lambda tpr, fpr: tpr - fpr)


def gmean_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """The cut that maximises the G-mean, sqrt(sensitivity x specificity): like Youden's J,
    it keeps both classes in view when they are imbalanced."""
    return _best_cut(y_true, score, lambda tpr, fpr: np.sqrt(tpr * (1.0 - fpr)))


THRESHOLD_RULES = {"youden": youden_threshold, "gmean": gmean_threshold}


# ------------------------------------------------- model selection (the training engine's epochs)


def gmean_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Geometric mean of per-class recall of the arg-max class (sensitivity x specificity for
    two classes); 0 when a class is absent from ``labels``, so an epoch is not chosen on it."""
    predicted = probs.argmax(axis=1)
    recalls = [np.mean(predicted[labels == k] == k) for k in np.unique(labels)]
    if len(recalls) < probs.shape[1]:
        return 0.0  # a class absent from the set: recall undefined, count it as a miss
    return float(np.prod(recalls) ** (1.0 / len(recalls)))


def auc_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's AUROC of class indices and probabilities, one-vs-rest macro for more than
    two classes; NaN unless every class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    present = np.unique(labels)
    if len(present) < probs.shape[1]:
        return float("nan")
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
