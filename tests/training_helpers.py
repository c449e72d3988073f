"""Tiny ROI cohorts for the training, splits and SFSA tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SHAPE = (8, 16, 16)  # z, y, x


def write_cohort(
    root: Path, *, n: int = 16, without_pet: tuple[int, ...] = (), failed: tuple[int, ...] = ()
) -> tuple[Path, Path]:
    """ROI npz + json per patient and a sample sheet; SQC patients carry a bright central cube
    in CT and PET (a signal a tiny network learns in a few epochs)."""
    roi_dir = root / "roi"
    roi_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pid = f"P{i:03d}"
        label = "SQC" if i % 2 else "ADC"
        rows.append(
            {
                "patient_id": pid,
                "label": label,
                "age": 60 + i,
                "sex": "MF"[i % 2],
                "survival_days": 100 + 37 * i,
                "event": int(i % 3 != 0),
            }  # fmt: skip
        )
        if i in failed:
            record = {"status": "failed", "stage": "ingest", "error": {"message": "no CT series"}}
            (roi_dir / f"{pid}.json").write_text(json.dumps(record))
            continue
        ct = rng.uniform(0.0, 0.3, SHAPE).astype(np.float32)
        pet = rng.uniform(0.0, 0.1, SHAPE).astype(np.float32)
        if label == "SQC":
            ct[2:6, 5:11, 5:11] += 0.6
            pet[2:6, 5:11, 5:11] += 0.8
        has_pet = i not in without_pet
        if not has_pet:
            pet[:] = 0
        np.savez(
            roi_dir / f"{pid}.npz", ct=ct, pet=pet, lungs=np.ones(SHAPE, np.uint8),
            has_pet=np.bool_(has_pet), spacing=np.ones(3), origin=np.zeros(3),
        )  # fmt: skip
        (roi_dir / f"{pid}.json").write_text(json.dumps({"status": "ok", "has_pet": has_pet}))
    sheet = root / "clinical.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return roi_dir, sheet


PREDICTION_COLUMNS = ["patient_id", "fold", "label", "prob_ADC", "prob_SQC"]


def assert_prediction_columns(out_dir: Path) -> pd.DataFrame:
    """predictions.tsv of a network: the engine's columns, plus the uncalibrated probabilities
    when the fold was calibrated (platt, or shift where the tiny validation set ranks against
    the network; none only when it lacks a class)."""
    predictions = pd.read_csv(Path(out_dir) / "predictions.tsv", sep="\t")
    calibration = json.loads((Path(out_dir) / "calibration.json").read_text())
    raw = ["raw_prob_ADC", "raw_prob_SQC"] if calibration["method"] != "none" else []
    assert list(predictions.columns) == PREDICTION_COLUMNS + raw
    return predictions
