"""Seed 000's fusion-depth grid: the multi-stage network at every (L stages, N blocks) cell.

Seed 000 searched L (stages, each followed by a fusion block) and N (residual blocks per stage)
in 1..5 by hand. ``train.multistage.grid: {stages: [...], blocks: [...]}`` trains each cell as
a model of its own, ``multistage_L{L}_N{N}``, on the same folds as every other model, so the
metrics table scores each cell and the report draws the grid. A cell with L stages takes the
first L of ``train.widths``, each further stage doubling the last width. Torch-free: the
Snakefile reads the names.

>>> grid_names({"stages": [1, 3], "blocks": [2]})
['multistage_L1_N2', 'multistage_L3_N2']
>>> parse_grid_name("multistage_L3_N2"), parse_grid_name("multistage")
((3, 2), None)
>>> grid_widths([16, 32, 64], 5)
[16, 32, 64, 128, 256]
"""

from __future__ import annotations

import re

GRID_NAME = re.compile(r"^multistage_L(\d+)_N(\d+)$")


def grid_names(grid: dict | None) -> list[str]:
    """The model names of the grid's cells (none without a grid)."""
    if not grid:
        return []
    return [f"multistage_L{s}_N{b}" for s in grid["stages"] for b in grid["blocks"]]


def parse_grid_name(name: str) -> tuple[int, int] | None:
    """(L, N) of a grid cell's name; None for any other model."""
    match = GRID_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def grid_widths(widths: list[int], stages: int) -> list[int]:
    """Channels of ``stages`` stages: ``widths`` cut or extended by doubling its last."""
    widths = list(widths)
    while len(widths) < stages:
        widths.append(2 * widths[-1])
    return widths[:stages]
