"""Pretrained encoder files in the layouts researchers download, written here with random weights."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import resnet
from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

from lungfusion.models.encoder_weights import (
    EncoderWeightsError,
    layout_spec,
    read_encoder_weights,
    stored_spec,
)
from lungfusion.models.encoders import EncoderSpec, InputAdapter, build_trunk

ROI_SPACING = (3.27, 0.977, 0.977)


def _medicalnet_net(arch: str) -> torch.nn.Module:
    """A MONAI ResNet built as MONAI builds one for MedicalNet's weights."""
    bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(int(arch[6:]))
    return getattr(resnet, arch)(
        n_input_channels=1,
        feed_forward=False,
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
    )


@pytest.fixture(scope="module")
def fmcib_state() -> dict:
    """FMCIB's trunk as fmcib/models/__init__.py (fmcib_model) builds it."""
    return resnet.resnet50(
        pretrained=False,
        n_input_channels=1,
        widen_factor=2,
        conv1_t_stride=2,
        feed_forward=False,
        bias_downsample=True,
    ).state_dict()


def _load_and_compare(path, layout: str, arch: str, source: dict) -> dict:
    spec = layout_spec(layout, arch, roi_spacing_mm=ROI_SPACING, path=path)
    state, record = read_encoder_weights(path, layout=layout, spec=spec)
    trunk = build_trunk(spec)
    trunk.load_state_dict(state, strict=True)
    loaded = trunk.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key
    assert record["layout"] == layout and record["path"] == str(path)
    assert record["keys_loaded"] == len(source)
    return record


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet50"])
def test_medicalnet_checkpoint_loads(tmp_path, arch):
    source = _medicalnet_net(arch).state_dict()
    path = tmp_path / f"resnet_{arch[6:]}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    record = _load_and_compare(path, "medicalnet", arch, source)
    assert record["container"] == "state_dict"
    assert record["prefix_stripped"] == "module."
    assert record["input"]["resampling"].startswith("none")


def test_fmcib_checkpoint_loads_with_its_input(tmp_path, fmcib_state):
    source = fmcib_state
    path = tmp_path / "model_weights.torch"
    torch.save({"trunk_state_dict": source, "head_state_dict": {}}, path)
    record = _load_and_compare(path, "fmcib", "resnet50", source)
    assert record["container"] == "trunk_state_dict"
    assert "1.0, 1.0, 1.0" in record["input"]["resampling"]
    assert any("3072" in note for note in record["notes"])


@pytest.mark.parametrize("window", [(-1024.0, 1024.0), (-1000.0, 400.0)])
def test_fmcib_stem_reads_the_ct_window_as_fmcib_did(tmp_path, fmcib_state, window):
    path = tmp_path / "model_weights.torch"
    stem = {k: v for k, v in fmcib_state.items() if k.split(".")[0] in ("conv1", "bn1")}
    stem["bn1.running_mean"] = torch.randn(128)
    torch.save({"trunk_state_dict": fmcib_state | stem}, path)
    spec = layout_spec("fmcib", "resnet50", roi_spacing_mm=ROI_SPACING)
    plain, _ = read_encoder_weights(path, layout="fmcib", spec=spec)
    folded, record = read_encoder_weights(path, layout="fmcib", spec=spec, ct_window=window)
    assert "3072" in record["input"]["normalisation"]

    def stem_out(state, x):
        conv = torch.nn.Conv3d(1, 128, 7, stride=2, padding=3, bias=False)
        bn = torch.nn.BatchNorm3d(128).eval()
        conv.load_state_dict({"weight": state["conv1.weight"]})
        bn.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("bn1.")})
        with torch.no_grad():
            return bn(conv(x))[..., 2:-2, 2:-2, 2:-2]  # away from the padded borders

    low, high = window
    hu = torch.empty(1, 1, 20, 20, 20).uniform_(low, high)
    ours = (hu - low) / (high - low)
    theirs = (hu + 1024) / 3072
    assert torch.allclose(stem_out(folded, ours), stem_out(plain, theirs), atol=1e-4)
    assert not torch.allclose(stem_out(plain, ours), stem_out(plain, theirs), atol=1e-2)


def test_fmcib_lighter_checkpoint_drops_its_heads(tmp_path, fmcib_state):
    source = fmcib_state
    heads = {"model.heads.0.0.weight": torch.zeros(8, 4096), "model.heads.0.0.bias": torch.zeros(8)}
    path = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": {f"model.trunk.{k}": v for k, v in source.items()} | heads}, path)
    record = _load_and_compare(path, "fmcib", "resnet50", source)
    assert record["prefix_stripped"] == "model.trunk."
    assert sorted(record["keys_dropped"]) == sorted(heads)


def test_monai_bundle_model_pt_loads(tmp_path):
    net = resnet.resnet18(n_input_channels=1, num_classes=3)  # MONAI defaults, with a classifier
    path = tmp_path / "model.pt"
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, path)
    source = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    record = _load_and_compare(path, "monai_bundle", "resnet18", source)
    assert record["container"] is None
    assert sorted(record["keys_dropped"]) == ["model.fc.bias", "model.fc.weight"]


def test_lungfusion_encoder_pt_carries_its_spec(tmp_path):
    spec = EncoderSpec("resnet10", widths=(8, 16, 32, 64))
    source = build_trunk(spec).state_dict()
    path = tmp_path / "encoder.pt"
    torch.save({"state_dict": source, "spec": spec.as_dict(), "epochs": 3}, path)
    assert stored_spec(path) == spec
    loaded_spec = layout_spec("lungfusion", "resnet10", roi_spacing_mm=ROI_SPACING, path=path)
    assert loaded_spec.widths == (8, 16, 32, 64)
    assert loaded_spec.roi_spacing_mm == ROI_SPACING
    _load_and_compare(path, "lungfusion", "resnet10", source)
    with pytest.raises(ValueError, match="path="):
        layout_spec("lungfusion", "resnet10", roi_spacing_mm=ROI_SPACING)
    with pytest.raises(EncoderWeightsError, match="resnet10 encoder"):
        layout_spec("lungfusion", "resnet18", roi_spacing_mm=ROI_SPACING, path=path)


def test_resnet18_read_as_resnet34_names_the_missing_key(tmp_path):
    path = tmp_path / "resnet_18.pth"
    state = _medicalnet_net("resnet18").state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    spec = layout_spec("medicalnet", "resnet34", roi_spacing_mm=None)
    with pytest.raises(EncoderWeightsError) as error:
        read_encoder_weights(path, layout="medicalnet", spec=spec)
    message = str(error.value)
    assert "missing key 'layer1.2.conv1.weight'" in message
    assert str(path) in message and "medicalnet" in message
    assert "resnet34 (basic blocks, layers 3-4-6-3, widths 64-128-256-512" in message


def test_renamed_key_is_named(tmp_path):
    state = _medicalnet_net("resnet10").state_dict()
    state["layer2.0.bn9.weight"] = state.pop("layer2.0.bn1.weight")
    path = tmp_path / "renamed.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    spec = layout_spec("medicalnet", "resnet10", roi_spacing_mm=None)
    with pytest.raises(EncoderWeightsError, match=r"missing key 'layer2\.0\.bn1\.weight'"):
        read_encoder_weights(path, layout="medicalnet", spec=spec)
    del state["layer2.0.bn9.weight"]
    state["layer2.0.bn1.weight"] = torch.ones(128)
    state["layer2.0.extra.weight"] = torch.ones(3)
    torch.save({"state_dict": state}, path)
    with pytest.raises(EncoderWeightsError, match=r"unexpected key 'layer2\.0\.extra\.weight'"):
        read_encoder_weights(path, layout="medicalnet", spec=spec)


def test_fmcib_read_as_medicalnet_names_the_mismatched_shape(tmp_path, fmcib_state):
    path = tmp_path / "model_weights.torch"
    torch.save({"trunk_state_dict": fmcib_state}, path)
    spec = layout_spec("medicalnet", "resnet50", roi_spacing_mm=None)
    with pytest.raises(EncoderWeightsError) as error:
        read_encoder_weights(path, layout="medicalnet", spec=spec)
    message = str(error.value)
    assert "no state dict found" in message  # MedicalNet keeps its weights under state_dict
    torch.save({"state_dict": fmcib_state}, path)
    with pytest.raises(EncoderWeightsError) as error:
        read_encoder_weights(path, layout="medicalnet", spec=spec)
    message = str(error.value)
    assert "key 'conv1.weight' has shape (128, 1, 7, 7, 7), expected (64, 1, 7, 7, 7)" in message
    assert "resnet50 (bottleneck blocks" in message and "widen_factor 1" in message


def test_fmcib_needs_resnet50_and_a_known_layout():
    with pytest.raises(ValueError, match="resnet50"):
        layout_spec("fmcib", "resnet18", roi_spacing_mm=ROI_SPACING)
    with pytest.raises(ValueError, match="encoder_layout"):
        layout_spec("timm", "resnet18", roi_spacing_mm=ROI_SPACING)


def test_medicalnet_specs_follow_monai():
    for arch in ("resnet10", "resnet18", "resnet34", "resnet50"):
        spec = layout_spec("medicalnet", arch, roi_spacing_mm=ROI_SPACING)
        bias, shortcut = get_medicalnet_pretrained_resnet_args(int(arch[6:]))
        assert (spec.shortcut_type, spec.bias_downsample) == (shortcut, bias)
        assert spec.input_spacing_mm is None and spec.input_size is None


def test_fmcib_input_adapter_gives_50_cubed():
    spec = layout_spec("fmcib", "resnet50", roi_spacing_mm=ROI_SPACING)
    out = InputAdapter(spec)(torch.rand(1, 1, 32, 64, 64))
    assert out.shape == (1, 1, 50, 50, 50)
