"""Intermediate CT/PET fusion: seed 000's multi-stage voxel-wise fusion and its single-stage baseline.

Seed 000 (Aksu et al. 2025, arXiv 2501.12425): two 3D ResNet branches of L stages with N
feature-extraction blocks each and 16-32-64 feature maps; after every stage a fusion block mixes
the branches voxel-wise; global pooling, concatenation and a linear layer classify. The authors
grid-searched L and N in 1..5 and kept L = 3 (the seed's summary gives L = 3, N = 3; the paper
text was not available here to confirm N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Norm
from torch import nn

from .encoders import encoder_module, make_branch
from .registry import register_model
from .resnet import SPATIAL_DIMS, PooledHead, image, tabular

# Seed 000's defaults: L stages (= len(widths)) of N residual blocks.
MULTISTAGE_WIDTHS = (16, 32, 64)
MULTISTAGE_BLOCKS_PER_STAGE = 3


class FusionBlock(nn.Module):
    """Seed 000's fusion block (its Eq. 1-2).

    Each modality is squeezed to one channel by a 1x1x1 convolution and batch norm; the two maps
    are multiplied voxel-wise and the product is added back to every channel of both branches:

        fused = BN(conv(ct)) * BN(conv(pet))
        ct_out = ct + fused,  pet_out = pet + fused

    Example:
        >>> block = FusionBlock(16)
        >>> ct, pet = block(torch.rand(2, 16, 4, 8, 8), torch.rand(2, 16, 4, 8, 8))
        >>> ct.shape
        torch.Size([2, 16, 4, 8, 8])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.squeeze_ct = self._squeeze(channels)
        self.squeeze_pet = self._squeeze(channels)

    @staticmethod
    def _squeeze(channels: int) -> Convolution:
        # No conv bias: the batch norm right after it has one.
        return Convolution(
            SPATIAL_DIMS, channels, 1, kernel_size=1, act=None, norm=Norm.BATCH, bias=False
        )

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.squeeze_ct(ct) * self.squeeze_pet(pet)
        return ct + fused, pet + fused


class TwoBranchNet(nn.Module):
    """CT and PET 3D ResNet branches run stage by stage, optionally fused after each stage.

    ``fuse=True`` is seed 000's multi-stage intermediate fusion (global pooling, one linear head on
    the concatenated features). ``fuse=False`` with ``grid > 1`` is the single-stage intermediate
    fusion baseline: the branches never meet until their final maps are pooled to a small grid,
    flattened and concatenated before the classifier.
    """

    def __init__(
        self,
        *,
        n_classes: int,
        widths: Sequence[int],
        blocks_per_stage: int,
        fuse: bool,
        n_tabular: int = 0,
        dropout: float = 0.0,
        grid: Sequence[int] = (1, 1, 1),
        name: str = "two_branch",
        encoder: dict | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        branch = {"widths": widths, "blocks_per_stage": blocks_per_stage, "encoder": encoder}
        self.ct_branch = make_branch(in_channels=1, **branch)
        self.pet_branch = make_branch(in_channels=1, **branch)
        channels_per_stage = self.ct_branch.widths
        self.fusion = nn.ModuleList([FusionBlock(w) for w in channels_per_stage]) if fuse else None
        channels = [self.ct_branch.out_channels, self.pet_branch.out_channels]
        self.head = PooledHead(
            channels, n_classes=n_classes, n_tabular=n_tabular, dropout=dropout, grid=grid
        )

    def encoders(self) -> dict[str, nn.Module]:
        return {"ct": encoder_module(self.ct_branch), "pet": encoder_module(self.pet_branch)}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ct = self.ct_branch.stem(image(batch, "ct", self.name))
        pet = self.pet_branch.stem(image(batch, "pet", self.name))
        for stage, (ct_stage, pet_stage) in enumerate(
            zip(self.ct_branch.stages, self.pet_branch.stages, strict=True)
        ):
            ct, pet = ct_stage(ct), pet_stage(pet)
            if self.fusion is not None:
                ct, pet = self.fusion[stage](ct, pet)
        return self.head([ct, pet], tabular(batch))


@register_model(
    "multistage", modalities=["ct", "pet"], default_blocks_per_stage=MULTISTAGE_BLOCKS_PER_STAGE
)
def build_multistage(
    *, n_classes, in_shape, widths, blocks_per_stage, n_tabular, dropout: float = 0.0, encoder=None
):
    """Seed 000's multi-stage intermediate fusion: a fusion block after each of the L stages."""
    return TwoBranchNet(
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        fuse=True,
        n_tabular=n_tabular,
        dropout=dropout,
        encoder=encoder,
        name="multistage",
    )


@register_model("single_stage", modalities=["ct", "pet"])
def build_single_stage(
    *,
    n_classes,
    in_shape,
    widths,
    blocks_per_stage,
    n_tabular,
    dropout: float = 0.0,
    flatten_grid: Sequence[int] = (2, 2, 2),
    encoder=None,
):
    """Single-stage intermediate fusion: final maps pooled to ``flatten_grid``, flattened, concatenated."""
    return TwoBranchNet(
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        fuse=False,
        n_tabular=n_tabular,
        dropout=dropout,
        grid=flatten_grid,
        encoder=encoder,
        name="single_stage",
    )
