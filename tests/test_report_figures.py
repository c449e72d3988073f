"""The report's figures stay legible with every model of the main job (14 models and
integrators): at most a handful of curves per panel, and no two pieces of text on top of each
other (titles, axis labels, tick labels, legends), checked on the drawn figures' text extents."""

from __future__ import annotations

import itertools

import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from lungfusion.report import figures

CLASSES = ["ADC", "SQC"]
MODELS = [
    "ct", "pet", "early", "late", "single_stage", "multistage", "mmtm", "sfsa", "mmcaf",
    "radiomics", "semantic", "clinical", "clinical_net", "late_logistic",
]  # fmt: skip


def _predictions(classes=CLASSES, n=60) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(1)
    labels = np.array([classes[i % len(classes)] for i in range(n)])
    out = {}
    for k, model in enumerate(MODELS):
        logits = rng.normal(0, 1, (n, len(classes)))
        logits[np.arange(n), [classes.index(c) for c in labels]] += 0.1 * k
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        table = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": np.arange(n) % 3,
                              "label": labels})  # fmt: skip
        for j, c in enumerate(classes):
            table[f"prob_{c}"] = probs[:, j]
        out[model] = table
    return out


@pytest.fixture
def drawn(monkeypatch):
    """Figures as they are saved (a spy on save_figure), with the renderer that drew them."""
    kept = []
    save = figures.save_figure

    def spy(figure, path):
        figure.canvas.draw()
        kept.append((path.name, figure, figure.canvas.get_renderer(), _boxes(figure)))
        return save(figure, path)

    monkeypatch.setattr(figures, "save_figure", spy)
    return kept


def _boxes(figure):
    renderer = figure.canvas.get_renderer()
    boxes = []
    for text in figure.findobj(matplotlib.text.Text):
        if text.get_visible() and text.get_text().strip() and text.get_alpha() != 0:
            box = text.get_window_extent(renderer)
            if box.width > 0 and box.height > 0:
                boxes.append((text.get_text(), box.expanded(0.98, 0.9)))  # touching is fine
    return boxes


def _overlaps(boxes):
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.overlaps(box_b)]  # fmt: skip


@pytest.mark.parametrize("classes", [CLASSES, ["ADC", "SQC", "SCLC"]])
def test_every_figure_is_legible_with_fourteen_models(tmp_path, drawn, classes):
    predictions = _predictions(classes)
    cuts = {m: {0: 0.41, 1: 0.38, 2: 0.52} for m in MODELS}
    figures.roc_figure(predictions, classes, tmp_path / "roc.png")
    figures.pr_figure(predictions, classes, tmp_path / "pr.png")
    figures.calibration_figure(predictions, classes, tmp_path / "calibration.png")
    figures.confusion_figure(predictions, classes, tmp_path / "confusion.png", thresholds=cuts)
    assert [name for name, *_ in drawn] == ["roc.png", "pr.png", "calibration.png", "confusion.png"]
    for name, figure, _, boxes in drawn:
        assert boxes, name
        assert _overlaps(boxes) == [], name
        for axis in figure.axes:
            legend = axis.get_legend()
            if legend is not None:  # at most MAX_CURVES models (+ a reference line) per panel
                assert len(legend.get_texts()) <= figures.MAX_CURVES + 1, name
    # every model is drawn somewhere: small multiples for two classes, the best per class else
    roc = drawn[0][1]
    labels = [t.get_text().split(" (")[0] for a in roc.axes if a.get_legend()
              for t in a.get_legend().get_texts()]  # fmt: skip
    if len(classes) == 2:
        assert sorted(labels) == sorted(MODELS) and len(roc.axes) == 3
    else:
        assert len(labels) == figures.MAX_CURVES * len(classes)
    confusion = drawn[3][1]
    assert sum(1 for a in confusion.axes if a.get_title()) == len(MODELS)


def test_the_overlap_check_catches_colliding_text(tmp_path):
    """The check above is not vacuous: a title pushed onto the x label is caught."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.set_xlabel("predicted")
    axis.set_title("model", y=-0.12)
    figure.canvas.draw()
    assert _overlaps(_boxes(figure))
    plt.close(figure)


def test_curves_are_ranked_by_auroc(tmp_path, drawn):
    predictions = _predictions()
    figures.roc_figure(predictions, CLASSES, tmp_path / "roc.png")
    first_panel = drawn[0][1].axes[0]
    aurocs = [float(t.get_text().split("AUC ")[1].rstrip(")"))
              for t in first_panel.get_legend().get_texts()]  # fmt: skip
    assert aurocs == sorted(aurocs, reverse=True)
    assert "AUROC ranks 1-5" in first_panel.get_title()
