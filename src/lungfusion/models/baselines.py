"""Unimodal, early-fusion and late-fusion baselines (seed 000's comparisons)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import STACKED, encoder_module, make_branch
from .registry import register_model
from .resnet import PooledHead, image, reject_tabular, tabular


class UnimodalNet(nn.Module):
    """A 3D ResNet on one or more stacked image modalities, global pooling, linear head.

    With one modality this is the ``ct`` or ``pet`` baseline; with ``("ct", "pet")`` the two
    volumes are stacked as input channels, i.e. early (input-level) fusion.
    """

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        n_classes: int,
        widths: Sequence[int],
        blocks_per_stage: int,
        n_tabular: int = 0,
        dropout: float = 0.0,
        name: str = "unimodal",
        encoder: dict | None = None,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.name = name
        self.branch = make_branch(
            in_channels=len(self.modalities),
            widths=widths,
            blocks_per_stage=blocks_per_stage,
            encoder=encoder,
        )
        self.head = PooledHead(
            [self.branch.out_channels], n_classes=n_classes, n_tabular=n_tabular, dropout=dropout
        )

    def encoders(self) -> dict[str, nn.Module]:
        """The image encoder by the modality it reads (``ct+pet``: both, stacked)."""
        key = self.modalities[0] if len(self.modalities) == 1 else STACKED
        return {key: encoder_module(self.branch)}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        volumes = [image(batch, key, self.name) for key in self.modalities]
        x = volumes[0] if len(volumes) == 1 else torch.cat(volumes, dim=1)
        return self.head([self.branch(x)], tabular(batch))


class LateFusionNet(nn.Module):
    """Decision-level fusion: a CT network and a PET network whose class probabilities are averaged.

    The two networks (each a 3D ResNet with its own linear head) are trained jointly inside this
    one module, with a single loss on the averaged prediction; they are not the separately trained
    ``ct`` and ``pet`` models. The output is ``log(mean(softmax_ct, softmax_pet))`` so that
    ``cross_entropy(output, y)`` is the negative log of the averaged probability and
    ``softmax(output)`` is the averaged probability itself. For survival (``n_classes == 1``) the
    two risks are averaged. Where ``batch["has_pet"]`` is False the CT prediction alone is used.
    """

    def __init__(
        self,
        *,
        n_classes: int,
        widths: Sequence[int],
        blocks_per_stage: int,
        dropout: float = 0.0,
        encoder: dict | None = None,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        branch = {"widths": widths, "blocks_per_stage": blocks_per_stage, "encoder": encoder}
        self.ct_branch = make_branch(in_channels=1, **branch)
        self.pet_branch = make_branch(in_channels=1, **branch)
        channels = [self.ct_branch.out_channels]
        self.ct_head = PooledHead(channels, n_classes=n_classes, dropout=dropout)
        self.pet_head = PooledHead(channels, n_classes=n_classes, dropout=dropout)

    def encoders(self) -> dict[str, nn.Module]:
        return {"ct": encoder_module(self.ct_branch), "pet": encoder_module(self.pet_branch)}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ct_out = self.ct_head([self.ct_branch(image(batch, "ct", "late"))])
        pet_out = self.pet_head([self.pet_branch(image(batch, "pet", "late"))])
        if self.n_classes == 1:
            fused, ct_only = (ct_out + pet_out) / 2, ct_out
        else:
            log_probs = torch.stack([F.log_softmax(ct_out, 1), F.log_softmax(pet_out, 1)])
            fused = torch.logsumexp(log_probs, dim=0) - math.log(2.0)
            ct_only = log_probs[0]
        has_pet = batch.get("has_pet")
        if has_pet is None:
            return fused
        has_pet = torch.as_tensor(has_pet, dtype=torch.bool, device=fused.device).view(-1, 1)
        return torch.where(has_pet, fused, ct_only.to(fused.dtype))


@register_model("ct", modalities=["ct"])
def build_ct(
    *, n_classes, in_shape, widths, blocks_per_stage, n_tabular, dropout: float = 0.0, encoder=None
):
    """Unimodal CT 3D ResNet."""
    return UnimodalNet(
        modalities=("ct",),
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        n_tabular=n_tabular,
        dropout=dropout,
        encoder=encoder,
        name="ct",
    )


@register_model("pet", modalities=["pet"])
def build_pet(
    *, n_classes, in_shape, widths, blocks_per_stage, n_tabular, dropout: float = 0.0, encoder=None
):
    """Unimodal PET 3D ResNet."""
    return UnimodalNet(
        modalities=("pet",),
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        n_tabular=n_tabular,
        dropout=dropout,
        encoder=encoder,
        name="pet",
    )


@register_model("early", modalities=["ct", "pet"])
def build_early(
    *, n_classes, in_shape, widths, blocks_per_stage, n_tabular, dropout: float = 0.0, encoder=None
):
    """Early fusion: CT and PET as the two input channels of one 3D ResNet."""
    return UnimodalNet(
        modalities=("ct", "pet"),
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        n_tabular=n_tabular,
        dropout=dropout,
        encoder=encoder,
        name="early",
    )


@register_model("late", modalities=["ct", "pet"])
def build_late(
    *, n_classes, in_shape, widths, blocks_per_stage, n_tabular, dropout: float = 0.0, encoder=None
):
    """Late (decision-level) fusion, CT and PET networks trained jointly; see LateFusionNet."""
    reject_tabular(n_tabular, "late")
    return LateFusionNet(
        n_classes=n_classes,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        dropout=dropout,
        encoder=encoder,
    )
