"""Encoder initialisation (train.init), freezing, the encoder learning rate and the auxiliary
targets, on a tiny ROI cohort through the real ``lungfusion train`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from training_helpers import SHAPE, assert_prediction_columns, write_cohort

from lungfusion.cli import main
from lungfusion.models import build_model
from lungfusion.models.encoders import STACKED, EncoderSpec, build_trunk, scaled_widths
from lungfusion.training.engine import Trainer, TrainSettings
from lungfusion.training.init import encoder_spec_from_config, initialise_encoders

WIDTHS = [4, 8]
SPEC = EncoderSpec("resnet10", widths=scaled_widths(WIDTHS))
NETWORKS = ["ct", "pet", "early", "late", "single_stage", "multistage", "mmtm", "mmcaf"]


def _config(**train) -> dict:
    base = {"widths": WIDTHS, "blocks_per_stage": None, "init": "pretrain", "encoder": "resnet10"}
    return {"train": {**base, **train}, "register": {"target_spacing_mm": [0.977, 0.977, 3.27]}}


def _write_pretrained(root, folds=(0,)) -> dict[str, dict]:
    """encoder.pt files as the pretrain stage writes them, with distinct random weights."""
    states = {}
    for seed, modality in enumerate(("ct", "pet"), start=1):
        torch.manual_seed(seed)
        trunk = build_trunk(SPEC)
        for module in trunk.modules():  # non-default statistics, to see them kept
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-1, 1)
        states[modality] = {k: v.clone() for k, v in trunk.state_dict().items()}
        for fold in folds:
            path = root / modality / f"fold{fold}" / "encoder.pt"
            path.parent.mkdir(parents=True)
            torch.save({"state_dict": states[modality], "spec": SPEC.as_dict()}, path)
    return states


@pytest.mark.parametrize("name", NETWORKS)
def test_warm_start_holds_the_pretrained_encoders_before_the_first_step(name, tmp_path):
    states = _write_pretrained(tmp_path)
    tab = {"n_tabular": 3} if name == "mmcaf" else {}
    model = build_model(
        name, n_classes=2, in_shape=SHAPE, widths=WIDTHS, encoder=SPEC.as_dict(), **tab
    )
    init = initialise_encoders(model, config=_config(), fold=0, pretrain_dir=tmp_path)
    encoders = model.encoders()
    assert set(init.loaded) == set(encoders) and len(init.pretrained_modules) == len(encoders)
    for key, module in encoders.items():
        got = module.state_dict()
        source = states["ct" if key == STACKED else key]
        for k, value in source.items():
            if key == STACKED and k == "conv1.weight":  # CT and PET filters side by side, halved
                expected = torch.cat([states["ct"][k], states["pet"][k]], dim=1) / 2
                assert torch.equal(got[k], expected)
            else:
                assert torch.equal(got[k], value), (name, key, k)


def test_pretrain_init_needs_a_resnet_trunk_and_the_same_spec(tmp_path):
    with pytest.raises(ValueError, match="train.encoder"):
        encoder_spec_from_config(_config(encoder="native"))
    _write_pretrained(tmp_path)
    model = build_model(
        "ct", n_classes=2, in_shape=SHAPE, encoder=EncoderSpec("resnet18").as_dict()
    )
    other = _config(encoder="resnet18", widths=[64, 128, 256, 512])
    with pytest.raises(ValueError, match="rerun the pretrain stage"):
        initialise_encoders(model, config=other, fold=0, pretrain_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="fold3"):
        initialise_encoders(model, config=_config(), fold=3, pretrain_dir=tmp_path)


def test_encoder_learning_rate_and_freezing_follow_the_settings(tmp_path):
    model = build_model("late", n_classes=2, in_shape=SHAPE, encoder=SPEC.as_dict())
    encoders = list(model.encoders().values())
    settings = TrainSettings(lr=1e-3, encoder_lr_factor=0.1, freeze_encoder_epochs=2, device="cpu")
    trainer = Trainer(
        model, settings=settings, out_dir=tmp_path, run_hash="x", pretrained_encoders=encoders
    )
    new, pretrained = trainer._parameter_groups()
    assert new["lr"] == 1e-3 and pretrained["lr"] == pytest.approx(1e-4)
    n_encoder = sum(p.numel() for e in encoders for p in e.parameters())
    assert sum(p.numel() for p in pretrained["params"]) == n_encoder
    assert [trainer.encoders_frozen(e) for e in range(4)] == [True, True, False, False]
    scratch = Trainer(model, settings=settings, out_dir=tmp_path, run_hash="x")
    assert len(scratch._parameter_groups()) == 1 and not scratch.encoders_frozen(0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_cohort")
    roi_dir, sheet = write_cohort(root, n=16)
    folds = root / "folds.tsv"
    io = ["--sample-sheet", str(sheet), "--roi-dir", str(roi_dir)]
    params = {"splits": {"n_folds": 2, "validation_fraction": 0.25, "seed": 0}}
    assert main(["--params", json.dumps(params), "splits", *io, "--out", str(folds)]) == 0
    return {"root": root, "io": io, "folds": folds, "roi_dir": roi_dir, "sheet": sheet}


def _train(cohort, out, model, train: dict, extra=()) -> dict:
    params = {"train": {"epochs": 2, "batch_size": 4, "device": "cpu", **train}}
    argv = ["--params", json.dumps(params), "train", "--model", model, "--fold", "0"]
    argv += ["--folds", str(cohort["folds"]), *cohort["io"], "--out-dir", str(out)]
    assert main([*argv, *extra, "--no-progress"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_a_frozen_encoder_does_not_change_and_the_head_trains(cohort, tmp_path):
    states = _write_pretrained(tmp_path / "pretrain")
    train = {"widths": WIDTHS, "init": "pretrain", "encoder": "resnet10"}
    out = tmp_path / "late"
    summary = _train(
        cohort, out, "late", {**train, "freeze_encoder_epochs": -1},
        ["--pretrain-dir", str(tmp_path / "pretrain")],
    )  # fmt: skip
    assert summary["init"]["mode"] == "pretrain" and set(summary["init"]["loaded"]) == {"ct", "pet"}
    saved = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    for modality in ("ct", "pet"):
        for key, value in states[modality].items():  # weights and batch-norm statistics
            assert torch.equal(saved[f"{modality}_branch.trunk.{key}"], value), key
    fresh = build_model("late", n_classes=2, in_shape=SHAPE, encoder=SPEC.as_dict())
    torch.manual_seed(0)
    head = {k: v for k, v in saved.items() if "head" in k}
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in head.items())
    predictions = assert_prediction_columns(out)
    # predict rebuilds the trunk from the checkpoint and scores as the fold did
    from lungfusion.inference import predict_model

    row = predictions.iloc[0]
    npz = cohort["roi_dir"] / f"{row.patient_id}.npz"
    result = predict_model([out / "model.pt"], npz, has_pet=True, tab_context=None, device="cpu")
    assert result["probabilities"]["SQC"] == pytest.approx(row.prob_SQC, abs=1e-5)


def _features(cohort, tmp_path):
    """A radiomics-like table: the bright cube's volume and mean, known for all but P005."""
    rows = []
    for i in range(16):
        with np.load(cohort["roi_dir"] / f"P{i:03d}.npz") as roi:
            ct = roi["ct"]
        rows.append({"patient_id": f"P{i:03d}", "status": "ok", "lesion_ml": float((ct > 0.5).sum()),
                     "ct_firstorder_Mean": float(ct.mean())})  # fmt: skip
    table = pd.DataFrame(rows)
    table.loc[5, "lesion_ml"] = np.nan
    path = tmp_path / "features.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_auxiliary_heads_train_and_leave_the_prediction_files_as_they_are(cohort, tmp_path):
    features = _features(cohort, tmp_path)
    aux = {"features": ["lesion_ml", "ct_firstorder_Mean"], "weight": 1.0}
    out, plain = tmp_path / "aux", tmp_path / "plain"
    train = {"widths": WIDTHS, "epochs": 4, "lr": 0.01}
    summary = _train(cohort, out, "early", {**train, "aux_targets": aux},
                     ["--radiomics-features", str(features)])  # fmt: skip
    _train(cohort, plain, "early", train)
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert history.train_aux_loss.iloc[-1] < history.train_aux_loss.iloc[0]
    scaling = summary["aux_targets"]["scaling_on_training_patients"]
    assert set(scaling["mean"]) == {"lesion_ml", "ct_firstorder_Mean"}
    a, b = assert_prediction_columns(out), assert_prediction_columns(plain)
    assert list(a.columns) == list(b.columns) and list(a.patient_id) == list(b.patient_id)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert not any(k.startswith("fc.") or "aux" in k for k in saved["state_dict"])
    model = build_model("early", **saved["model"]["build"])
    model.load_state_dict(saved["state_dict"])  # predict rebuilds it without the head


def test_auxiliary_targets_name_a_missing_column(cohort, tmp_path):
    features = _features(cohort, tmp_path)
    with pytest.raises(KeyError, match="sem_nothing"):
        _train(cohort, tmp_path / "x", "ct",
               {"widths": WIDTHS, "aux_targets": {"features": ["sem_nothing"]}},
               ["--radiomics-features", str(features)])  # fmt: skip


def test_a_medicalnet_checkpoint_starts_the_ct_encoder_of_a_trained_network(cohort, tmp_path):
    """train.init file: a MedicalNet-layout ResNet-10 (random weights, written here) for the CT
    encoder; the PET encoder has no file and starts from scratch."""
    from monai.networks.nets import resnet10

    torch.manual_seed(3)
    net = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B",
                   bias_downsample=False)  # fmt: skip
    path = tmp_path / "resnet_10_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    train = {"widths": WIDTHS, "init": "file", "encoder": "resnet10", "epochs": 1,
             "encoder_layout": "medicalnet", "encoder_weights": {"ct": str(path)},
             "freeze_encoder_epochs": -1}  # fmt: skip
    out = tmp_path / "multistage"
    summary = _train(cohort, out, "multistage", train)
    assert list(summary["init"]["loaded"]) == ["ct"]
    record = summary["init"]["loaded"]["ct"]["what"]
    assert record["layout"] == "medicalnet" and record["prefix_stripped"] == "module."
    assert summary["init"]["encoder"]["widths"] == [64, 128, 256, 512]
    saved = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    for key, value in net.state_dict().items():
        assert torch.equal(saved[f"ct_branch.trunk.{key}"], value), key
