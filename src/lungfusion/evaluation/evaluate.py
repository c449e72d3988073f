"""Metric tables with bootstrap intervals for every model.

Writes ``{out}/{model}.tsv`` (metric, value, ci_low, ci_high, p_delong_vs_best), ``all.tsv``
(the same with a model column), ``exclusions.tsv`` (with ``--cohort``: each patient left out,
the first stage that failed and its message), for survival ``{model}_km.tsv`` (Kaplan-Meier curves of the
risk groups), and last ``summary.json`` (settings, thresholds, DeLong results, notes).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lungfusion.artifacts import software_versions, write_json_atomic
from lungfusion.config import section_settings
from lungfusion.evaluation import scoring
from lungfusion.evaluation.tables import (
    combined_table,
    discover_predictions,
    excluded_patients,
    read_predictions,
    write_tsv,
)

log = logging.getLogger(__name__)


def evaluate_settings(config: dict) -> dict:
    settings = section_settings(config, "evaluate")
    settings["threshold"] = scoring.check_threshold(settings["threshold"])
    return settings


def _with_delong(tables: dict, predictions: dict, classes: list[str]) -> dict:
    """Fill p_delong_vs_best on the AUROC rows; returns the record for the summary."""
    record = {}
    class_indices = [1] if len(classes) == 2 else list(range(len(classes)))
    for index in class_indices:
        metric = "auroc" if len(classes) == 2 else f"auroc_{classes[index]}"
        scores = {
            m: scoring.positive_scores(t, classes, index) for m, (t, _) in predictions.items()
        }
        best, results = scoring.delong_against_best(scores)
        record[metric] = {"best": best, "tests": results}
        for model, result in results.items():
            table = tables[model]
            table.loc[table["metric"] == metric, "p_delong_vs_best"] = result["p"]
    return record


def evaluate_models(
    predictions_paths: list[str],
    out_dir: Path,
    *,
    task: str,
    classes: list[str],
    settings: dict,
    cohort: Path | None = None,
) -> dict:
    """Score every model's pooled out-of-fold predictions and write the tables under
    ``out_dir``, ``summary.json`` last; returns the summary."""
    found = discover_predictions(predictions_paths)
    predictions = {model: read_predictions(files) for model, files in found.items()}
    tables, infos = {}, {}
    for model, (test, val) in predictions.items():
        log.info("evaluating %s (%d test rows)", model, len(test))
        common = {"n_bootstrap": int(settings["n_bootstrap"]), "seed": int(settings["seed"])}
        common["ci"] = float(settings["ci"])
        if task == "classification":
            tables[model], infos[model] = scoring.evaluate_classification(
                test, val, classes=classes, threshold=settings["threshold"], **common
            )
        else:
            tables[model], km, infos[model] = scoring.evaluate_survival(
                test, val, horizons=[float(h) for h in settings["horizons_days"]],
                calibration_alpha=float(settings["calibration_alpha"]), **common,
            )  # fmt: skip
            write_tsv(km, out_dir / f"{model}_km.tsv")
        infos[model]["files"] = [str(f) for f in found[model]]
    delong = _with_delong(tables, predictions, classes) if task == "classification" else {}
    for model, table in tables.items():
        write_tsv(table, out_dir / f"{model}.tsv")
    write_tsv(combined_table(tables), out_dir / "all.tsv")
    excluded = excluded_patients(cohort) if cohort is not None else None
    if excluded is not None:
        write_tsv(excluded, out_dir / "exclusions.tsv")
    summary = {
        "task": task,
        "classes": classes,
        "settings": settings,
        "confidence_intervals": f"{settings['ci']:.0%} percentile intervals of "
        f"{settings['n_bootstrap']} stratified bootstrap resamples (seed {settings['seed']})",
        "pooling": "test predictions of all outer folds pooled; each patient is tested once",
        "delong": delong
        or "not applicable (survival: compare C-indices by their bootstrap intervals)",
        "models": infos,
        "excluded": None if excluded is None else excluded.to_dict("records"),
        "software": software_versions(),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    best = {k: v["best"] for k, v in delong.items()} if delong else {}
    log.info("wrote %d model tables to %s; best AUROC: %s", len(tables), out_dir, best)
    return summary
