"""Two-stream 3D ResNet-18 with MMTM fusion modules at chosen block boundaries (seed 002).

MMTM is the Multimodal Transfer Module of Joze et al., CVPR 2020. Seed 002 (SFSA) places MMTM
modules at any subset of the four boundaries after ResNet-18's residual layers (positions 0-3) and
averages the two streams' logits. :func:`warm_start` copies a trained model's weights into one
with more MMTM modules, as SFSA does between candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from .encoders import EncoderSpec, InputAdapter
from .registry import register_model
from .resnet import image, reject_tabular

MMTM_POSITIONS = (0, 1, 2, 3)
RESNET18_LAYERS = (2, 2, 2, 2)
RESNET18_WIDTHS = (64, 128, 256, 512)
_LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")


class MMTM(nn.Module):
    """Multimodal Transfer Module (Joze et al. 2020) for two modalities A and B.

    Squeeze each modality by global average pooling, map the concatenation to a joint code of
    ``(C_A + C_B) // ratio`` units (linear + ReLU), then per modality a linear layer and the gate
    ``2 * sigmoid`` rescale that modality's channels:

        z = relu(W [mean(A), mean(B)] + b)
        A_out = A * 2 * sigmoid(W_A z + b_A),  B_out = B * 2 * sigmoid(W_B z + b_B)

    Example:
        >>> module = MMTM(16, 16)
        >>> a, b = module(torch.rand(2, 16, 4, 4, 4), torch.rand(2, 16, 4, 4, 4))
        >>> a.shape
        torch.Size([2, 16, 4, 4, 4])
    """

    def __init__(self, channels_a: int, channels_b: int, *, ratio: float = 4) -> None:
        super().__init__()
        if ratio <= 0:
            raise ValueError(f"MMTM compression ratio must be > 0, got {ratio!r}")
        joint = channels_a + channels_b
        hidden = max(1, int(joint / ratio))
        self.fc_squeeze = nn.Linear(joint, hidden)
        self.fc_a = nn.Linear(hidden, channels_a)
        self.fc_b = nn.Linear(hidden, channels_b)

    def gates(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel gates in (0, 2), shapes (B, C_A) and (B, C_B)."""
        squeezed = torch.cat([a.flatten(2).mean(-1), b.flatten(2).mean(-1)], dim=1)
        joint = torch.relu(self.fc_squeeze(squeezed))
        return 2 * torch.sigmoid(self.fc_a(joint)), 2 * torch.sigmoid(self.fc_b(joint))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate_a, gate_b = self.gates(a, b)
        spatial = (1,) * (a.ndim - 2)
        gate_a = gate_a.view(*gate_a.shape, *spatial).to(a.dtype)
        gate_b = gate_b.view(*gate_b.shape, *spatial).to(b.dtype)
        return a * gate_a, b * gate_b


class MMTMNet(nn.Module):
    """CT and PET streams, each MONAI's 3D ResNet (basic blocks), with MMTM modules in between.

    Position ``p`` (0-3) puts an MMTM after residual layer ``p + 1`` of both streams; an empty
    ``positions`` is the no-fusion baseline. Each stream has its own linear head; the output is the
    mean of the two streams' logits (risks for survival).
    """

    def __init__(
        self,
        *,
        n_classes: int,
        widths: Sequence[int] = RESNET18_WIDTHS,
        layers: Sequence[int] = RESNET18_LAYERS,
        positions: Sequence[int] = (),
        ratio: float = 4,
        conv1_stride: int = 1,
        dropout: float = 0.0,
        encoder: EncoderSpec | dict | None = None,
    ) -> None:
        super().__init__()
        self.positions = _check_positions(positions)
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError(f"MMTMNet needs 4 widths and 4 layer depths, got {widths}, {layers}")
        spec = EncoderSpec.from_value(encoder)
        if spec is None:  # seed 002's own streams
            spec_args = {"block": "basic", "layers": list(layers), "block_inplanes": list(widths)}
            spec_args["conv1_t_stride"] = conv1_stride
            channels = tuple(widths)
            self.adapter = nn.Identity()
        else:  # every stream a pretrained-layout trunk (models/encoders.py), with a head
            spec_args = {
                "block": spec.block, "layers": list(spec.layers),
                "block_inplanes": list(spec.widths), "conv1_t_stride": spec.conv1_t_stride,
                "shortcut_type": spec.shortcut_type, "widen_factor": spec.widen_factor,
                "bias_downsample": spec.bias_downsample,
            }  # fmt: skip
            channels = spec.stage_channels
            self.adapter = InputAdapter(spec)
        self.ct_stream = self._stream(n_classes, spec_args)
        self.pet_stream = self._stream(n_classes, spec_args)
        self.mmtm = nn.ModuleDict(
            {str(p): MMTM(channels[p], channels[p], ratio=ratio) for p in self.positions}
        )
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _stream(n_classes: int, spec_args: dict) -> ResNet:
        return ResNet(
            spatial_dims=3, n_input_channels=1, conv1_t_size=7, num_classes=n_classes, **spec_args
        )

    def encoders(self) -> dict[str, nn.Module]:
        """Each modality's stream (its ``fc`` head is not part of a pretrained encoder)."""
        return {"ct": self.ct_stream, "pet": self.pet_stream}

    def _stem(self, stream: ResNet, x: torch.Tensor) -> torch.Tensor:
        x = stream.act(stream.bn1(stream.conv1(self.adapter(x))))
        return x if stream.no_max_pool else stream.maxpool(x)

    def _logits(self, stream: ResNet, x: torch.Tensor) -> torch.Tensor:
        return stream.fc(self.dropout(stream.avgpool(x).flatten(1)))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ct = self._stem(self.ct_stream, image(batch, "ct", "mmtm"))
        pet = self._stem(self.pet_stream, image(batch, "pet", "mmtm"))
        for position, layer_name in enumerate(_LAYER_NAMES):
            ct = getattr(self.ct_stream, layer_name)(ct)
            pet = getattr(self.pet_stream, layer_name)(pet)
            if str(position) in self.mmtm:
                ct, pet = self.mmtm[str(position)](ct, pet)
        return (self._logits(self.ct_stream, ct) + self._logits(self.pet_stream, pet)) / 2

    def extra_repr(self) -> str:
        return f"positions={self.positions}"


def _check_positions(positions: Sequence[int]) -> tuple[int, ...]:
    positions = tuple(positions)
    if any(p not in MMTM_POSITIONS for p in positions) or len(set(positions)) != len(positions):
        raise ValueError(
            f"mmtm_positions must be distinct values from {MMTM_POSITIONS}, got {positions!r}"
        )
    return tuple(sorted(positions))


def resnet18_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Four stage widths from ``widths``: used as is if 4 long, else continued by doubling.

    The project's shared widths 16-32-64 thus give 16-32-64-128, a ResNet-18 scaled down 4x.
    """
    widths = list(widths)[:4]
    while len(widths) < 4:
        widths.append(2 * widths[-1])
    return tuple(widths)


def warm_start(
    target: nn.Module, source: nn.Module | Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """Copy every weight of ``source`` that ``target`` also has into ``target`` (in place).

    For SFSA: ``target`` is an :class:`MMTMNet` with one more MMTM position than ``source``;
    both streams and the MMTM modules present in both are copied exactly, the new MMTM modules
    keep their fresh initialisation. ``source`` may be a module or a state dict.

    Returns:
        ``{"copied": [...], "fresh": [...], "unused": [...]}``: target keys copied, target keys
        left as initialised, source keys the target has no place for.

    Raises:
        ValueError: if a shared key differs in shape, or a target key outside the MMTM modules
            is missing from ``source`` (the streams differ: wrong widths or a different model).
    """
    source_state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    target_state = target.state_dict()
    copied, fresh = [], []
    for key, value in target_state.items():
        if key not in source_state:
            fresh.append(key)
        elif source_state[key].shape != value.shape:
            raise ValueError(
                f"warm_start: {key!r} has shape {tuple(source_state[key].shape)} in the source "
                f"but {tuple(value.shape)} in the target (different widths?)"
            )
        else:
            copied.append(key)
    not_fusion = [key for key in fresh if not key.startswith("mmtm.")]
    if not_fusion:
        raise ValueError(
            f"warm_start: the source lacks {len(not_fusion)} stream weights of the target, "
            f"e.g. {not_fusion[:3]}; source and target must share their streams"
        )
    target.load_state_dict({key: source_state[key] for key in copied}, strict=False)
    unused = [key for key in source_state if key not in target_state]
    return {"copied": copied, "fresh": fresh, "unused": unused}


@register_model("mmtm", modalities=["ct", "pet"])
def build_mmtm(
    *,
    n_classes,
    in_shape,
    widths,
    blocks_per_stage,
    n_tabular,
    mmtm_positions: Sequence[int] = MMTM_POSITIONS,
    mmtm_ratio: float = 4,
    mmtm_widths: Sequence[int] | None = None,
    mmtm_layers: Sequence[int] = RESNET18_LAYERS,
    conv1_stride: int = 1,
    dropout: float = 0.0,
    encoder=None,
):
    """Seed 002's two-stream ResNet-18 with MMTM at ``mmtm_positions`` (default: all four).

    ``blocks_per_stage`` is not used: the streams keep ResNet-18's layout (``mmtm_layers``, 2
    basic blocks in each of 4 layers). Widths come from ``mmtm_widths`` if given (full ResNet-18:
    64-128-256-512), else from ``widths`` continued to 4 stages by doubling. An ``encoder`` spec
    (models/encoders.py) gives both streams the pretrained trunk's layout instead.
    """
    reject_tabular(n_tabular, "mmtm")
    return MMTMNet(
        n_classes=n_classes,
        widths=resnet18_widths(mmtm_widths if mmtm_widths is not None else widths),
        layers=tuple(mmtm_layers),
        positions=mmtm_positions,
        ratio=mmtm_ratio,
        conv1_stride=conv1_stride,
        dropout=dropout,
        encoder=encoder,
    )
