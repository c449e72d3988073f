"""MMCAF-Net (seed 001): a multi-scale attention 3D image encoder, a KAN table encoder and
multi-scale cross-attention fusion.

* Image encoder: a 3D ResNet of MONAI blocks (the paper uses PENet; no pretrained weights can be
  fetched here, so it trains from scratch; :meth:`MMCAFNet.load_image_encoder` takes user
  weights) whose last three stages give features at three scales. On each scale E3D-MSCA
  (Eq. 1): ``DCFB(SAB(CAB(x)))``. Then BFPU (Eq. 2) fuses each scale with its neighbour.
* Table encoder: a two-layer KAN (or MLP).
* MSCA fusion: an inverted pyramid of reduced dimensions ``dims`` (e.g. 64 > 32 > 16). At scale
  k the image map is pooled to a few tokens projected to ``dims[k]``; the table feature goes
  through consecutive reductions (-> ``dims[0]`` -> ``dims[1]`` -> ...) and is split into tokens.
  Bidirectional multi-head cross-attention (image queries the table, the table queries the image)
  gives one fused vector per scale; BSF merges the scales two at a time, weighing dimensions by
  a softmax importance; a linear head gives the logits.

Example:
    >>> model = MMCAFNet(n_tabular=6, n_classes=2, widths=(4, 8, 16))
    >>> batch = {"ct": torch.rand(2, 1, 16, 32, 32), "tab": torch.randn(2, 6)}
    >>> model(batch).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm
from torch import nn

from .encoders import STACKED, encoder_module, make_branch
from .kan import TABULAR_ENCODERS, table
from .kan import tabular_encoder as make_tabular_encoder
from .registry import register_model
from .resnet import SPATIAL_DIMS, image


class ChannelAttention3d(nn.Module):
    """3D CAB: average- and max-pooled descriptors through a shared bottleneck, sigmoid gate
    per channel."""

    def __init__(self, channels: int, *, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool3d(x, 1))
        peak = self.mlp(F.adaptive_max_pool3d(x, 1))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention3d(nn.Module):
    """3D SAB: channel mean and max maps through a k^3 convolution, sigmoid gate per voxel."""

    def __init__(self, *, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class DepthwiseConvFusion3d(nn.Module):
    """3D DCFB: parallel depth-wise convolutions (kernels 1, 3, 5) summed, a point-wise
    convolution to fuse the channels, batch norm, and a residual connection (as EMCAD's MSCB)."""

    def __init__(self, channels: int, *, kernel_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.depthwise = nn.ModuleList(
            Convolution(
                SPATIAL_DIMS,
                channels,
                channels,
                kernel_size=k,
                groups=channels,
                act=Act.RELU6,
                norm=Norm.BATCH,
                bias=False,
            )  # fmt: skip
            for k in kernel_sizes
        )
        self.pointwise = Convolution(
            SPATIAL_DIMS, channels, channels, kernel_size=1, act=None, norm=Norm.BATCH, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = sum(conv(x) for conv in self.depthwise)
        return x + self.pointwise(mixed)


class E3DMSCA(nn.Module):
    """Efficient 3D multi-scale convolutional attention on one scale: DCFB(SAB(CAB(x)))."""

    def __init__(self, channels: int, *, reduction: int = 4) -> None:
        super().__init__()
        self.cab = ChannelAttention3d(channels, reduction=reduction)
        self.sab = SpatialAttention3d()
        self.dcfb = DepthwiseConvFusion3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcfb(self.sab(self.cab(x)))


class BFPU(nn.Module):
    """Bidirectional feedback propagation unit (Eq. 2) on two scales ``a`` (kept) and ``b``.

    ``b`` is projected to ``a``'s channels and resampled to its grid; then
    ``F_mid = sigmoid(conv(a) * conv(b))`` and ``out = [a + F_mid a, b + F_mid b]``, brought back to
    ``a``'s channels by a 1x1x1 convolution.
    """

    def __init__(self, channels_a: int, channels_b: int) -> None:
        super().__init__()
        self.align_b = nn.Conv3d(channels_b, channels_a, 1, bias=False)
        self.conv_a = nn.Conv3d(channels_a, channels_a, 3, padding=1)
        self.conv_b = nn.Conv3d(channels_a, channels_a, 3, padding=1)
        self.merge = Convolution(
            SPATIAL_DIMS, 2 * channels_a, channels_a, kernel_size=1, act=Act.RELU,
            norm=Norm.BATCH, bias=False,
        )  # fmt: skip

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b = self.align_b(b)
        if b.shape[2:] != a.shape[2:]:
            b = F.interpolate(b, size=a.shape[2:], mode="trilinear", align_corners=False)
        middle = torch.sigmoid(self.conv_a(a) * self.conv_b(b))
        return self.merge(torch.cat([a + middle * a, b + middle * b], dim=1))


class CrossAttention(nn.Module):
    """Bidirectional multi-head cross-attention (Eqs. 4-10) between image and table tokens.

    Image tokens query the table tokens and table tokens query the image tokens (each with a
    residual and layer norm); the two results are mean-pooled over tokens and concatenated
    into a (B, 2 * dim) vector.
    """

    def __init__(self, dim: int, *, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dimension {dim} is not divisible by {heads} heads")
        self.image_queries = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.table_queries = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.image_norm = nn.LayerNorm(dim)
        self.table_norm = nn.LayerNorm(dim)

    def forward(self, image_tokens: torch.Tensor, table_tokens: torch.Tensor) -> torch.Tensor:
        from_table, _ = self.image_queries(image_tokens, table_tokens, table_tokens)
        from_image, _ = self.table_queries(table_tokens, image_tokens, image_tokens)
        image_out = self.image_norm(image_tokens + from_table).mean(dim=1)
        table_out = self.table_norm(table_tokens + from_image).mean(dim=1)
        return torch.cat([image_out, table_out], dim=1)


class BSF(nn.Module):
    """Bidirectional scale fusion of two vectors of different sizes.

    Both are mapped to ``dim``; the element-wise product gives each dimension's agreement, a
    softmax over dimensions turns it into an importance (scaled to mean 1), and the merged vector
    is ``importance * (a + b)``: dimensions where the scales disagree (uncertain) are damped.
    """

    def __init__(self, dim_a: int, dim_b: int, dim: int) -> None:
        super().__init__()
        self.project_a = nn.Linear(dim_a, dim)
        self.project_b = nn.Linear(dim_b, dim)
        self.dim = dim

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self.project_a(a), self.project_b(b)
        importance = torch.softmax(a * b, dim=-1) * self.dim
        return importance * (a + b)


class MSCAFusion(nn.Module):
    """Multi-scale cross-attention fusion of three image scales with the table feature."""

    def __init__(
        self,
        *,
        image_channels: Sequence[int],
        table_features: int,
        dims: Sequence[int] = (64, 32, 16),
        table_tokens: int = 4,
        token_grid: Sequence[int] = (2, 2, 2),
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims, image_channels = tuple(dims), tuple(image_channels)
        if len(dims) != len(image_channels):
            raise ValueError(f"need one dimension per scale, got {dims} for {image_channels}")
        if any(b > a for a, b in zip(dims[:-1], dims[1:], strict=True)):
            raise ValueError(f"dims must not increase (an inverted pyramid), got {dims}")
        self.dims, self.table_tokens, self.token_grid = dims, table_tokens, tuple(token_grid)
        self.image_projections = nn.ModuleList(
            nn.Linear(c, d) for c, d in zip(image_channels, dims, strict=True)
        )
        widths = (table_features, *(d * table_tokens for d in dims))
        self.table_reductions = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.SiLU())
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.attention = nn.ModuleList(
            CrossAttention(d, heads=heads, dropout=dropout) for d in dims
        )
        self.fuse = nn.ModuleList()
        merged = 2 * dims[0]
        for d in dims[1:]:
            self.fuse.append(BSF(merged, 2 * d, dims[0]))
            merged = dims[0]
        self.out_features = merged

    def forward(self, maps: Sequence[torch.Tensor], table_feature: torch.Tensor) -> torch.Tensor:
        fused, t = [], table_feature
        for k, feature_map in enumerate(maps):
            pooled = F.adaptive_avg_pool3d(feature_map, self.token_grid).flatten(2).transpose(1, 2)
            image_tokens = self.image_projections[k](pooled)
            t = self.table_reductions[k](t)
            table_tokens = t.reshape(t.shape[0], self.table_tokens, self.dims[k])
            fused.append(self.attention[k](image_tokens, table_tokens))
        merged = fused[0]
        for bsf, scale in zip(self.fuse, fused[1:], strict=True):
            merged = bsf(merged, scale)
        return merged


class MMCAFNet(nn.Module):
    """MMCAF-Net: CT (optionally CT + PET as two channels) and the clinical table -> logits."""

    def __init__(
        self,
        *,
        n_tabular: int,
        n_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        use_pet: bool = False,
        tabular_encoder: str = "kan",
        tabular_hidden: int = 32,
        dims: Sequence[int] = (64, 32, 16),
        heads: int = 4,
        dropout: float = 0.0,
        encoder: dict | None = None,
    ) -> None:
        super().__init__()
        if tabular_encoder not in TABULAR_ENCODERS:
            raise ValueError(
                f"tabular_encoder must be one of {list(TABULAR_ENCODERS)}, got {tabular_encoder!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.n_tabular, self.use_pet = n_tabular, bool(use_pet)
        self.encoder = make_branch(
            in_channels=2 if use_pet else 1,
            widths=widths,
            blocks_per_stage=blocks_per_stage,
            encoder=encoder,
        )
        if len(self.encoder.widths) < 3:
            raise ValueError(
                f"MMCAF-Net uses three scales: widths needs >= 3 stages, got {tuple(widths)}"
            )
        scales = tuple(self.encoder.widths[-3:])
        self.attention = nn.ModuleList(E3DMSCA(c) for c in scales)
        # each scale fused with its coarser neighbour; the coarsest with its finer one
        self.bfpu = nn.ModuleList(
            [BFPU(scales[0], scales[1]), BFPU(scales[1], scales[2]), BFPU(scales[2], scales[1])]
        )
        self.table_encoder = make_tabular_encoder(
            tabular_encoder,
            n_features=n_tabular,
            hidden=tabular_hidden,
            out_features=tabular_hidden,
        )
        self.fusion = MSCAFusion(
            image_channels=scales, table_features=tabular_hidden, dims=dims, heads=heads,
            dropout=dropout,
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.fusion.out_features, n_classes)
        )

    def image_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last three stages' maps after E3D-MSCA and BFPU (fine to coarse)."""
        x = self.encoder.stem(x)
        maps = []
        for stage in self.encoder.stages:
            x = stage(x)
            maps.append(x)
        maps = [attend(m) for attend, m in zip(self.attention, maps[-3:], strict=True)]
        return [
            self.bfpu[0](maps[0], maps[1]),
            self.bfpu[1](maps[1], maps[2]),
            self.bfpu[2](maps[2], maps[1]),
        ]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = image(batch, "ct", "mmcaf")
        if self.use_pet:
            x = torch.cat([x, image(batch, "pet", "mmcaf").to(x.dtype)], dim=1)
        table_feature = self.table_encoder(table(batch, self.n_tabular, "mmcaf"))
        fused = self.fusion(self.image_scales(x), table_feature.to(x.dtype))
        return self.head(fused)

    def encoders(self) -> dict[str, nn.Module]:
        return {STACKED if self.use_pet else "ct": encoder_module(self.encoder)}

    def load_image_encoder(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True):
        """Load user weights into the 3D encoder (keys as in ``self.encoder.state_dict()``; an
        ``encoder.`` prefix is stripped). Returns the missing and unexpected keys."""
        weights = {k.removeprefix("encoder."): v for k, v in state_dict.items()}
        return self.encoder.load_state_dict(weights, strict=strict)


@register_model("mmcaf", modalities=["ct", "tab"])
def build_mmcaf(
    *,
    n_classes,
    in_shape,
    widths,
    blocks_per_stage,
    n_tabular,
    use_pet: bool = False,
    tabular_encoder: str = "kan",
    tabular_hidden: int = 32,
    dims: Sequence[int] = (64, 32, 16),
    heads: int = 4,
    dropout: float = 0.0,
    encoder=None,
):
    """MMCAF-Net (seed 001): CT (+ PET channel with ``use_pet``) and the clinical table."""
    if n_tabular < 1:
        raise ValueError("model 'mmcaf' needs clinical features (n_tabular >= 1)")
    return MMCAFNet(
        n_tabular=n_tabular, n_classes=n_classes, widths=widths, blocks_per_stage=blocks_per_stage,
        use_pet=use_pet, tabular_encoder=tabular_encoder, tabular_hidden=tabular_hidden,
        dims=tuple(dims), heads=heads, dropout=dropout, encoder=encoder,
    )  # fmt: skip
