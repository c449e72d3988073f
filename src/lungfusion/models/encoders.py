"""Image encoders that can start from pretrained weights: a MONAI 3D ResNet trunk per modality.

``train.encoder: native`` keeps each network's own branch (:class:`ResNetBranch`, or MMTM's
ResNet-18 streams). ``resnet10 | resnet18 | resnet34 | resnet50`` gives every image network the
same trunk, MONAI's :class:`~monai.networks.nets.resnet.ResNet` without its classifier, whose
state-dict keys (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) are the layout MedicalNet and
FMCIB publish. The pretrain stage trains this trunk, and ``train.init`` decides what it starts
from (:mod:`lungfusion.training.init`).

An :class:`EncoderSpec` is plain data: it travels in a checkpoint's build arguments (as a dict),
so ``lungfusion predict`` rebuilds the same trunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet
from torch import nn

# depth -> (block, layers), as in MONAI's resnet10 ... resnet50 and MedicalNet
ENCODER_ARCHS = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
STACKED = "ct+pet"  # the encoder of a network that reads CT and PET as two input channels


@dataclass(frozen=True)
class EncoderSpec:
    """One trunk's architecture and the input it expects.

    ``widths`` are MONAI's ``block_inplanes`` (before ``widen_factor`` and the bottleneck's
    expansion of 4). ``input_spacing_mm`` / ``input_size`` (z, y, x), when set, make the branch
    resample the ROI from ``roi_spacing_mm`` to the encoder's spacing and centre-crop or pad it to
    its size before the first convolution (an encoder pretrained at 1 mm sees 1 mm voxels).
    """

    arch: str
    widths: tuple[int, ...] = (64, 128, 256, 512)
    widen_factor: float = 1.0
    shortcut_type: str = "B"
    bias_downsample: bool = False
    conv1_t_stride: int = 1
    input_spacing_mm: tuple[float, float, float] | None = None
    input_size: tuple[int, int, int] | None = None
    roi_spacing_mm: tuple[float, float, float] | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.arch not in ENCODER_ARCHS:
            raise ValueError(
                f"encoder arch must be one of {sorted(ENCODER_ARCHS)}, got {self.arch!r}"
            )
        if len(self.widths) != 4:
            raise ValueError(f"a ResNet trunk has 4 stage widths, got {self.widths!r}")
        if self.shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be A or B, got {self.shortcut_type!r}")
        for name in ("widths", "input_spacing_mm", "input_size", "roi_spacing_mm", "notes"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def block(self) -> str:
        return ENCODER_ARCHS[self.arch][0]

    @property
    def layers(self) -> tuple[int, ...]:
        return ENCODER_ARCHS[self.arch][1]

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels out of each of the four stages."""
        expansion = 4 if self.block == "bottleneck" else 1
        return tuple(int(w * self.widen_factor) * expansion for w in self.widths)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_value(cls, value: EncoderSpec | dict | None) -> EncoderSpec | None:
        if value is None or isinstance(value, EncoderSpec):
            return value
        return cls(**value)


def scaled_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Four stage widths from the project's ``train.widths``, continued by doubling
    (16-32-64 -> 16-32-64-128): a trunk scaled to the networks trained from scratch."""
    widths = list(widths)[:4]
    while len(widths) < 4:
        widths.append(2 * widths[-1])
    return tuple(widths)


def build_trunk(spec: EncoderSpec, *, in_channels: int = 1) -> ResNet:
    """MONAI's 3D ResNet for ``spec`` without its classifier (``feed_forward=False``)."""
    return ResNet(
        block=spec.block,
        layers=list(spec.layers),
        block_inplanes=list(spec.widths),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=spec.conv1_t_stride,
        shortcut_type=spec.shortcut_type,
        widen_factor=spec.widen_factor,
        feed_forward=False,
        bias_downsample=spec.bias_downsample,
    )


class InputAdapter(nn.Module):
    """Resample a (B, C, z, y, x) ROI to the encoder's voxel spacing, then centre-crop or
    zero-pad it to the encoder's input size; either step is skipped where the spec is silent."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.scale = None
        if spec.input_spacing_mm is not None:
            if spec.roi_spacing_mm is None:
                raise ValueError("an encoder with an input spacing needs the ROI's spacing")
            self.scale = tuple(
                r / e for r, e in zip(spec.roi_spacing_mm, spec.input_spacing_mm, strict=True)
            )
        self.size = spec.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            size = [max(1, round(n * s)) for n, s in zip(x.shape[2:], self.scale, strict=True)]
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        if self.size is not None:
            x = centre_crop_or_pad(x, self.size)
        return x


def centre_crop_or_pad(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` of the last three axes, padded with zeros where ``x`` is smaller."""
    pads, slices = [], [slice(None), slice(None)]
    for n, target in zip(x.shape[2:], size, strict=True):
        start = max(0, (n - target) // 2)
        slices.append(slice(start, start + min(n, target)))
        short = max(0, target - n)
        pads.append((short // 2, short - short // 2))
    x = x[tuple(slices)]
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
    return F.pad(x, flat) if any(flat) else x


class TrunkBranch(nn.Module):
    """A ResNet trunk behind the same interface as :class:`ResNetBranch` (``stem``, ``stages``,
    ``out_channels``, ``widths``), so every fusion network can use one."""

    def __init__(self, spec: EncoderSpec, *, in_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.adapter = InputAdapter(spec)
        self.trunk = build_trunk(spec, in_channels=in_channels)
        self.widths = spec.stage_channels
        self.out_channels = self.widths[-1]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        x = trunk.act(trunk.bn1(trunk.conv1(self.adapter(x))))
        return x if trunk.no_max_pool else trunk.maxpool(x)

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self.trunk, name) for name in STAGE_NAMES]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


def make_branch(
    *,
    in_channels: int,
    widths: Sequence[int],
    blocks_per_stage: int,
    encoder: EncoderSpec | dict | None,
) -> nn.Module:
    """The network's branch: its own :class:`ResNetBranch`, or a :class:`TrunkBranch` when an
    encoder spec is given (``widths`` and ``blocks_per_stage`` are then the spec's)."""
    from .resnet import ResNetBranch

    spec = EncoderSpec.from_value(encoder)
    if spec is None:
        return ResNetBranch(
            in_channels=in_channels, widths=widths, blocks_per_stage=blocks_per_stage
        )
    return TrunkBranch(spec, in_channels=in_channels)


def encoder_module(branch: nn.Module) -> nn.Module:
    """The module whose state dict is the encoder's weights: the trunk, or the native branch."""
    return branch.trunk if isinstance(branch, TrunkBranch) else branch


def last_stage(encoder: nn.Module) -> nn.Module:
    """The encoder's last stage (the auxiliary heads read its output)."""
    if isinstance(encoder, TrunkBranch):
        return encoder.stages[-1]
    if isinstance(encoder, ResNet):
        return encoder.layer4
    return encoder.stages[-1]
