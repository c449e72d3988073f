"""Quality-control pictures: axial and coronal CT with PET overlaid, lung contour, ROI box.

Drawn with matplotlib's Agg backend (no display needed), through the object API so that no
global pyplot state leaks between patients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lungfusion.artifacts import atomic_path


def roi_qc_png(
    out_path: str | Path,
    *,
    ct: sitk.Image,
    pet: sitk.Image | None,
    lungs: sitk.Image | None,
    region: sitk.Image | None,
    box_first: list[float],
    box_last: list[float],
    title: str,
    ct_display: tuple[float, float] = (-1000.0, 400.0),
    suv_display: tuple[float, float] = (0.0, 10.0),
) -> None:
    """Write a two-panel PNG; ``box_first``/``box_last`` are CT continuous indices (x, y, z)."""
    hu = sitk.GetArrayViewFromImage(ct)
    suv = sitk.GetArrayViewFromImage(pet) if pet is not None else None
    centre = [(a + b) / 2.0 for a, b in zip(box_first, box_last, strict=True)]
    k = int(np.clip(round(centre[2]), 0, hu.shape[0] - 1))
    j = int(np.clip(round(centre[1]), 0, hu.shape[1] - 1))
    sx, sy, sz = ct.GetSpacing()
    superior_last = ct.GetDirection()[8] >= 0

    figure = Figure(figsize=(10, 5.2), dpi=90)
    FigureCanvasAgg(figure)
    axial, coronal = figure.subplots(1, 2)
    views = (
        (axial, lambda a: a[k], sy / sx, "axial", (0, 1)),
        (coronal, lambda a: a[:, j, :], sz / sx, "coronal", (0, 2)),
    )
    # box_axes: which index axes (x, y, z) run along the columns and rows of the view
    for axes, cut, aspect, name, (col, row) in views:
        origin = "lower" if name == "coronal" and superior_last else "upper"
        axes.imshow(cut(hu), cmap="gray", vmin=ct_display[0], vmax=ct_display[1],
                    aspect=aspect, origin=origin, interpolation="nearest")  # fmt: skip
        if suv is not None:
            overlay = np.ma.masked_less(np.asarray(cut(suv), dtype=float), 0.5 * suv_display[1] / 5)
            axes.imshow(overlay, cmap="hot", vmin=suv_display[0], vmax=suv_display[1], alpha=0.5,
                        aspect=aspect, origin=origin, interpolation="nearest")  # fmt: skip
        for mask, colour, style in ((lungs, "cyan", "solid"), (region, "lime", "dashed")):
            if mask is not None:
                plane = np.asarray(cut(sitk.GetArrayViewFromImage(mask)) > 0, dtype=float)
                if plane.any() and min(plane.shape) >= 2:
                    # pixel centres at integer coordinates, like imshow without an extent
                    axes.contour(plane, levels=[0.5], colors=colour, linewidths=0.8,
                                 linestyles=style)  # fmt: skip
        axes.add_patch(
            Rectangle(
                (box_first[col] - 0.5, box_first[row] - 0.5),
                box_last[col] - box_first[col] + 1,
                box_last[row] - box_first[row] + 1,
                fill=False, edgecolor="yellow", linewidth=1.2,
            )
        )  # fmt: skip
        axes.set_title(f"{name} ({'slice' if name == 'axial' else 'row'} "
                       f"{k if name == 'axial' else j})")  # fmt: skip
        axes.set_axis_off()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png")
