"""Label-free auxiliary targets: regression heads that predict lesion descriptors from the pooled
features of the network's encoders, trained beside the task (multi-task learning).

The descriptors are the radiomics stage's table (computed from the images alone, no label),
standardised on the fold's training patients. The head reads each encoder's last stage through
a forward hook, so it works for every network without changing its ``forward``, and lives
outside the model: ``model.pt`` and the prediction files stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from lungfusion.models.encoders import last_stage


class AuxHead(nn.Module):
    """A linear map from the encoders' globally pooled last-stage maps to ``n_targets`` values.

    ``loss(target)`` is the mean squared error over the targets that are known (NaN: unknown).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], n_targets: int) -> None:
        super().__init__()
        stages = [last_stage(encoder) for encoder in encoders.values()]
        channels = [_out_channels(stage) for stage in stages]
        self.fc = nn.Linear(sum(channels), n_targets)
        self.encoder_names = list(encoders)
        maps: list[torch.Tensor | None] = [None] * len(stages)
        self._maps = maps

        def capture(index: int):
            def hook(module, inputs, output):
                maps[index] = output

            return hook

        self._hooks = [stage.register_forward_hook(capture(i)) for i, stage in enumerate(stages)]

    def predict(self) -> torch.Tensor:
        """The targets predicted from the last forward pass of the model."""
        if any(m is None for m in self._maps):
            raise RuntimeError("AuxHead: run the model's forward before asking for its targets")
        pooled = torch.cat([m.float().mean(dim=(2, 3, 4)) for m in self._maps], dim=1)
        return self.fc(pooled)

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        return masked_mse(self.predict(), target)

    def remove(self) -> None:
        """Detach the hooks from the model (after training)."""
        for handle in self._hooks:
            handle.remove()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the known targets (NaN: unknown)."""
    target = target.to(prediction)
    known = torch.isfinite(target)
    error = (prediction - torch.nan_to_num(target)) ** 2 * known
    return error.sum() / known.sum().clamp(min=1)


def _out_channels(stage: nn.Module) -> int:
    """Channels a residual stage puts out: its last batch norm's width."""
    norms = [m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"cannot tell the output channels of {type(stage).__name__}")
    return norms[-1].num_features


def standardised_targets(
    features: pd.DataFrame, columns: list[str], train_ids: list[str]
) -> tuple[pd.DataFrame, dict]:
    """The ``columns`` of the radiomics table (indexed by patient), centred and scaled with the
    fold's training patients' mean and standard deviation; returns the table and the scaling."""
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise KeyError(
            f"train.aux_targets.features: {missing} not in the radiomics table; "
            f"available columns include {sorted(features.columns)[:8]}"
        )
    table = features[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    train = table.loc[table.index.intersection(train_ids)]
    mean, std = train.mean(), train.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
    scaled = (table - mean) / std
    return scaled, {"mean": mean.to_dict(), "std": std.to_dict()}


def attach_targets(records: list[dict], targets: pd.DataFrame) -> None:
    """Give each record its ``aux`` vector (NaN where the table has no value for the patient)."""
    n = targets.shape[1]
    for record in records:
        pid = record["patient_id"]
        values = targets.loc[pid].to_numpy(float) if pid in targets.index else np.full(n, np.nan)
        record["aux"] = values.astype(np.float32)
