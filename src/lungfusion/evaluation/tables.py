"""Prediction files in, metric tables out.

A model's predictions are ``predictions.tsv`` files (held-out test patients) with a sibling
``val_predictions.tsv`` (the fold's validation patients), either one per fold
(``train/{model}/fold{k}/predictions.tsv``) or one for all folds with a ``fold`` column
(``integrate/{name}/predictions.tsv``). The model's name is the folder above ``fold{k}``, or
the folder holding the file; ``NAME=PATH`` names it explicitly.

Metric tables have the columns ``metric, value, ci_low, ci_high, p_delong_vs_best``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lungfusion.artifacts import atomic_path

FOLD_DIR = re.compile(r"^fold(\d+)$")
TABLE_COLUMNS = ["metric", "value", "ci_low", "ci_high", "p_delong_vs_best"]


def model_name(path: Path) -> str:
    """``train/ct/fold0/predictions.tsv`` -> ``ct``; ``integrate/late_cox/predictions.tsv`` -> ``late_cox``."""
    parent = path.parent
    return parent.parent.name if FOLD_DIR.match(parent.name) else parent.name


def discover_predictions(arguments: list[str]) -> dict[str, list[Path]]:
    """Map each model to its ``predictions.tsv`` files, from files, folders or NAME=PATH."""
    found: dict[str, list[Path]] = {}
    for argument in arguments:
        name, _, location = argument.rpartition("=") if "=" in argument else ("", "", argument)
        path = Path(location)
        if path.is_dir():
            files = sorted(path.rglob("predictions.tsv"))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no predictions at {path}")
        if not files:
            raise FileNotFoundError(f"no predictions.tsv under {path}")
        for file in files:
            found.setdefault(name or model_name(file), []).append(file)
    return {model: sorted(set(files)) for model, files in found.items()}


def _read_one(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={"patient_id": str, "label": str})
    if "fold" not in table.columns:
        match = FOLD_DIR.match(path.parent.name)
        if match is None:
            raise ValueError(f"{path} has no fold column and is not in a fold<k> folder")
        table["fold"] = int(match.group(1))
    return table


def read_predictions(files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Test predictions of all folds, and the validation predictions where they exist."""
    test = pd.concat([_read_one(f) for f in files], ignore_index=True)
    if test.duplicated(["patient_id", "fold"]).any():
        raise ValueError(f"a patient appears twice in one fold of {[str(f) for f in files]}")
    val_files = [f.with_name("val_predictions.tsv") for f in files]
    val_files = [f for f in val_files if f.exists()]
    val = pd.concat([_read_one(f) for f in val_files], ignore_index=True) if val_files else None
    return test, val


def metrics_table(
    point: dict[str, float], intervals: dict[str, dict[str, float]] | None = None
) -> pd.DataFrame:
    """One row per metric: value and its interval (NaN where none was computed)."""
    intervals = intervals or {}
    rows = [
        {
            "metric": name,
            "value": value,
            "ci_low": intervals.get(name, {}).get("ci_low", float("nan")),
            "ci_high": intervals.get(name, {}).get("ci_high", float("nan")),
            "p_delong_vs_best": float("nan"),
        }
        for name, value in point.items()
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def combined_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All models' tables stacked, with a leading ``model`` column."""
    frames = [table.assign(model=model) for model, table in tables.items()]
    combined = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)
    )
    return combined[["model", *TABLE_COLUMNS]]


def write_tsv(table: pd.DataFrame, path: str | Path) -> None:
    """Atomically write a TSV with 6 significant digits and empty cells for NaN."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="")


def excluded_patients(cohort_path: str | Path) -> pd.DataFrame:
    """The cohort table's excluded patients: ``patient_id``, ``label``, ``excluded_at`` (the
    first stage that failed, or the sample sheet) and ``reason``."""
    cohort = pd.read_csv(cohort_path, sep="\t", dtype=str, keep_default_na=False)
    columns = ["patient_id", "label", "excluded_at", "reason"]
    excluded = cohort[cohort["included"].str.lower().isin(["no", "false", "0"])]
    return excluded.reindex(columns=columns, fill_value="").reset_index(drop=True)
