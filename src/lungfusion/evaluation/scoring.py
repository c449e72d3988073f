"""Score every model's pooled out-of-fold predictions, with bootstrap intervals and DeLong.

Each patient is tested exactly once across the outer folds, so a model's test predictions of
all folds are pooled into one set of scores. What is learnt from data besides the model itself
(the operating threshold; for survival, the risk scale, the median cut of the risk groups and
the risk-to-survival-curve calibration) is learnt per fold from that fold's validation
predictions, never from its test patients, and applied to the fold's test patients.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungfusion.evaluation import survival as sv
from lungfusion.evaluation.bootstrap import bootstrap_ci
from lungfusion.evaluation.delong import delong_test
from lungfusion.evaluation.metrics import THRESHOLD_RULES, auroc, classification_metrics
from lungfusion.evaluation.tables import metrics_table

RULE_TEXT = {
    "youden": "by Youden's J on each fold's validation predictions",
    "gmean": "by the G-mean (sqrt of sensitivity x specificity) on each fold's validation "
    "predictions",
}


def check_threshold(threshold) -> float | str:
    """A rule chosen on the validation predictions (``youden``, ``gmean``) or a number in (0, 1)."""
    if isinstance(threshold, str) and threshold.lower() in THRESHOLD_RULES:
        return threshold.lower()
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(
            f"evaluate.threshold must be a number in (0, 1) or one of {sorted(THRESHOLD_RULES)}, "
            f"got {threshold!r}"
        ) from None
    if not 0 < value < 1:
        raise ValueError(f"evaluate.threshold must be in (0, 1), got {value}")
    return value


def class_indices(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """Index of each label in ``classes``; -1 for anything else."""
    lookup = {c: i for i, c in enumerate(classes)}
    return labels.astype(str).map(lambda v: lookup.get(v, -1)).to_numpy(int)


def fold_thresholds(
    test: pd.DataFrame, val: pd.DataFrame | None, *, classes: list[str], threshold
) -> dict[int, dict]:
    """The positive-class cut of each fold and where it came from."""
    threshold = check_threshold(threshold)
    cuts = {}
    for fold in sorted(test["fold"].unique()):
        if not isinstance(threshold, str):
            cuts[int(fold)] = {"threshold": threshold, "source": "fixed"}
            continue
        rows = val[val["fold"] == fold] if val is not None else pd.DataFrame()
        y = class_indices(rows["label"], classes) if len(rows) else np.array([])
        known = y >= 0
        if len(np.unique(y[known])) < 2:
            cuts[int(fold)] = {
                "threshold": 0.5,
                "source": "0.5: no validation predictions with both classes",
            }
            continue
        score = rows[f"prob_{classes[-1]}"].to_numpy(float)[known]
        cuts[int(fold)] = {
            "threshold": THRESHOLD_RULES[threshold](y[known] == 1, score),
            "source": f"{threshold} on {int(known.sum())} validation patients",
        }
    return cuts


def evaluate_classification(
    test: pd.DataFrame,
    val: pd.DataFrame | None,
    *,
    classes: list[str],
    threshold=0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, dict]:
    """Metric table with bootstrap intervals, and a record of how it was computed."""
    y_all = class_indices(test["label"], classes)
    data = test[y_all >= 0].reset_index(drop=True)
    y = y_all[y_all >= 0]
    probs = data[[f"prob_{c}" for c in classes]].to_numpy(float)
    info: dict = {"n": len(data), "n_without_known_label": int((y_all < 0).sum())}
    info["n_per_class"] = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    if len(classes) == 2:
        cuts = fold_thresholds(data, val, classes=classes, threshold=threshold)
        row_cut = data["fold"].map(lambda f: cuts[int(f)]["threshold"]).to_numpy(float)
        pred = (probs[:, 1] >= row_cut).astype(int)
        info["threshold"] = {
            "rule": f"{classes[-1]} when prob_{classes[-1]} >= cut; cut "
            + RULE_TEXT.get(check_threshold(threshold), f"fixed at {threshold}"),
            "per_fold": {str(k): v for k, v in cuts.items()},
        }
    else:
        pred = probs.argmax(axis=1)
        info["threshold"] = {"rule": "arg-max class (multi-class); evaluate.threshold unused"}
    point = classification_metrics(y, probs, pred, classes)
    # A model that calls every patient one class has threshold metrics that compare nothing.
    point["predicted_classes"] = float(len(np.unique(pred)))
    info["predicted_per_class"] = {c: int((pred == i).sum()) for i, c in enumerate(classes)}

    def statistic(index: np.ndarray) -> dict[str, float]:
        return classification_metrics(y[index], probs[index], pred[index], classes)

    intervals = bootstrap_ci(statistic, y, n_resamples=n_bootstrap, seed=seed, ci=ci)
    table = metrics_table({"n": float(len(data)), **point}, intervals)
    return table, info


def _fold_survival_scale(test: pd.DataFrame, val: pd.DataFrame | None, alpha: float) -> dict:
    """Per fold: mean and SD of the validation risks, their median, and a calibration model."""
    scales = {}
    for fold in sorted(test["fold"].unique()):
        rows = _survival_rows(val[val["fold"] == fold]) if val is not None else pd.DataFrame()
        if len(rows) < 2:
            own = test.loc[test["fold"] == fold, "risk"].to_numpy(float)
            scales[int(fold)] = {
                "mean": 0.0, "sd": 1.0, "median": float(np.median(own)), "calibration": None,
                "source": "no validation predictions: raw risk, median of the fold's own test risks",
            }  # fmt: skip
            continue
        risk = rows["risk"].to_numpy(float)
        sd = float(risk.std()) or 1.0
        scale = {"mean": float(risk.mean()), "sd": sd, "calibration": None}
        scale["median"] = float(np.median(risk))
        scale["source"] = f"{len(rows)} validation patients"
        z = (risk - scale["mean"]) / sd
        if (rows["event"] > 0).any():
            scale["calibration"] = sv.fit_risk_calibration(
                z, rows["survival_days"], rows["event"], alpha=alpha
            )
        scales[int(fold)] = scale
    return scales


def _survival_rows(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in ("risk", "survival_days", "event"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table.dropna(subset=["risk", "survival_days", "event"]).reset_index(drop=True)


def evaluate_survival(
    test: pd.DataFrame,
    val: pd.DataFrame | None,
    *,
    horizons: list[float],
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    calibration_alpha: float = 0.1,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Survival metric table, Kaplan-Meier curves of the risk groups, and a record."""
    data = _survival_rows(test)
    time = data["survival_days"].to_numpy(float)
    event = data["event"].to_numpy(int)
    scales = _fold_survival_scale(data, val, calibration_alpha)
    folds = data["fold"].astype(int).to_numpy()
    mean = np.array([scales[f]["mean"] for f in folds])
    sd = np.array([scales[f]["sd"] for f in folds])
    risk = (data["risk"].to_numpy(float) - mean) / sd
    reference = sv.surv(time, event)
    inside = sv.usable_horizons(time, horizons)
    tau = max(inside) if inside else None
    grid = sv.brier_grid(time)
    curves = None
    if all(scales[f]["calibration"] is not None for f in scales):
        curves = np.vstack(
            [
                sv.survival_curves(scales[f]["calibration"], risk[i : i + 1], grid)
                for i, f in enumerate(folds)
            ]
        )

    def statistic(index: np.ndarray) -> dict[str, float]:
        return sv.survival_metrics(
            time[index], event[index], risk[index], horizons=horizons, reference=reference,
            survival_probabilities=None if curves is None else curves[index], grid=grid, tau=tau,
        )  # fmt: skip

    point = statistic(np.arange(len(data)))
    intervals = bootstrap_ci(statistic, event, n_resamples=n_bootstrap, seed=seed, ci=ci)
    cut = np.array([scales[f]["median"] for f in folds])
    groups = sv.risk_groups(data["risk"].to_numpy(float), cut)
    chi2, p = sv.logrank(time, event, groups)
    extra = {
        "logrank_chi2": chi2,
        "logrank_p": p,
        "n_high_risk": float((groups == "high").sum()),
        "n_low_risk": float((groups == "low").sum()),
    }
    table = metrics_table(
        {"n": float(len(data)), "n_events": float(event.sum()), **point, **extra}, intervals
    )
    km = sv.kaplan_meier_curves(time, event, groups)
    info = {
        "n": len(data),
        "n_events": int(event.sum()),
        "horizons_days": horizons,
        "horizons_within_follow_up": inside,
        "uno_tau_days": tau,
        "brier_grid_days": [float(grid.min()), float(grid.max()), len(grid)],
        "risk_scale_per_fold": {str(f): s["source"] for f, s in scales.items()},
        "risk_groups": "high when risk > the median risk of the fold's validation patients",
        "censoring_reference": "the pooled test patients (Uno's C, time-dependent AUC, Brier)",
        "ibs": "computed" if curves is not None else "not computed: a fold lacks validation events",
    }
    return table, km, info


def positive_scores(test: pd.DataFrame, classes: list[str], class_index: int) -> pd.DataFrame:
    """``patient_id``, 0/1 truth and score of one class (the positive one for two classes)."""
    y = class_indices(test["label"], classes)
    keep = y >= 0
    return pd.DataFrame(
        {
            "patient_id": test["patient_id"].to_numpy()[keep],
            "y": (y[keep] == class_index).astype(int),
            "score": test[f"prob_{classes[class_index]}"].to_numpy(float)[keep],
        }
    )


def delong_against_best(scores: dict[str, pd.DataFrame]) -> tuple[str, dict[str, dict]]:
    """DeLong test of each model's AUC against the highest-AUC model, on shared patients.

    ``scores`` maps a model to ``positive_scores`` output. Returns the best model and, per
    other model, ``{"p", "z", "n_shared"}``.
    """
    aucs = {model: auroc(frame["y"], frame["score"]) for model, frame in scores.items()}
    aucs = {m: a for m, a in aucs.items() if np.isfinite(a)}
    if not aucs:
        return "", {}
    best = max(aucs, key=aucs.get)
    results = {}
    for model in aucs:
        if model == best:
            continue
        shared = scores[best].merge(scores[model], on="patient_id", suffixes=("_best", ""))
        shared = shared[shared["y_best"] == shared["y"]]
        if shared["y"].nunique() < 2:
            continue
        test = delong_test(shared["y"].to_numpy(), shared["score_best"], shared["score"])
        results[model] = {"p": test["p"], "z": test["z"], "n_shared": len(shared)}
    return best, results
