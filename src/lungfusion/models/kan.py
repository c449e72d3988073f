"""Kolmogorov-Arnold network layers for the clinical table (the tabular encoder of seed 001).

No maintained, fast KAN package fits (``pykan`` is heavy and slow; the fast ``efficient-kan`` is
not packaged), so the layer is written here in the efficient-kan formulation: each edge
function is ``w_base * SiLU(x) + w_spline * sum_i c_i B_i(x)`` with B-splines of order 3 on a
uniform grid, evaluated for all edges at once as two matrix products.

Example:
    >>> layer = KANLinear(in_features=8, out_features=4)
    >>> layer(torch.zeros(2, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

TABULAR_ENCODERS = ("kan", "mlp")


def uniform_grid(
    *, grid_size: int, spline_order: int, grid_range: tuple[float, float]
) -> torch.Tensor:
    """Knots: ``grid_size`` intervals over ``grid_range``, extended by ``spline_order`` knots
    on each side so that every point of the range has a full set of order-k basis functions."""
    low, high = grid_range
    step = (high - low) / grid_size
    index = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32)
    return low + step * index


def b_spline_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """B-spline basis values (Cox-de Boor recursion).

    Args:
        x: (B, F) inputs.
        grid: (F, G + 2k + 1) knots per feature (or (G + 2k + 1,) shared).
        spline_order: k (3 = cubic).

    Returns:
        (B, F, G + k) basis values; inside the grid range they sum to one.
    """
    if grid.ndim == 1:
        grid = grid.expand(x.shape[1], -1)
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)])
        right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


class KANLinear(nn.Module):
    """One KAN layer: a learnable univariate function on every input-output edge.

    ``y_j = sum_i w_base[j, i] * SiLU(x_i) + sum_i w_spline[j, i] * spline_ji(x_i)`` where each
    spline is a combination of ``grid_size + spline_order`` B-splines on ``grid_range``. Outside
    the range only the SiLU branch acts, so inputs should be roughly standardised.
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] = (-3.0, 3.0),
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("grid_size", grid_size), ("spline_order", spline_order)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        low, high = (float(v) for v in grid_range)
        if not low < high:
            raise ValueError(f"grid_range must be (low, high) with low < high, got {grid_range!r}")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        grid = uniform_grid(grid_size=grid_size, spline_order=spline_order, grid_range=(low, high))
        self.register_buffer("grid", grid.expand(in_features, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order)
        )
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=5**0.5)
        nn.init.normal_(self.spline_weight, std=init_scale / (in_features**0.5))
        nn.init.ones_(self.spline_scaler)

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        return b_spline_basis(x, self.grid, self.spline_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"KANLinear expects (B, {self.in_features}), got {tuple(x.shape)}")
        base = F.linear(F.silu(x), self.base_weight)
        weight = self.spline_weight * self.spline_scaler.unsqueeze(-1)
        spline = F.linear(self.basis(x).flatten(1), weight.flatten(1))
        return base + spline


class KAN(nn.Module):
    """Stacked KAN layers, e.g. ``KAN(widths=(n_features, 32, 32))``."""

    def __init__(self, *, widths: Sequence[int], grid_size: int = 5, spline_order: int = 3):
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs an input and an output width, got {widths!r}")
        self.layers = nn.ModuleList(
            KANLinear(in_features=a, out_features=b, grid_size=grid_size, spline_order=spline_order)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def tabular_encoder(kind: str, *, n_features: int, hidden: int, out_features: int) -> nn.Module:
    """The clinical-table encoder: a two-layer KAN (seed 001) or a two-layer MLP."""
    if kind not in TABULAR_ENCODERS:
        raise ValueError(f"tabular_encoder must be one of {list(TABULAR_ENCODERS)}, got {kind!r}")
    if n_features < 1:
        raise ValueError("the tabular encoder needs clinical features (n_tabular >= 1)")
    if kind == "kan":
        return KAN(widths=(n_features, hidden, out_features))
    return nn.Sequential(
        nn.Linear(n_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features), nn.SiLU()
    )


def table(batch: Mapping[str, torch.Tensor], n_tabular: int, model_name: str) -> torch.Tensor:
    """``batch['tab']`` checked to be (B, n_tabular)."""
    if "tab" not in batch:
        raise KeyError(f"model {model_name!r} needs batch['tab'] (the clinical features)")
    tab = batch["tab"]
    if tab.ndim != 2 or tab.shape[1] != n_tabular:
        raise ValueError(f"batch['tab'] must be (B, {n_tabular}), got {tuple(tab.shape)}")
    return tab.float()


class ClinicalNet(nn.Module):
    """The tabular encoder alone with a linear head: the clinical-only network baseline."""

    def __init__(
        self,
        *,
        n_tabular: int,
        n_classes: int,
        encoder: str = "kan",
        hidden: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.n_tabular = n_tabular
        self.encoder = tabular_encoder(
            encoder, n_features=n_tabular, hidden=hidden, out_features=hidden
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(table(batch, self.n_tabular, "clinical_net")))


@register_model("clinical_net", modalities=["tab"])
def build_clinical_net(
    *,
    n_classes,
    in_shape,
    widths,
    blocks_per_stage,
    n_tabular,
    tabular_encoder: str = "kan",
    hidden: int = 32,
    dropout: float = 0.0,
):
    """Clinical table only: KAN (or MLP) encoder and a linear head."""
    return ClinicalNet(
        n_tabular=n_tabular, n_classes=n_classes, encoder=tabular_encoder, hidden=hidden,
        dropout=dropout,
    )  # fmt: skip
