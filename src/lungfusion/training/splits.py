"""Stratified, seeded cross-validation folds with an inner validation split.

``folds.tsv`` is long: one row per patient and fold, with ``role`` test (the fold's held-out
patients), val (model selection) or train. Every included patient is tested exactly once, and
each fold's validation patients are drawn from its training patients, never from its test set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from lungfusion.artifacts import atomic_path
from lungfusion.folds import FOLD_COLUMNS
from lungfusion.status import describe, failure_of

log = logging.getLogger(__name__)


def make_folds(
    patients: pd.DataFrame,
    *,
    n_folds: int = 5,
    validation_fraction: float = 0.2,
    seed: int = 7,
    stratify_column: str = "label",
) -> pd.DataFrame:
    """Assign every patient a role in each of ``n_folds`` folds.

    ``patients`` needs ``patient_id`` and ``stratify_column`` (the class label, or the event
    indicator for survival); ``label``, ``has_ct`` and ``has_pet`` are carried along if present.
    Where some patients lack a PET, the folds are stratified by class and PET together (when
    every such group has a patient per fold), so that no fold's validation or test split ends
    up without PET patients: the CT+PET networks leave out patients without one.

    >>> df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "label": ["A", "B"] * 5})
    >>> folds = make_folds(df, n_folds=2, validation_fraction=0.25, seed=0)
    >>> sorted(folds.query("role == 'test'").patient_id) == sorted(df.patient_id)
    True
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    for column in ("patient_id", stratify_column):
        if column not in patients.columns:
            raise ValueError(f"patients table lacks column {column!r}")
    if patients.patient_id.duplicated().any():
        duplicated = sorted(patients.patient_id[patients.patient_id.duplicated()].unique())
        raise ValueError(f"patient IDs appear more than once: {duplicated[:5]}")
    patients = patients.sort_values("patient_id").reset_index(drop=True)
    strata = patients[stratify_column].astype(str).to_numpy()
    _check_class_sizes(strata, n_folds)
    crossed = _with_pet_availability(strata, patients, n_folds)

    outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = []
    for fold, (train_index, test_index) in enumerate(outer.split(np.zeros(len(crossed)), crossed)):
        fit_index, val_index = _inner_split(
            train_index, [crossed, strata], validation_fraction, seed + fold
        )
        for role, index in (("train", fit_index), ("val", val_index), ("test", test_index)):
            part = patients.iloc[np.sort(index)].copy()
            part["fold"] = fold
            part["role"] = role
            rows.append(part)
    folds = pd.concat(rows, ignore_index=True)
    for column, default in (("label", ""), ("has_ct", True), ("has_pet", True)):
        if column not in folds.columns:
            folds[column] = default
    folds = folds.sort_values(["fold", "role", "patient_id"], kind="stable")
    return folds[FOLD_COLUMNS].reset_index(drop=True)


def _check_class_sizes(strata: np.ndarray, n_folds: int) -> None:
    values, counts = np.unique(strata, return_counts=True)
    if len(values) < 2:
        raise ValueError(f"need at least two classes to stratify, found only {list(values)}")
    too_small = {str(v): int(c) for v, c in zip(values, counts, strict=True) if c < n_folds}
    if too_small:
        raise ValueError(
            f"splits.n_folds={n_folds} but some classes have fewer patients than folds: "
            f"{too_small}; lower splits.n_folds or add patients"
        )


def _with_pet_availability(strata: np.ndarray, patients: pd.DataFrame, n_folds: int) -> np.ndarray:
    """The strata crossed with PET availability where some patients lack a PET and every
    crossed group can fill each fold; else the strata as they are."""
    if "has_pet" not in patients.columns or patients.has_pet.astype(bool).all():
        return strata
    crossed = np.char.add(
        strata.astype(str), np.where(patients.has_pet.astype(bool), "|pet", "|no_pet")
    )
    _, counts = np.unique(crossed, return_counts=True)
    return crossed if counts.min() >= n_folds else strata


def _stratifiable(strata: np.ndarray, n_val: int) -> bool:
    """sklearn needs two of each stratum and a validation set holding one of each."""
    _, counts = np.unique(strata, return_counts=True)
    return counts.min() >= 2 and n_val >= len(counts)


def _inner_split(
    train_index: np.ndarray, strata: list[np.ndarray], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training patients into fit and validation, stratified by the first of
    ``strata`` (finest first) that allows it, else at random."""
    n_val = max(1, int(round(fraction * len(train_index))))
    candidates = (s[train_index] for s in strata)
    stratify = next((s for s in candidates if _stratifiable(s, n_val)), None)
    fit_index, val_index = train_test_split(
        train_index, test_size=n_val, random_state=seed, stratify=stratify
    )
    return fit_index, val_index


def roi_status(roi_dir: str | Path, patient_id: str) -> dict:
    """What the ROI stage recorded for a patient: status, has_pet and, if not ok, the first
    stage that failed (``excluded_at``) and its message (``reason``)."""
    path = Path(roi_dir) / f"{patient_id}.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    failure = failure_of(record, stage="roi", path=path)
    if failure is None:
        return {"status": "ok", "has_pet": bool(record.get("has_pet", False))}
    return {
        "status": (record or {}).get("status", "missing"),
        "has_pet": False,
        "excluded_at": failure["stage"],
        "reason": describe(failure),
    }


def cohort_table(
    sheet: pd.DataFrame,
    roi_dir: str | Path,
    *,
    task: str = "classification",
    classes: list[str] | None = None,
) -> pd.DataFrame:
    """Every sheet patient with ``included`` yes/no and the reason when not.

    A patient is included when its ROI status is ok and it has a usable target: a label among
    ``classes`` (classification) or survival days and an event (survival).
    """
    rows = []
    for record in sheet.to_dict("records"):
        pid = str(record["patient_id"])
        status = roi_status(roi_dir, pid)
        label = record.get("label")
        reason, excluded_at = "", ""
        if status["status"] != "ok":
            reason, excluded_at = status["reason"], status["excluded_at"]
        elif task == "classification" and classes is not None and label not in classes:
            reason = f"label {label!r} not among cohort.classes {classes}"
        elif task == "survival" and (
            pd.isna(record.get("survival_days")) or pd.isna(record.get("event"))
        ):
            reason = "survival_days or event missing in the sample sheet"
        rows.append(
            {
                "patient_id": pid,
                "label": label,
                "included": "no" if reason else "yes",
                "excluded_at": excluded_at or ("sample sheet" if reason else ""),
                "reason": reason,
                "roi_status": status["status"],
                "has_ct": status["status"] == "ok",
                "has_pet": bool(status.get("has_pet", False)),
            }
        )
        if task == "survival":
            rows[-1]["event"] = record.get("event")
    return pd.DataFrame(rows)


def write_splits(
    sheet: pd.DataFrame,
    *,
    roi_dir: Path,
    out: Path,
    cohort_out: Path,
    task: str,
    classes: list[str],
    n_folds: int,
    validation_fraction: float,
    seed: int,
) -> pd.DataFrame:
    """The cohort table (``cohort_out``) and the folds over its included patients (``out``,
    written last); returns the folds."""
    table = cohort_table(sheet, roi_dir, task=task, classes=classes)
    included = table[table.included == "yes"]
    log.info("%d of %d sheet patients included", len(included), len(table))
    folds = make_folds(
        included,
        n_folds=n_folds,
        validation_fraction=validation_fraction,
        seed=seed,
        stratify_column="event" if task == "survival" else "label",
    )
    with atomic_path(cohort_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out) as tmp:  # the tracked output, written last
        folds.to_csv(tmp, sep="\t", index=False)
    return folds
