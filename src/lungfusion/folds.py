"""The folds table (``folds.tsv`` of ``lungfusion splits``): reading it and one fold's roles.

Torch-free, so the training engine, the table models and the late-fusion integrator all read
the folds through the same two functions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FOLD_COLUMNS = ["patient_id", "label", "fold", "role", "has_ct", "has_pet"]
ROLES = ("train", "val", "test")


def fold_patients(folds: pd.DataFrame, fold: int) -> dict[str, pd.DataFrame]:
    """The rows of one fold, by role."""
    part = folds[folds.fold == fold]
    if part.empty:
        raise ValueError(
            f"fold {fold} not in the folds table (folds: {sorted(folds.fold.unique())})"
        )
    return {role: part[part.role == role].reset_index(drop=True) for role in ROLES}


def read_folds(path: str | Path) -> pd.DataFrame:
    """``folds.tsv``, with patient IDs and labels as text, checked for every fold column."""
    folds = pd.read_csv(path, sep="\t", dtype={"patient_id": str, "label": str})
    missing = set(FOLD_COLUMNS) - set(folds.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    return folds
