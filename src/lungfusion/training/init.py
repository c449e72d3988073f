"""Where a network's image encoders start: from scratch, from the pretrain stage, or from a file.

``train.init`` chooses: ``scratch`` (random), ``pretrain`` (the fold's self-supervised encoders,
``results/pretrain/{modality}/fold{k}/encoder.pt``) or ``file`` (``train.encoder_weights``: a
MedicalNet, FMCIB or MONAI-bundle checkpoint, read by :mod:`lungfusion.models.encoder_weights`).
``train.encoder`` picks the trunk every image network then shares (models/encoders.py).
"""

from __future__ import annotations

INITS = ("scratch", "pretrain", "file")


def encoder_spec_from_config(config: dict):
    """The :class:`EncoderSpec` the config asks for, or None for each network's native branch."""
    from lungfusion.models.encoders import EncoderSpec, scaled_widths

    train = config["train"]
    init, arch = train.get("init", "scratch"), train.get("encoder", "native")
    if arch == "native":
        if init != "scratch":
            raise ValueError(
                f"train.init {init!r} needs a ResNet trunk to load weights into: set train.encoder "
                "to resnet10, resnet18, resnet34 or resnet50 (native branches differ per network)"
            )
        return None
    if init == "file":
        from lungfusion.models.encoder_weights import layout_spec

        return layout_spec(
            train.get("encoder_layout", "medicalnet"),
            arch,
            roi_spacing_mm=roi_spacing_zyx(config),
        )
    return EncoderSpec(arch, widths=scaled_widths(train["widths"]))


def roi_spacing_zyx(config: dict) -> tuple[float, float, float]:
    """The ROI tensors' voxel spacing in mm, (z, y, x) like the tensors (the config is x, y, z)."""
    x, y, z = config["register"]["target_spacing_mm"]
    return (float(z), float(y), float(x))
