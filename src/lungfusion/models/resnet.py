"""3D ResNet branch, pooled classifier head and batch helpers shared by the CT/PET models.

A branch is a stem convolution followed by L stages; stage ``i`` has ``widths[i]`` channels and N
MONAI basic residual blocks (:class:`monai.networks.nets.resnet.ResNetBlock`), the first of which
halves the resolution. With the default ROI of 32 x 64 x 64 voxels and widths 16-32-64 the last
stage's maps are 4 x 8 x 8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

SPATIAL_DIMS = 3


def residual_stage(
    in_channels: int, out_channels: int, *, n_blocks: int, stride: int
) -> nn.Sequential:
    """N basic residual blocks; the first changes width and resolution (1x1x1 projection shortcut)."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = Convolution(
            SPATIAL_DIMS,
            in_channels,
            out_channels,
            strides=stride,
            kernel_size=1,
            act=None,
            norm=Norm.BATCH,
            bias=False,
        )
    blocks = [
        ResNetBlock(in_channels, out_channels, SPATIAL_DIMS, stride=stride, downsample=downsample)
    ]
    blocks += [ResNetBlock(out_channels, out_channels, SPATIAL_DIMS) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetBranch(nn.Module):
    """One modality's 3D ResNet feature extractor: stem, then L stages of N residual blocks.

    The stages are kept apart (``self.stages``) so fusion models can act between them.

    Example:
        >>> branch = ResNetBranch(in_channels=1, widths=(16, 32, 64), blocks_per_stage=1)
        >>> branch(torch.zeros(2, 1, 32, 64, 64)).shape
        torch.Size([2, 64, 4, 8, 8])
    """

    def __init__(self, *, in_channels: int, widths: Sequence[int], blocks_per_stage: int) -> None:
        super().__init__()
        widths = tuple(widths)
        self.stem = Convolution(
            SPATIAL_DIMS,
            in_channels,
            widths[0],
            kernel_size=3,
            act=Act.RELU,
            norm=Norm.BATCH,
            bias=False,
        )
        stages, previous = [], widths[0]
        for width in widths:
            stages.append(residual_stage(previous, width, n_blocks=blocks_per_stage, stride=2))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.widths = widths
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class PooledHead(nn.Module):
    """Pool each feature map to ``grid``, flatten, concatenate (with the clinical table), classify.

    ``grid=(1, 1, 1)`` is global average pooling; a larger grid keeps coarse spatial layout in the
    flattened vector (used by the single-stage fusion baseline).
    """

    def __init__(
        self,
        channels: Sequence[int],
        *,
        n_classes: int,
        n_tabular: int = 0,
        dropout: float = 0.0,
        grid: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        grid = tuple(grid)
        if len(grid) != SPATIAL_DIMS or any(g < 1 for g in grid):
            raise ValueError(f"grid must be three positive integers, got {grid!r}")
        self.grid = grid
        self.n_tabular = n_tabular
        cells = grid[0] * grid[1] * grid[2]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(sum(channels) * cells + n_tabular, n_classes)

    def forward(
        self, maps: Sequence[torch.Tensor], tab: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = [F.adaptive_avg_pool3d(m, self.grid).flatten(1) for m in maps]
        if self.n_tabular:
            if tab is None:
                raise KeyError(f"model built with n_tabular={self.n_tabular} needs batch['tab']")
            if tab.ndim != 2 or tab.shape[1] != self.n_tabular:
                raise ValueError(
                    f"batch['tab'] must be (B, {self.n_tabular}), got {tuple(tab.shape)}"
                )
            features.append(tab.to(features[0].dtype))
        return self.fc(self.dropout(torch.cat(features, dim=1)))


def image(batch: Mapping[str, torch.Tensor], key: str, model_name: str) -> torch.Tensor:
    """``batch[key]`` checked to be a (B, 1, D, H, W) volume, with a clear message if not."""
    if key not in batch:
        raise KeyError(f"model {model_name!r} needs batch[{key!r}], found keys {sorted(batch)}")
    volume = batch[key]
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ValueError(
            f"batch[{key!r}] must be (B, 1, D, H, W) for model {model_name!r}, "
            f"got {tuple(volume.shape)}"
        )
    return volume


def tabular(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The clinical table ``batch['tab']`` if present."""
    return batch.get("tab")


def reject_tabular(n_tabular: int, model_name: str) -> None:
    """Raise for models whose design has no place for the clinical table."""
    if n_tabular:
        raise ValueError(
            f"model {model_name!r} takes no clinical table (got n_tabular={n_tabular}); "
            "use a model with a pooled head (ct, pet, early, single_stage, multistage)"
        )
