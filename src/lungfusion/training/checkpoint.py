"""A trained fold model back from its folder: the network and its calibration.

Used by everything that scores a trained network again (``predict``, the robustness sweep,
saliency), so each rebuilds it, and maps its probabilities, exactly as training did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def load_checkpoint(path: Path, *, device: str = "cpu"):
    """Rebuild a trained model from the training engine's ``model.pt``; returns (model, payload).

    The payload's ``model`` entry holds the registry name and the ``build`` arguments the
    training command used, so ``build_model(name, **build)`` rebuilds the same network.
    """
    import torch

    from lungfusion.models import build_model

    payload = torch.load(path, map_location=device, weights_only=False)
    meta = payload.get("model") or {}
    if "name" not in meta or "build" not in meta:
        raise ValueError(f"{path}: checkpoint lacks the model name and build arguments")
    model = build_model(meta["name"], **meta["build"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def calibrated(fold_dir: Path, classes: list[str], probs: np.ndarray) -> dict[str, float]:
    """The fold's calibration (``calibration.json``, written by the training engine) applied to
    one patient's probabilities, so they match the fold's ``predictions.tsv``."""
    from lungfusion.training.calibration import apply_calibration
    from lungfusion.training.engine import CALIBRATION_FILE

    table = pd.DataFrame([{f"prob_{c}": float(p) for c, p in zip(classes, probs, strict=True)}])
    path = fold_dir / CALIBRATION_FILE
    if path.is_file():
        table = apply_calibration(table, json.loads(path.read_text()), tuple(classes))
    return {c: float(table[f"prob_{c}"].iloc[0]) for c in classes}
