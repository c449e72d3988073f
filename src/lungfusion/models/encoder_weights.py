"""Pretrained 3D ResNet encoders from the checkpoint files researchers download (``train.init: file``).

Each ``train.encoder_layout`` names a published layout:

``medicalnet``
    Tencent MedicalNet (Chen et al. 2019, "Med3D"), ResNet-10/18/34/50: a ``.pth`` holding
    ``{"state_dict": ...}`` with ``module.`` prefixes. The shortcut type and the downsampling bias
    follow MONAI's ``get_medicalnet_pretrained_resnet_args`` (depth 18/34: shortcut A; 10/50:
    shortcut B without bias).
``fmcib``
    The foundation model for cancer imaging biomarkers (Pai et al. 2024, Nature Machine
    Intelligence; github AIM-Harvard/foundation-cancer-image-biomarker): MONAI ``resnet50`` with
    ``widen_factor=2, conv1_t_stride=2, bias_downsample=True`` (``fmcib/models/__init__.py``,
    ``fmcib_model``), weights under ``trunk_state_dict`` (``fmcib/models/load_model.py``; a
    fine-tuned Lighter checkpoint holds ``state_dict`` with ``model.trunk.`` / ``model.heads.``
    keys instead). It was trained on 50x50x50 patches at 1 mm.
``monai_bundle``
    A MONAI bundle's ``models/model.pt``: the plain state dict of the bundle's network, a ResNet of
    MONAI's defaults (shortcut B, downsampling bias), maybe behind a prefix such as ``model.``.
``lungfusion``
    This pipeline's pretrain stage ``encoder.pt``: ``{"state_dict": trunk, "spec": spec dict}``;
    the architecture comes from the file (:func:`stored_spec`).

:func:`layout_spec` gives the :class:`EncoderSpec` a layout needs, :func:`read_encoder_weights`
reads a file, maps its keys onto :func:`build_trunk`'s and checks every key and shape, stopping
with :class:`EncoderWeightsError` at the first that does not fit. Input spacing and size are the
spec's business (:class:`~lungfusion.models.encoders.InputAdapter`); FMCIB's CT intensity scale
is folded into its stem on request (:func:`fold_fmcib_intensity`).
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import torch

from .encoders import ENCODER_ARCHS, EncoderSpec, build_trunk

LAYOUTS = ("medicalnet", "fmcib", "monai_bundle", "lungfusion")

# where each layout keeps the weights inside the file, tried in order (a plain state dict is
# taken as it is)
CONTAINERS = {
    "medicalnet": ("state_dict",),
    "fmcib": ("trunk_state_dict", "state_dict"),
    "monai_bundle": ("model", "state_dict", "network"),
    "lungfusion": ("state_dict",),
}
# wrappers around the trunk, stripped while every key shares one
PREFIXES = ("module", "model", "net", "network", "backbone", "encoder", "trunk", "_orig_mod")
# classifier and decoder heads, dropped: the trunk has none (MedicalNet's segmentation decoder is
# conv_seg, FMCIB's Lighter heads are model.heads)
HEADS = ("fc", "head", "heads", "classifier", "conv_seg")

FMCIB_NORMALISATION = "(HU + 1024) / 3072, not clipped"


class EncoderWeightsError(ValueError):
    """A checkpoint that does not fit the encoder the config asks for."""


def layout_spec(
    layout: str,
    arch: str,
    *,
    roi_spacing_mm: tuple[float, float, float] | None,
    path: str | Path | None = None,
) -> EncoderSpec:
    """The trunk a ``layout`` checkpoint of depth ``arch`` loads into.

    ``roi_spacing_mm`` (z, y, x) is the spacing of the ROI tensors, from which an encoder with a
    fixed input spacing (FMCIB) resamples. ``path`` is needed for ``lungfusion`` only, whose
    file stores its own spec.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"encoder_layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if arch not in ENCODER_ARCHS:
        raise ValueError(f"encoder must be one of {sorted(ENCODER_ARCHS)}, got {arch!r}")
    if layout == "medicalnet":
        shallow = arch in ("resnet18", "resnet34")  # get_medicalnet_pretrained_resnet_args
        return EncoderSpec(
            arch,
            shortcut_type="A" if shallow else "B",
            bias_downsample=shallow,
            conv1_t_stride=1,
            roi_spacing_mm=roi_spacing_mm,
            notes=(
                "MedicalNet: no fixed input spacing or size; the ROI is fed at its own spacing",
                "conv1 stride 1 (MedicalNet's own conv1 has stride 2): the ROIs are small, and "
                "the stride does not change the weights' shapes",
                "MedicalNet normalised each volume by the mean and standard deviation of its "
                "non-zero voxels; the ROI keeps this pipeline's intensity scaling",
            ),
        )
    if layout == "fmcib":
        if arch != "resnet50":
            raise ValueError(
                f"FMCIB is a ResNet-50 (widen_factor 2): set train.encoder to resnet50, got {arch!r}"
            )
        return EncoderSpec(
            arch,
            widen_factor=2.0,
            shortcut_type="B",
            bias_downsample=True,
            conv1_t_stride=2,
            input_spacing_mm=(1.0, 1.0, 1.0),
            input_size=(50, 50, 50),
            roi_spacing_mm=roi_spacing_mm,
            notes=(
                "FMCIB: the ROI is resampled (trilinear) to 1 mm and centre-cropped or "
                "zero-padded to 50x50x50 voxels, as FMCIB was trained",
                f"FMCIB normalised CT as {FMCIB_NORMALISATION}; this pipeline's CT ROI is windowed "
                "to [0, 1] over roi.ct_window: read_encoder_weights(ct_window=...) folds the "
                "mapping into the stem, and its record says whether it did",
                "FMCIB is a CT model: for PET it is a generic 3D initialisation",
            ),
        )
    if layout == "monai_bundle":
        return EncoderSpec(
            arch,
            shortcut_type="B",
            bias_downsample=True,
            roi_spacing_mm=roi_spacing_mm,
            notes=(
                "MONAI bundle: MONAI's ResNet defaults; no fixed input spacing or size, the ROI "
                "is fed at its own spacing",
            ),
        )
    if path is None:
        raise ValueError(
            "a lungfusion encoder.pt stores its own architecture: pass the file as path= "
            "(or read it with stored_spec)"
        )
    spec = stored_spec(path)
    if spec.arch != arch:
        raise EncoderWeightsError(
            f"{path} (layout lungfusion) holds a {spec.arch} encoder, train.encoder asks for {arch}"
        )
    return replace(spec, roi_spacing_mm=roi_spacing_mm)


def stored_spec(path: str | Path) -> EncoderSpec:
    """The :class:`EncoderSpec` a lungfusion ``encoder.pt`` was trained with."""
    checkpoint, _ = _load(path)
    if not isinstance(checkpoint, dict) or "spec" not in checkpoint:
        raise EncoderWeightsError(f"{path} (layout lungfusion) has no 'spec' entry")
    return EncoderSpec.from_value(checkpoint["spec"])


def read_encoder_weights(
    path: str | Path,
    *,
    layout: str,
    spec: EncoderSpec,
    in_channels: int = 1,
    ct_window: tuple[float, float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The trunk weights in ``path``, keyed as :func:`build_trunk` ``(spec)`` keys them, and a
    record of the reading for the training summaries.

    The layout's container is unwrapped, wrapper prefixes (``module.``, ``model.`` ...) stripped
    and classifier heads dropped; then every key of the trunk must be present with its shape and
    no other key may remain. The first that does not fit raises :class:`EncoderWeightsError`,
    naming the file, the layout, the key and the architecture expected.

    ``ct_window`` (HU low, high; pass ``roi.ct_window`` for a CT encoder, None for PET) makes an
    FMCIB stem read this pipeline's CT as FMCIB's normalisation (:func:`fold_fmcib_intensity`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"encoder_layout must be one of {list(LAYOUTS)}, got {layout!r}")
    checkpoint, weights_only = _load(path)
    state, container = _unwrap(checkpoint, layout, path)
    state, stripped, dropped = _strip(state)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = build_trunk(spec, in_channels=in_channels).state_dict()
    filled = _check(state, expected, path=path, layout=layout, spec=spec)
    state = {key: state.get(key, torch.tensor(0)) for key in expected}
    normalisation = "none"
    if layout == "fmcib" and ct_window is not None:
        state, normalisation = fold_fmcib_intensity(state, ct_window)
    record = {
        "path": str(path),
        "layout": layout,
        "spec": spec.as_dict(),
        "weights_only": weights_only,
        "container": container,
        "prefix_stripped": stripped,
        "keys_loaded": len(expected) - len(filled),
        "keys_dropped": dropped,
        "keys_filled": filled,
        "input": _input_record(spec) | {"normalisation": normalisation},
        "notes": list(spec.notes),
    }
    return state, record


def fold_fmcib_intensity(
    state: dict[str, torch.Tensor], ct_window: tuple[float, float]
) -> tuple[dict[str, torch.Tensor], str]:
    """FMCIB's stem made to read CT windowed to [0, 1] over ``ct_window`` as FMCIB read
    (HU + 1024) / 3072.

    Within the window FMCIB's value is ``a * x + b`` (a = (high - low) / 3072, b = (low + 1024) /
    3072). conv1 has no bias, so ``conv1(a x + b) = conv1'(x) + b * sum(w)`` with conv1' = a w;
    bn1's running mean absorbs ``b * sum(w)`` per channel. Exact away from the padded borders,
    where this pipeline's zeros stand for HU ``low`` (FMCIB's for -1024: the same with the
    default window). Returns the new state and a line for the record.
    """
    low, high = (float(v) for v in ct_window)
    scale, offset = (high - low) / 3072.0, (low + 1024.0) / 3072.0
    state = dict(state)
    weight = state["conv1.weight"]
    state["conv1.weight"] = weight * scale
    state["bn1.running_mean"] = state["bn1.running_mean"] - offset * weight.sum(dim=(1, 2, 3, 4))
    return state, (
        f"CT windowed to [0, 1] over {low:g}..{high:g} HU mapped onto FMCIB's "
        f"{FMCIB_NORMALISATION} by folding x * {scale:.6g} + {offset:.6g} into conv1 and bn1 "
        f"(values above {high:g} HU stay clipped)"
    )


def _load(path: str | Path) -> tuple[object, bool]:
    """The file's contents on the CPU: tensors and containers only where torch allows it; a file
    that pickles other objects (a training checkpoint's settings) is read in full."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False), False


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _unwrap(checkpoint: object, layout: str, path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside the file, and the container key it sat under (None: the file is
    the state dict)."""
    if _is_state_dict(checkpoint):
        return dict(checkpoint), None
    if isinstance(checkpoint, dict):
        for key in CONTAINERS[layout]:
            if _is_state_dict(checkpoint.get(key)):
                return dict(checkpoint[key]), key
    found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise EncoderWeightsError(
        f"{path} (layout {layout}): no state dict found; expected the file to be one or to hold "
        f"one under {list(CONTAINERS[layout])}, found {found}"
    )


def _strip(state: dict) -> tuple[dict, str, list[str]]:
    """Drop head keys and strip wrapper prefixes shared by every key, alternately (FMCIB's
    ``model.trunk.`` beside ``model.heads.``). Returns the state, the prefix stripped and the
    keys dropped (as found in the file)."""
    original = {key: key for key in state}
    stripped, dropped = "", []
    while True:
        heads = [key for key in state if key.split(".", 1)[0] in HEADS]
        dropped += [original[key] for key in heads]
        state = {k: v for k, v in state.items() if k not in heads}
        firsts = {key.split(".", 1)[0] for key in state}
        if len(firsts) != 1 or (first := firsts.pop()) not in PREFIXES:
            return state, stripped, dropped
        stripped += first + "."
        original = {key.split(".", 1)[1]: original[key] for key in state}
        state = {key.split(".", 1)[1]: value for key, value in state.items()}


def _describe(spec: EncoderSpec) -> str:
    return (
        f"{spec.arch} ({spec.block} blocks, layers {'-'.join(map(str, spec.layers))}, widths "
        f"{'-'.join(map(str, spec.widths))}, widen_factor {spec.widen_factor:g}, shortcut "
        f"{spec.shortcut_type}, bias_downsample {spec.bias_downsample})"
    )


def _check(state: dict, expected: dict, *, path, layout: str, spec: EncoderSpec) -> list[str]:
    """Raise at the first key of the trunk missing from ``state`` or shaped differently, or the
    first key of ``state`` the trunk lacks. BatchNorm's ``num_batches_tracked`` counters, which
    older files lack, are allowed to be missing: their names are returned."""

    def fail(problem: str) -> EncoderWeightsError:
        return EncoderWeightsError(
            f"encoder weights {path} (layout {layout}) do not fit the expected architecture "
            f"{_describe(spec)}: {problem}"
        )

    filled = []
    for key, value in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                filled.append(key)
                continue
            raise fail(f"missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise fail(
                f"key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise fail(f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    return filled


def _input_record(spec: EncoderSpec) -> dict:
    """What happens to a ROI before the trunk sees it (:class:`InputAdapter`)."""
    if spec.input_spacing_mm is None:
        resampling = "none: the ROI is fed at its own spacing"
    else:
        resampling = (
            f"trilinear from {spec.roi_spacing_mm} mm to {spec.input_spacing_mm} mm (z, y, x)"
        )
    size = "none" if spec.input_size is None else f"centre crop or zero pad to {spec.input_size}"
    return {"resampling": resampling, "size": size}
