"""Tests for lungfusion.models: shapes, fusion maths, MMTM gates, warm start, determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lungfusion.models import (
    MMTM,
    MMTM_POSITIONS,
    MODEL_NAMES,
    FusionBlock,
    MMTMNet,
    build_model,
    count_parameters,
    required_modalities,
    warm_start,
)

IN_SHAPE = (16, 32, 32)
WIDTHS = (4, 8, 16)
FUSION_MODELS = ("early", "late", "single_stage", "multistage", "mmtm")


def make_batch(batch_size: int = 2, *, seed: int = 0, n_tabular: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "ct": torch.rand(batch_size, 1, *IN_SHAPE, generator=generator),
        "pet": torch.rand(batch_size, 1, *IN_SHAPE, generator=generator),
        "has_pet": torch.ones(batch_size, dtype=torch.bool),
    }
    if n_tabular:
        batch["tab"] = torch.randn(batch_size, n_tabular, generator=generator)
    return batch


N_TABULAR = 4


def needs_table(name: str) -> bool:
    return "tab" in required_modalities(name)


def tiny(name: str, n_classes: int = 2, **options) -> torch.nn.Module:
    if needs_table(name):
        options.setdefault("n_tabular", N_TABULAR)
    return build_model(
        name, n_classes=n_classes, in_shape=IN_SHAPE, widths=WIDTHS, blocks_per_stage=1, **options
    )


def batch_for(name: str, batch_size: int = 2, *, seed: int = 0) -> dict:
    """A batch with the clinical table for the models that read one."""
    return make_batch(batch_size, seed=seed, n_tabular=N_TABULAR if needs_table(name) else 0)


def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == {
        "ct",
        "pet",
        "early",
        "late",
        "single_stage",
        "multistage",
        "mmtm",
        "mmcaf",
        "clinical_net",
    }
    assert required_modalities("mmcaf") == {"ct", "tab"}
    assert required_modalities("clinical_net") == {"tab"}
    assert required_modalities("ct") == {"ct"}
    assert required_modalities("pet") == {"pet"}
    for name in FUSION_MODELS:
        assert required_modalities(name) == {"ct", "pet"}
    assert required_modalities("sfsa") == {"ct", "pet"}


def test_build_model_rejects_bad_arguments():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        tiny("nope")
    with pytest.raises(TypeError, match="accepted options"):
        tiny("ct", mmtm_positions=(1,))
    with pytest.raises(ValueError, match="n_classes"):
        tiny("ct", n_classes=0)
    with pytest.raises(ValueError, match="in_shape"):
        build_model("ct", n_classes=2, in_shape=(16, 32))
    with pytest.raises(ValueError, match="mmtm_positions"):
        tiny("mmtm", mmtm_positions=(4,))
    with pytest.raises(ValueError, match="no clinical table"):
        build_model("late", n_classes=2, in_shape=IN_SHAPE, n_tabular=3)


@pytest.mark.parametrize("n_classes", [2, 3, 1])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape(name, n_classes):
    torch.manual_seed(0)
    model = tiny(name, n_classes=n_classes)
    output = model(batch_for(name, 3))
    assert output.shape == (3, n_classes)
    assert torch.isfinite(output).all()


def test_missing_modality_raises_clear_error():
    batch = make_batch()
    del batch["pet"]
    with pytest.raises(KeyError, match="needs batch\\['pet'\\]"):
        tiny("multistage")(batch)


@pytest.mark.parametrize("name", ["ct", "early", "single_stage", "multistage"])
def test_tabular_features_enter_the_head(name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=2, in_shape=IN_SHAPE, widths=WIDTHS, n_tabular=4).eval()
    batch = make_batch(n_tabular=4)
    output = model(batch)
    batch["tab"] = batch["tab"] + 1.0
    assert output.shape == (2, 2)
    assert not torch.allclose(output, model(batch))


def test_late_fusion_returns_log_of_mean_probabilities():
    torch.manual_seed(0)
    model = tiny("late", n_classes=3).eval()
    batch = make_batch()
    with torch.no_grad():
        ct_logits = model.ct_head([model.ct_branch(batch["ct"])])
        pet_logits = model.pet_head([model.pet_branch(batch["pet"])])
        expected = (F.softmax(ct_logits, 1) + F.softmax(pet_logits, 1)) / 2
        output = model(batch)
        torch.testing.assert_close(output.exp(), expected)
        torch.testing.assert_close(F.softmax(output, 1), expected)
        # A patient without PET gets the CT prediction alone.
        batch["has_pet"] = torch.tensor([True, False])
        output = model(batch)
        torch.testing.assert_close(output[1].exp(), F.softmax(ct_logits, 1)[1])


def first_conv_gradients(model, name: str) -> list[torch.Tensor]:
    """Gradients of the first convolution seeing CT and of the one seeing PET."""
    if name == "early":  # one network: CT and PET are input channels 0 and 1
        gradient = model.branch.stem.conv.weight.grad
        return [gradient[:, 0], gradient[:, 1]]
    if name == "mmtm":
        return [model.ct_stream.conv1.weight.grad, model.pet_stream.conv1.weight.grad]
    return [model.ct_branch.stem.conv.weight.grad, model.pet_branch.stem.conv.weight.grad]


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_gradient_reaches_both_branches(name):
    torch.manual_seed(0)
    model = tiny(name)
    F.cross_entropy(model(make_batch()), torch.tensor([0, 1])).backward()
    for gradient in first_conv_gradients(model, name):
        assert gradient is not None and gradient.abs().sum() > 0


def test_multistage_fusion_grad_crosses_modalities():
    """In multistage the CT branch's loss depends on the PET stem through the fusion blocks."""
    torch.manual_seed(0)
    model = tiny("multistage")
    ct_maps = model.ct_branch.stem(make_batch()["ct"])
    pet_maps = model.pet_branch.stem(make_batch()["pet"])
    ct_out, _ = model.fusion[0](
        model.ct_branch.stages[0](ct_maps), model.pet_branch.stages[0](pet_maps)
    )
    ct_out.sum().backward()
    assert model.pet_branch.stem.conv.weight.grad.abs().sum() > 0


def test_fusion_block_math_on_known_inputs():
    block = FusionBlock(2).eval()  # batch norm at its initial state: x / sqrt(1 + eps)
    with torch.no_grad():
        for squeeze, channel in ((block.squeeze_ct, 0), (block.squeeze_pet, 1)):
            squeeze.conv.weight.zero_()
            squeeze.conv.weight[0, channel] = 1.0
    ct = torch.arange(2 * 8, dtype=torch.float32).view(1, 2, 2, 2, 2)
    pet = torch.full((1, 2, 2, 2, 2), 0.5)
    pet[:, 1] = 3.0
    ct_out, pet_out = block(ct, pet)
    eps = block.squeeze_ct.adn.N.eps
    fused = (ct[:, 0:1] / math.sqrt(1 + eps)) * (3.0 / math.sqrt(1 + eps))
    torch.testing.assert_close(ct_out, ct + fused)
    torch.testing.assert_close(pet_out, pet + fused)
    # The product is added to every channel alike.
    torch.testing.assert_close(ct_out[:, 1] - ct[:, 1], ct_out[:, 0] - ct[:, 0])


def test_mmtm_gates_on_known_inputs():
    module = MMTM(2, 3, ratio=5)  # joint code of (2 + 3) / 5 = 1 unit
    assert module.fc_squeeze.out_features == 1
    with torch.no_grad():
        for layer in (module.fc_squeeze, module.fc_a, module.fc_b):
            layer.weight.zero_()
            layer.bias.zero_()
    a = torch.rand(2, 2, 3, 3, 3)
    b = torch.rand(2, 3, 3, 3, 3)
    # All weights zero: every gate is 2 * sigmoid(0) = 1, the identity.
    a_out, b_out = module(a, b)
    torch.testing.assert_close(a_out, a)
    torch.testing.assert_close(b_out, b)
    # The joint code reads the mean of B's channel 2; A's channel 0 gate follows it.
    b = torch.zeros(2, 3, 3, 3, 3)
    b[0, 2] = 1.0
    b[1, 2] = 2.0
    with torch.no_grad():
        module.fc_squeeze.weight[0, 2 + 2] = 1.0  # concat order: A's 2 channels, then B's 3
        module.fc_a.weight[0, 0] = 1.0
        module.fc_b.bias[:] = math.log(3.0)  # 2 * sigmoid(log 3) = 1.5
    a_out, b_out = module(a, b)
    expected_gate = 2 * torch.sigmoid(torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(a_out[:, 0], a[:, 0] * expected_gate.view(2, 1, 1, 1))
    torch.testing.assert_close(a_out[:, 1], a[:, 1])
    torch.testing.assert_close(b_out, b * 1.5)
    gate_a, gate_b = module.gates(a, b)
    assert gate_a.shape == (2, 2) and gate_b.shape == (2, 3)


@pytest.mark.parametrize(
    "positions",
    [combo for r in range(5) for combo in itertools.combinations(MMTM_POSITIONS, r)],
)
def test_mmtm_every_position_subset(positions):
    torch.manual_seed(0)
    model = tiny("mmtm", mmtm_positions=positions)
    assert model.positions == positions
    assert sorted(model.mmtm.keys()) == [str(p) for p in positions]
    assert model(make_batch()).shape == (2, 2)


def test_mmtm_streams_follow_resnet18_layout():
    model = tiny("mmtm")
    assert [len(getattr(model.ct_stream, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert model.ct_stream.layer4[0].conv1.out_channels == 32  # 4-8-16 continued by doubling
    full = build_model("mmtm", n_classes=2, in_shape=IN_SHAPE, mmtm_widths=(64, 128, 256, 512))
    assert full.ct_stream.fc.in_features == 512


def test_mmtm_output_is_mean_of_stream_logits():
    torch.manual_seed(0)
    model = tiny("mmtm", mmtm_positions=()).eval()
    batch = make_batch()
    with torch.no_grad():
        ct_logits = model.ct_stream(batch["ct"])  # MONAI's own forward: no fusion in between
        pet_logits = model.pet_stream(batch["pet"])
        torch.testing.assert_close(model(batch), (ct_logits + pet_logits) / 2)


def test_warm_start_copies_streams_and_keeps_new_mmtm_fresh():
    torch.manual_seed(0)
    source = tiny("mmtm", mmtm_positions=(1,))
    with torch.no_grad():  # make the source's weights distinct from any fresh init
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    torch.manual_seed(1)
    target = tiny("mmtm", mmtm_positions=(1, 3))
    fresh_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("mmtm.3.")}
    report = warm_start(target, source)
    target_state, source_state = target.state_dict(), source.state_dict()
    for key, value in source_state.items():
        assert torch.equal(target_state[key], value), key
    for key, value in fresh_before.items():
        assert torch.equal(target_state[key], value), key
    assert set(report["fresh"]) == set(fresh_before)
    assert report["unused"] == []
    assert any(k.startswith("ct_stream.") for k in report["copied"])
    assert any(k.startswith("mmtm.1.") for k in report["copied"])


def test_warm_start_from_state_dict_and_rejects_other_widths():
    source = tiny("mmtm", mmtm_positions=())
    target = tiny("mmtm", mmtm_positions=(0,))
    report = warm_start(target, source.state_dict())
    assert all(k.startswith("mmtm.0.") for k in report["fresh"])
    wider = build_model("mmtm", n_classes=2, in_shape=IN_SHAPE, widths=(8, 16, 32))
    with pytest.raises(ValueError, match="different widths"):
        warm_start(wider, source)
    with pytest.raises(ValueError, match="share their streams"):
        warm_start(target, tiny("multistage"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_gives_same_output(name):
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = tiny(name).eval()
        with torch.no_grad():
            outputs.append(model(batch_for(name, seed=5)))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_and_bf16_autocast(name):
    torch.manual_seed(0)
    model = tiny(name).eval()
    batch = batch_for(name)
    with torch.no_grad():
        reference = model(batch)
        model = model.to(memory_format=torch.channels_last_3d)
        last = {
            k: v.to(memory_format=torch.channels_last_3d) if v.ndim == 5 else v
            for k, v in batch.items()
        }
        torch.testing.assert_close(model(last), reference, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(last)
    assert low.shape == reference.shape and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), reference, rtol=0.1, atol=0.1)


def test_multistage_default_depth_follows_the_paper():
    model = build_model("multistage", n_classes=2, in_shape=IN_SHAPE, widths=WIDTHS)
    assert len(model.fusion) == 3
    assert [len(stage) for stage in model.ct_branch.stages] == [3, 3, 3]
    assert count_parameters(model) > count_parameters(tiny("multistage"))


def test_mmtm_net_rejects_wrong_layout():
    with pytest.raises(ValueError, match="4 widths"):
        MMTMNet(n_classes=2, widths=(4, 8, 16))
