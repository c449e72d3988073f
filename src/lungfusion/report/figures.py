"""The report's figures, drawn with matplotlib (Agg backend, no display needed).

Every figure reads pooled out-of-fold test predictions (each patient tested once) and is
written atomically as PNG. Two classes: the curves are those of the positive class (the last
of ``cohort.classes``); more classes: one one-vs-rest panel per class.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from lungfusion.artifacts import atomic_path  # noqa: E402

DPI = 110
MAX_CURVES = 5  # curves per panel


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def one_vs_rest(
    table: pd.DataFrame, classes: list[str], index: int
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 truth and score of class ``index`` over rows with a known label."""
    labels = table["label"].astype(str)
    known = labels.isin(classes).to_numpy()
    y = (labels[known] == classes[index]).to_numpy(int)
    score = table.loc[known, f"prob_{classes[index]}"].to_numpy(float)
    finite = np.isfinite(score)
    return y[finite], score[finite]


def _model_order(predictions: dict[str, pd.DataFrame], classes: list[str], index: int) -> list[str]:
    """Models with both classes among their labels, best AUROC of class ``index`` first."""
    aurocs = {}
    for model, table in predictions.items():
        y, score = one_vs_rest(table, classes, index)
        if len(np.unique(y)) == 2:
            aurocs[model] = roc_auc_score(y, score)
    return sorted(aurocs, key=lambda m: -aurocs[m])


def _curve_panels(
    predictions: dict[str, pd.DataFrame], classes: list[str]
) -> list[tuple[int, list[str], str]]:
    """(class index, models, what the panel holds) of each panel of a curve figure.

    More than :data:`MAX_CURVES` curves on one plot cannot be told apart, so two classes give
    small multiples of the models ranked by AUROC; more classes give one panel per class with
    its best models (the metric table has them all).
    """
    if len(classes) == 2:
        order = _model_order(predictions, classes, 1)
        starts = range(0, len(order), MAX_CURVES)
        return [
            (1, order[s : s + MAX_CURVES],
             f"AUROC ranks {s + 1}-{min(s + MAX_CURVES, len(order))}" if len(order) > MAX_CURVES else "")
            for s in starts
        ] or [(1, [], "")]  # fmt: skip
    panels = []
    for index in range(len(classes)):
        order = _model_order(predictions, classes, index)
        note = f"best {MAX_CURVES} of {len(order)} by AUROC" if len(order) > MAX_CURVES else ""
        panels.append((index, order[:MAX_CURVES], note))
    return panels


def _axes(n: int, size: float = 4.6, columns: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    """A grid of ``n`` panels; constrained layout keeps titles, labels and ticks apart."""
    columns = min(n, columns)
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(size * columns, size * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for extra in flat[n:]:
        extra.axis("off")
    return figure, flat[:n]


def _title(classes: list[str], index: int, what: str, note: str = "") -> str:
    if len(classes) == 2:
        title = f"{what}: {classes[index]} vs {classes[0]}"
    else:
        title = f"{what}: {classes[index]} vs rest"
    return f"{title}\n{note}" if note else title


def roc_figure(predictions: dict[str, pd.DataFrame], classes: list[str], path: str | Path) -> Path:
    """ROC curves of every model, at most :data:`MAX_CURVES` per panel."""
    panels = _curve_panels(predictions, classes)
    figure, axes = _axes(len(panels), size=4.8)
    for axis, (index, models, note) in zip(axes, panels, strict=True):
        for model in models:
            y, score = one_vs_rest(predictions[model], classes, index)
            fpr, tpr, _ = roc_curve(y, score)
            axis.plot(fpr, tpr, lw=1.6, label=f"{model} (AUC {roc_auc_score(y, score):.3f})")
        axis.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
        axis.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        axis.set_title(_title(classes, index, "ROC", note), fontsize=10)
        axis.legend(loc="lower right", fontsize=8)
        axis.set_aspect("equal")
    return save_figure(figure, path)


def pr_figure(predictions: dict[str, pd.DataFrame], classes: list[str], path: str | Path) -> Path:
    """Precision-recall curves, with the prevalence as the chance line; panels as for ROC."""
    panels = _curve_panels(predictions, classes)
    figure, axes = _axes(len(panels), size=4.8)
    for axis, (index, models, note) in zip(axes, panels, strict=True):
        prevalence = None
        for model in models:
            y, score = one_vs_rest(predictions[model], classes, index)
            precision, recall, _ = precision_recall_curve(y, score)
            ap = average_precision_score(y, score)
            axis.step(recall, precision, where="post", lw=1.6, label=f"{model} (AP {ap:.3f})")
            prevalence = float(y.mean())
        if prevalence is not None:
            axis.axhline(prevalence, ls="--", c="0.6", lw=1, label=f"prevalence {prevalence:.2f}")
        axis.set(
            xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02)
        )
        axis.set_title(_title(classes, index, "Precision-recall", note), fontsize=10)
        axis.legend(loc="lower left", fontsize=8)
    return save_figure(figure, path)


def calibration_figure(
    predictions: dict[str, pd.DataFrame], classes: list[str], path: str | Path, *, n_bins: int = 10
) -> Path:
    """Reliability diagram: observed frequency against mean predicted probability per bin."""
    panels = _curve_panels(predictions, classes)
    figure, axes = _axes(len(panels), size=4.8)
    for axis, (index, models, note) in zip(axes, panels, strict=True):
        for model in models:
            y, score = one_vs_rest(predictions[model], classes, index)
            observed, predicted = calibration_curve(y, score, n_bins=n_bins, strategy="uniform")
            brier = float(np.mean((score - y) ** 2))
            axis.plot(
                predicted, observed, marker="o", ms=3, lw=1.4, label=f"{model} (Brier {brier:.3f})"
            )
        axis.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect")
        axis.set(xlabel=f"predicted P({classes[index]})", ylabel="observed frequency",
                 xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
        axis.set_title(_title(classes, index, f"Calibration ({n_bins} bins)", note), fontsize=10)
        axis.legend(loc="upper left", fontsize=8)
        axis.set_aspect("equal")
    return save_figure(figure, path)


def predicted_classes(
    table: pd.DataFrame, classes: list[str], cuts: dict[int, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class indices; two classes: positive when prob >= the fold's cut."""
    labels = table["label"].astype(str)
    known = labels.isin(classes).to_numpy()
    rows = table[known]
    truth = rows["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(int)
    probs = rows[[f"prob_{c}" for c in classes]].to_numpy(float)
    if len(classes) == 2:
        cut = rows["fold"].astype(int).map(lambda f: (cuts or {}).get(int(f), 0.5)).to_numpy(float)
        return truth, (probs[:, 1] >= cut).astype(int)
    return truth, probs.argmax(axis=1)


def confusion_figure(
    predictions: dict[str, pd.DataFrame],
    classes: list[str],
    path: str | Path,
    *,
    thresholds: dict[str, dict[int, float]] | None = None,
) -> Path:
    """One confusion matrix per model at the threshold the evaluation used."""
    thresholds = thresholds or {}
    models = list(predictions)
    figure, axes = _axes(max(len(models), 1), size=2.8, columns=4)
    for axis, model in zip(axes, models, strict=False):
        truth, predicted = predicted_classes(predictions[model], classes, thresholds.get(model))
        matrix = confusion_matrix(truth, predicted, labels=list(range(len(classes))))
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            dark = count > (matrix.min() + matrix.max()) / 2  # imshow spans min..max
            axis.text(
                j, i, str(count), ha="center", va="center", color="white" if dark else "black"
            )
        axis.set_xticks(range(len(classes)), classes)
        axis.set_yticks(range(len(classes)), classes)
        axis.set(xlabel="predicted", ylabel="true")
        cuts = sorted(set((thresholds.get(model) or {}).values()))
        note = "arg-max" if len(classes) > 2 else (
            "cut " + ("/".join(f"{c:.2f}" for c in cuts) if cuts else "0.50")
        )  # fmt: skip
        axis.set_title(f"{model}\n{note}", fontsize=9)
    return save_figure(figure, path)


def km_figure(
    curves: dict[str, pd.DataFrame], path: str | Path, *, logrank_p: dict[str, float] | None = None
) -> Path:
    """Kaplan-Meier curves of the high- and low-risk groups of each model."""
    logrank_p = logrank_p or {}
    models = list(curves)
    figure, axes = _axes(max(len(models), 1), size=4.0)
    colours = {"high": "tab:red", "low": "tab:blue"}
    for axis, model in zip(axes, models, strict=False):
        table = curves[model]
        for group, part in table.groupby("group", sort=True):
            n = int(part["n_at_start"].iloc[0]) if "n_at_start" in part else len(part)
            axis.step(part["time"], part["survival"], where="post", lw=1.6,
                      color=colours.get(str(group)), label=f"{group} risk (n={n})")  # fmt: skip
        p = logrank_p.get(model)
        suffix = f", log-rank p={p:.3g}" if p is not None and np.isfinite(p) else ""
        axis.set_title(f"{model}{suffix}", fontsize=9)
        axis.set(xlabel="days", ylabel="survival probability", ylim=(0, 1.02))
        axis.legend(loc="lower left", fontsize=8)
    return save_figure(figure, path)


def qc_gallery_figure(entries: list[dict], path: str | Path, *, columns: int = 4) -> Path | None:
    """A contact sheet of the per-patient ROI QC pictures (None when there are none)."""
    shown = [e for e in entries if e.get("png") is not None]
    if not shown:
        return None
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, entry in zip(axes.ravel(), shown, strict=False):
        axis.imshow(plt.imread(entry["png"]))
        axis.set_title(f"{entry['patient_id']} ({entry.get('status', '')})", fontsize=8)
    return save_figure(figure, path)


def thumbnail(path: str | Path, *, width: int = 360) -> bytes:
    """PNG bytes of ``path`` scaled to ``width`` pixels wide (never enlarged)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, max(1, round(image.height * width / image.width))))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


ROBUSTNESS_AXES = {
    "shift_mm": "PET shift (mm)",
    "rotation_deg": "PET rotation (degrees)",
    "drop_pet": "share of test patients without PET",
}


def robustness_figure(summary: pd.DataFrame, path: str | Path) -> Path:
    """AUROC (with its interval) against each perturbation's level, one panel per perturbation
    and one line per model."""
    perturbations = [p for p in ROBUSTNESS_AXES if p in set(summary["perturbation"])]
    figure, axes = _axes(len(perturbations))
    for ax, perturbation in zip(axes, perturbations, strict=True):
        part = summary[summary["perturbation"] == perturbation]
        for model, rows in part.groupby("model", sort=False):
            rows = rows.sort_values("level")
            line = ax.plot(rows["level"], rows["auroc"], marker="o", label=model)[0]
            ax.fill_between(
                rows["level"], rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.15
            )
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(ROBUSTNESS_AXES[perturbation])
        ax.set_ylabel("AUROC")
        ax.set_ylim(0.0, 1.0)
        ax.legend(fontsize="small")
    return save_figure(figure, path)


def grid_heatmap(aurocs: pd.DataFrame, chosen: tuple[int, int] | None, path: str | Path) -> Path:
    """AUROC over the fusion-depth grid (rows: stages L, columns: blocks N), each cell
    written in it, the cell chosen on validation outlined."""
    figure, ax = plt.subplots(figsize=(1.2 * len(aurocs.columns) + 2.5, 1.0 * len(aurocs) + 1.8),
                              layout="constrained")  # fmt: skip
    shown = ax.imshow(aurocs.to_numpy(float), cmap="viridis", vmin=0.5, vmax=1.0, origin="lower")
    ax.set_xticks(range(len(aurocs.columns)), [str(n) for n in aurocs.columns])
    ax.set_yticks(range(len(aurocs.index)), [str(n) for n in aurocs.index])
    ax.set_xlabel("residual blocks per stage (N)")
    ax.set_ylabel("stages, each with a fusion block (L)")
    for i, stages in enumerate(aurocs.index):
        for j, blocks in enumerate(aurocs.columns):
            value = aurocs.loc[stages, blocks]
            ax.text(j, i, "-" if pd.isna(value) else f"{value:.2f}", ha="center", va="center",
                    color="white" if pd.isna(value) or value < 0.75 else "black", fontsize=9)  # fmt: skip
            if chosen == (stages, blocks):
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5
                    )
                )
    figure.colorbar(shown, ax=ax, label="AUROC (pooled test)")
    ax.set_title("Fusion-depth grid (outlined: chosen on validation loss)", fontsize=10)
    return save_figure(figure, path)
