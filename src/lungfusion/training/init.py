"""Where a network's image encoders start: from scratch, from the pretrain stage, or from a file.

``train.init`` chooses: ``scratch`` (random), ``pretrain`` (the fold's self-supervised encoders,
``results/pretrain/{modality}/fold{k}/encoder.pt``) or ``file`` (``train.encoder_weights``: a
MedicalNet, FMCIB or MONAI-bundle checkpoint, read by :mod:`lungfusion.models.encoder_weights`).
``train.encoder`` picks the trunk every image network then shares (models/encoders.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lungfusion.models.encoders import STACKED

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

        paths = [p for p in (train.get("encoder_weights") or {}).values() if p]
        if not paths:
            raise ValueError("train.init file: name a checkpoint in train.encoder_weights.ct/pet")
        return layout_spec(
            train.get("encoder_layout", "medicalnet"),
            arch,
            roi_spacing_mm=roi_spacing_zyx(config),
            path=paths[0],  # a lungfusion encoder.pt holds its own architecture
        )
    return EncoderSpec(arch, widths=scaled_widths(train["widths"]))


def roi_spacing_zyx(config: dict) -> tuple[float, float, float]:
    """The ROI tensors' voxel spacing in mm, (z, y, x) like the tensors (the config is x, y, z)."""
    x, y, z = config["register"]["target_spacing_mm"]
    return (float(z), float(y), float(x))


@dataclass
class EncoderInit:
    """How a network's encoders started: the mode, the spec, what was loaded into which
    encoder, and the modules that now hold pretrained weights (the engine freezes them and
    gives them a smaller learning rate)."""

    mode: str = "scratch"
    spec: dict | None = None
    loaded: dict = field(default_factory=dict)
    pretrained_modules: list = field(default_factory=list)

    def identity(self) -> dict:
        """What changes the run (its hash): the mode, the spec and each source file."""
        sources = {k: v.get("source") for k, v in self.loaded.items()}
        return {"mode": self.mode, "spec": self.spec, "sources": sources}

    def summary(self) -> dict:
        return {"mode": self.mode, "encoder": self.spec, "loaded": self.loaded}


_FROM_CONFIG = object()


def initialise_encoders(
    model, *, config: dict, fold: int, pretrain_dir: str | Path | None, spec=_FROM_CONFIG
) -> EncoderInit:
    """Load the weights ``train.init`` names into ``model``'s encoders (in place). ``spec``:
    the caller's :func:`encoder_spec_from_config`, so a checkpoint's spec is read once."""
    if spec is _FROM_CONFIG:
        spec = encoder_spec_from_config(config)
    train = config["train"]
    mode = train.get("init", "scratch")
    init = EncoderInit(mode=mode, spec=None if spec is None else spec.as_dict())
    if mode == "scratch":
        return init
    if not hasattr(model, "encoders"):
        return init  # a table-only network: nothing to initialise
    encoders = model.encoders()
    modalities = sorted({m for key in encoders for m in key.split("+")})
    if mode == "pretrain":
        if pretrain_dir is None:
            raise ValueError("train.init pretrain: the pretrain stage's folder was not given")
        states = {m: _pretrained_state(Path(pretrain_dir), m, fold, spec) for m in modalities}
    else:
        states = _file_states(train, modalities, spec, ct_window=config["roi"]["ct_window"])
    for key, module in encoders.items():
        record = load_encoder(module, key, states)
        if record is not None:
            init.loaded[key] = record
            init.pretrained_modules.append(module)
    return init


def _pretrained_state(pretrain_dir: Path, modality: str, fold: int, spec) -> dict:
    import torch

    path = pretrain_dir / modality / f"fold{fold}" / "encoder.pt"
    if not path.is_file():
        raise FileNotFoundError(f"train.init pretrain: {path} is missing (run the pretrain rule)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("spec") != spec.as_dict():
        raise ValueError(
            f"{path} was pretrained as {payload.get('spec')}, but train.encoder now asks for "
            f"{spec.as_dict()}: rerun the pretrain stage"
        )
    objective = payload.get("objective", "masked")
    return {
        "state_dict": payload["state_dict"],
        "source": str(path),
        "what": f"pretrain stage ({objective} objective)",
    }


def _file_states(train: dict, modalities: list[str], spec, *, ct_window) -> dict:
    from lungfusion.models.encoder_weights import read_encoder_weights

    states = {}
    layout = train.get("encoder_layout", "medicalnet")
    for modality in modalities:
        path = (train.get("encoder_weights") or {}).get(modality)
        if path is None:
            continue  # this modality's encoder starts from scratch
        # an FMCIB CT stem is made to read the ROI's [0, 1] window as FMCIB's HU scaling
        window = tuple(ct_window) if modality == "ct" else None
        state, record = read_encoder_weights(path, layout=layout, spec=spec, ct_window=window)
        states[modality] = {"state_dict": state, "source": str(path), "what": record}
    return states


def load_encoder(module, key: str, states: dict) -> dict | None:
    """Load ``states`` into one encoder; ``ct+pet`` (two stacked input channels) takes the CT
    encoder with its first convolution widened to two channels: the CT filters and the PET
    filters (the CT ones again without a PET encoder), each halved, so the sum of the two
    channels' responses keeps the scale of one. Returns a record, or None if nothing loaded."""
    if key != STACKED:
        if key not in states:
            return None
        _load_trunk(module, states[key]["state_dict"], key)
        return {k: v for k, v in states[key].items() if k != "state_dict"}
    if "ct" not in states:
        return None
    state = dict(states["ct"]["state_dict"])
    pet = states.get("pet", states["ct"])["state_dict"]["conv1.weight"]
    state["conv1.weight"] = torch.cat([state["conv1.weight"], pet], dim=1) / 2
    _load_trunk(module, state, key)
    return {
        "source": {m: states[m]["source"] for m in ("ct", "pet") if m in states},
        "what": "CT encoder; first convolution widened to CT + PET channels, each halved",
    }


def _load_trunk(module, state: dict, key: str) -> None:
    """Strict on the encoder's weights; a stream's own classifier (``fc``) stays fresh."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{key} encoder: the weights do not fit (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
