from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from training_helpers import SHAPE, write_cohort

from lungfusion.models import build_model
from lungfusion.training.calibration import apply_calibration
from lungfusion.training.data import make_records, roi_dataset
from lungfusion.training.engine import TrainSettings, cox_loss, train_model
from lungfusion.training.splits import make_folds

FAST = {"flip": True, "rotate_deg": 5.0, "ct_shift_hu": 20.0, "pet_scale": 0.05}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    roi_dir, sheet = write_cohort(root, n=16, without_pet=(3,))
    patients = pd.read_csv(sheet, sep="\t")
    folds = make_folds(patients, n_folds=2, validation_fraction=0.25, seed=0)
    part = folds[folds.fold == 0]
    records = {
        role: make_records(part[part.role == role], roi_dir, classes=("ADC", "SQC"))
        for role in ("train", "val", "test")
    }
    return {"root": root, "roi_dir": roi_dir, "sheet": sheet, "records": records}


def _settings(**changes) -> TrainSettings:
    values = dict(epochs=2, batch_size=4, lr=3e-3, augment=FAST, device="cpu", progress=False)
    values.update(changes)
    return TrainSettings(**values)


def _train(cohort, out_dir, *, settings=None, model_name="early", on_epoch_end=None):
    torch.manual_seed(0)
    model = build_model(model_name, n_classes=2, in_shape=SHAPE, widths=(4, 8), blocks_per_stage=1)
    records = cohort["records"]
    return train_model(
        model,
        fold=0,
        train_records=records["train"],
        val_records=records["val"],
        test_records=records["test"],
        settings=settings or _settings(),
        out_dir=out_dir,
        run_hash="test",
        model_meta={"name": model_name},
        on_epoch_end=on_epoch_end,
    )


@pytest.fixture(scope="module")
def reference_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, _train(cohort, out)


def test_dataset_batches_have_model_shapes(cohort):
    dataset = roi_dataset(cohort["records"]["train"], augment=FAST)
    item = dataset[0]
    assert tuple(item["ct"].shape) == (1, *SHAPE) and item["ct"].dtype == torch.float32
    assert tuple(item["pet"].shape) == (1, *SHAPE)
    assert isinstance(item["ct"], torch.Tensor) and not hasattr(item["ct"], "meta")


def test_training_lowers_loss_and_writes_artifacts(cohort, tmp_path):
    summary = _train(cohort, tmp_path, settings=_settings(epochs=4, augment=None or {}))
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(history.columns[:7]) == [
        "epoch", "train_loss", "val_loss", "val_auc", "val_gmean", "lr", "seconds",
    ]  # fmt: skip
    assert history.epoch.tolist() == [1, 2, 3, 4]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    for name in ("model.pt", "last.pt", "predictions.tsv", "val_predictions.tsv", "summary.json"):
        assert (tmp_path / name).is_file(), name
    predictions = pd.read_csv(tmp_path / "predictions.tsv", sep="\t")
    assert list(predictions.columns) == [
        "patient_id", "fold", "label", "prob_ADC", "prob_SQC", "raw_prob_ADC", "raw_prob_SQC",
    ]  # fmt: skip
    # calibrated on the validation patients: the map written beside the model, order kept
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert calibration["method"] in ("platt", "shift") and calibration["n_val"] == 2
    raw = pd.DataFrame({c: predictions[f"raw_{c}"] for c in ("prob_ADC", "prob_SQC")})
    again = apply_calibration(raw, calibration, ("ADC", "SQC"))
    np.testing.assert_allclose(again.prob_SQC, predictions.prob_SQC, atol=2e-6)
    assert (np.argsort(predictions.prob_SQC) == np.argsort(predictions.raw_prob_SQC)).all()
    test_ids = sorted(r["patient_id"] for r in cohort["records"]["test"])
    assert sorted(predictions.patient_id) == test_ids
    np.testing.assert_allclose(predictions.prob_ADC + predictions.prob_SQC, 1.0, atol=1e-5)
    val = pd.read_csv(tmp_path / "val_predictions.tsv", sep="\t")
    assert sorted(val.patient_id) == sorted(r["patient_id"] for r in cohort["records"]["val"])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary)) and written["calibration"] == calibration
    assert written["n_patients"] == {"train": 6, "val": 2, "test": 8}
    assert 1 <= written["best_epoch"] <= 4 and written["device"] == "cpu"
    checkpoint = torch.load(tmp_path / "model.pt", map_location="cpu")
    assert checkpoint["epoch"] == written["best_epoch"] and checkpoint["classes"] == ["ADC", "SQC"]


def test_same_seed_gives_identical_predictions(cohort, reference_run, tmp_path):
    reference_dir, _ = reference_run
    _train(cohort, tmp_path)
    for name in ("predictions.tsv", "val_predictions.tsv"):
        a = pd.read_csv(reference_dir / name, sep="\t")
        b = pd.read_csv(tmp_path / name, sep="\t")
        pd.testing.assert_frame_equal(a, b)


def test_killed_training_resumes_from_last_checkpoint(cohort, reference_run, tmp_path):
    reference_dir, reference_summary = reference_run

    def kill_after_first_epoch(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _train(cohort, tmp_path, on_epoch_end=kill_after_first_epoch)
    assert not (tmp_path / "summary.json").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 1

    seen = []
    summary = _train(cohort, tmp_path, on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [2]  # continued at the second epoch
    assert summary["resumed_from_epoch"] == 1
    assert summary["best_epoch"] == reference_summary["best_epoch"]
    for name in ("predictions.tsv", "history.tsv"):
        a = pd.read_csv(reference_dir / name, sep="\t").drop(columns="seconds", errors="ignore")
        b = pd.read_csv(tmp_path / name, sep="\t").drop(columns="seconds", errors="ignore")
        pd.testing.assert_frame_equal(a, b)


def test_oversampling_and_auc_selection_run(cohort, tmp_path):
    settings = _settings(epochs=1, imbalance="oversample", selection_metric="auc")
    summary = _train(cohort, tmp_path, settings=settings, model_name="ct")
    assert summary["selection_metric"] == "auc" and summary["status"] == "ok"


def test_settings_are_checked():
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)


def test_cox_loss_matches_a_hand_computed_value():
    risk = torch.tensor([0.5, -0.2, 1.0, 0.0])
    time = torch.tensor([5.0, 3.0, 3.0, 8.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0])
    r = risk.numpy().astype(float)
    expected = -np.mean(
        [
            r[0] - np.log(np.exp(r[[0, 3]]).sum()),
            r[1] - np.log(np.exp(r).sum()),  # tie at t=3: both at risk (Breslow)
            r[3] - np.log(np.exp(r[3])),
        ]
    )
    assert float(cox_loss(risk, time, event)) == pytest.approx(expected, rel=1e-6)
    assert float(cox_loss(risk, time, torch.zeros(4))) == 0.0


def test_survival_training_writes_risks(cohort, tmp_path):
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    folds = make_folds(sheet, n_folds=2, seed=0, stratify_column="event")
    part = folds[folds.fold == 0].merge(sheet[["patient_id", "survival_days", "event"]])
    records = {
        role: make_records(part[part.role == role], cohort["roi_dir"], task="survival")
        for role in ("train", "val", "test")
    }
    model = build_model("ct", n_classes=1, in_shape=SHAPE, widths=(4, 8), blocks_per_stage=1)
    summary = train_model(
        model, fold=0, train_records=records["train"], val_records=records["val"],
        test_records=records["test"], settings=_settings(epochs=1, task="survival"),
        out_dir=tmp_path, run_hash="s",
    )  # fmt: skip
    predictions = pd.read_csv(tmp_path / "predictions.tsv", sep="\t")
    assert list(predictions.columns) == ["patient_id", "fold", "risk", "survival_days", "event"]
    assert np.isfinite(predictions.risk).all()
    assert "val_cindex" in pd.read_csv(tmp_path / "history.tsv", sep="\t").columns
    assert summary["task"] == "survival"


def test_train_command_counts_patients_without_pet(cohort, tmp_path):
    from lungfusion.cli import main

    folds = tmp_path / "folds.tsv"
    params = {
        "splits": {"n_folds": 2, "validation_fraction": 0.25, "seed": 0},
        "train": {"epochs": 1, "batch_size": 4, "widths": [4, 8], "device": "cpu"},
    }
    common = ["--params", json.dumps(params)]
    io = ["--sample-sheet", str(cohort["sheet"]), "--roi-dir", str(cohort["roi_dir"])]
    assert main([*common, "splits", *io, "--out", str(folds)]) == 0
    for model in ("pet", "ct"):
        out = tmp_path / model
        argv = [*common, "train", "--model", model, "--fold", "0", "--folds", str(folds), *io]
        assert main([*argv, "--out-dir", str(out), "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        expected = 1 if model == "pet" else 0  # P003 has no PET
        assert summary["excluded_missing_modality"]["count"] == expected
        assert sum(summary["n_patients"].values()) == 16 - expected


def test_cindex_is_nan_when_nothing_can_be_compared():
    from lungfusion.evaluation.survival import harrell_c as cindex_score

    assert np.isnan(cindex_score(np.array([100.0]), np.array([1]), np.array([0.3])))
    assert np.isnan(cindex_score(np.array([100.0, 200.0]), np.array([0, 0]), np.array([0.3, 0.1])))
    assert cindex_score(np.array([100.0, 200.0]), np.array([1, 1]), np.array([0.9, 0.1])) == 1.0


def test_augmentation_moves_intensities_as_scanners_do():
    """CT shifts by at most ct_shift_hu (on the ROI's window), PET scales by 1 +- pet_scale,
    and CT and PET are flipped together."""
    from monai.transforms import Compose  # noqa: PLC0415

    from lungfusion.training.data import augmentation  # noqa: PLC0415

    rng = np.random.default_rng(0)
    ct = rng.uniform(0.3, 0.7, (1, 4, 6, 8)).astype(np.float32)
    pet = rng.uniform(0.05, 0.5, (1, 4, 6, 8)).astype(np.float32)
    pet[0, :, :, :4] = 0.9  # left half hot: a flip shows in both channels alike
    ct[0, :, :, :4] += 0.2
    window = (-1000.0, 1000.0)
    transform = Compose(
        augmentation(flip=True, rotate_deg=0, ct_shift_hu=20.0, pet_scale=0.1, ct_window=window)
    )
    transform.set_random_state(seed=3)
    shifts, scales, flips = set(), set(), set()
    for _ in range(40):
        out = transform({"ct": torch.tensor(ct), "pet": torch.tensor(pet)})
        out_ct, out_pet = np.asarray(out["ct"]), np.asarray(out["pet"])
        flipped = bool(out_pet[0, 0, 0, -1] > out_pet[0, 0, 0, 0])
        assert flipped == bool(out_ct[0, 0, 0, -1] > out_ct[0, 0, 0, 0])
        ref_ct, ref_pet = (ct[..., ::-1], pet[..., ::-1]) if flipped else (ct, pet)
        shift_hu = (out_ct - ref_ct) * (window[1] - window[0])
        assert np.ptp(shift_hu) < 1e-3 and abs(shift_hu.mean()) <= 20.0 + 1e-3
        scale = out_pet / ref_pet
        assert np.ptp(scale) < 1e-5 and 0.9 - 1e-6 <= scale.mean() <= 1.1 + 1e-6
        shifts.add(round(float(shift_hu.mean()), 3))
        scales.add(round(float(scale.mean()), 4))
        flips.add(flipped)
    assert len(shifts) > 5 and len(scales) > 5 and flips == {True, False}
    with pytest.raises(ValueError, match="negative"):
        augmentation(ct_shift_hu=-1.0)


def _in_plane_symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The eight turns and mirrors of (..., y, x)."""
    turned = [np.rot90(image, k, axes=(-2, -1)) for k in range(4)]
    return turned + [t[..., ::-1] for t in turned]


def test_rotate90_draws_all_eight_in_plane_symmetries_for_ct_and_pet_alike():
    from monai.transforms import Compose  # noqa: PLC0415

    from lungfusion.training.data import augmentation  # noqa: PLC0415

    ct = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)  # no symmetry of its own
    pet = ct * 10.0
    transform = Compose(
        augmentation(flip=True, rotate90=True, rotate_deg=0, ct_shift_hu=0, pet_scale=0)
    )
    transform.set_random_state(seed=1)
    candidates = _in_plane_symmetries(ct)
    seen = []
    for _ in range(200):
        out = transform({"ct": torch.tensor(ct), "pet": torch.tensor(pet)})
        out_ct, out_pet = np.asarray(out["ct"]), np.asarray(out["pet"])
        matches = [k for k, c in enumerate(candidates) if np.array_equal(out_ct, c)]
        assert len(matches) == 1, "the output is not a turn or mirror of the input"
        np.testing.assert_array_equal(out_pet, out_ct * 10.0)
        seen.append(matches[0])
    counts = np.bincount(seen, minlength=8)
    assert (counts > 10).all(), counts  # each of the 8 about 25 times


def test_pet_shift_moves_the_pet_alone_by_at_most_the_shift_in_mm(tmp_path):
    """train.augment.pet_shift_mm: the PET hot spot's centre moves by up to the shift, in mm
    through the ROI's own spacing (z voxels here are 2 mm), the CT stays; 0 adds nothing."""
    from monai.transforms import Compose  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    from lungfusion.training.data import LoadRoid, RandPetShiftd, augmentation  # noqa: PLC0415

    spacing = np.array([1.0, 1.0, 2.0])  # x, y, z mm
    z, y, x = np.indices((16, 32, 32))
    ball = np.sqrt(((z - 8) * 2.0) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) <= 4.0
    pet = np.where(ball, 0.9, 0.05).astype(np.float32)
    ct = np.random.default_rng(0).uniform(0, 1, pet.shape).astype(np.float32)
    np.savez(tmp_path / "P1.npz", ct=ct, pet=pet, has_pet=np.array(True), spacing=spacing)
    sample = LoadRoid()({"path": str(tmp_path / "P1.npz")})
    np.testing.assert_array_equal(sample["spacing"], spacing)

    def centre_mm(image):
        return np.asarray(ndimage.center_of_mass(image[0] - image.min()))[::-1] * spacing

    none = dict(flip=False, rotate_deg=0, ct_shift_hu=0, pet_scale=0)
    assert augmentation(**none, pet_shift_mm=0) == []
    transform = Compose(augmentation(**none, pet_shift_mm=6.0))
    assert [type(t) for t in transform.transforms] == [RandPetShiftd]
    transform.set_random_state(seed=5)
    moves = []
    for _ in range(60):
        out = transform(dict(sample))
        np.testing.assert_array_equal(out["ct"], sample["ct"])
        assert out["pet"].shape == sample["pet"].shape
        moves.append(centre_mm(out["pet"]) - centre_mm(sample["pet"]))
    lengths = np.linalg.norm(moves, axis=1)
    assert lengths.max() <= 6.0 + 0.1  # linear resampling blurs the ball a little
    assert (lengths < 1e-6).sum() >= 15 and (lengths > 2.0).sum() >= 10  # half are shifted
    assert np.abs(np.asarray(moves)[:, 2]).max() > 1.0  # along z too, 2 mm voxels
    with pytest.raises(ValueError, match="spacing"):
        RandPetShiftd(shift_mm=3.0, prob=1.0)({"ct": ct[None], "pet": pet[None], "path": "P2"})
    with pytest.raises(ValueError, match="negative"):
        augmentation(pet_shift_mm=-1.0)
    with pytest.raises(ValueError, match="shift_mm"):
        RandPetShiftd(shift_mm=2.0, prob=1.5)


def test_test_time_augmentation_is_invariant_and_used_for_predictions(cohort, tmp_path):
    from lungfusion.training.engine import symmetric_logits  # noqa: PLC0415

    torch.manual_seed(0)
    model = build_model("early", n_classes=2, in_shape=SHAPE, widths=(4, 8), blocks_per_stage=1)
    model.eval()
    rng = np.random.default_rng(0)
    batch = {
        "ct": torch.tensor(rng.uniform(0, 1, (2, 1, *SHAPE)), dtype=torch.float32),
        "pet": torch.tensor(rng.uniform(0, 1, (2, 1, *SHAPE)), dtype=torch.float32),
        "has_pet": torch.tensor([True, True]),
    }
    with torch.no_grad():
        mean = symmetric_logits(model, batch)
        by_hand = []
        for ct, pet in zip(
            _in_plane_symmetries(batch["ct"].numpy()),
            _in_plane_symmetries(batch["pet"].numpy()),
            strict=True,
        ):
            view = {**batch, "ct": torch.tensor(ct.copy()), "pet": torch.tensor(pet.copy())}
            by_hand.append(model(view))
        torch.testing.assert_close(mean, torch.stack(by_hand).mean(0), rtol=1e-5, atol=1e-6)
        turned = {**batch, "ct": batch["ct"].rot90(1, (-2, -1)).flip(-1)}
        turned["pet"] = batch["pet"].rot90(1, (-2, -1)).flip(-1)
        torch.testing.assert_close(symmetric_logits(model, turned), mean, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(turned), model(batch), atol=1e-4)  # the net alone is not

    augment = {**FAST, "rotate90": True}
    summary = _train(cohort, tmp_path, settings=_settings(augment=augment, tta=True))
    assert summary["settings"]["tta"] is True
    payload = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=False)
    assert payload["tta"] is True
    model = build_model("early", n_classes=2, in_shape=SHAPE, widths=(4, 8), blocks_per_stage=1)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    test = roi_dataset(cohort["records"]["test"])
    with torch.no_grad():
        probs = [
            torch.softmax(
                symmetric_logits(
                    model, {k: v[None] for k, v in test[i].items() if k in ("ct", "pet")}
                ),
                dim=1,
            )[0, 1].item()
            for i in range(len(test))
        ]
    table = pd.read_csv(tmp_path / "predictions.tsv", sep="\t")
    np.testing.assert_allclose(table.raw_prob_SQC, probs, atol=1e-5)  # before calibration


def test_turning_the_roi_needs_square_slices(tmp_path):
    from lungfusion.training.engine import _check_square_slices  # noqa: PLC0415

    path = tmp_path / "p.npz"
    np.savez(path, ct=np.zeros((4, 6, 8), np.float32), pet=np.zeros((4, 6, 8), np.float32))
    with pytest.raises(ValueError, match="square slices; roi.shape gives 8 x 6"):
        _check_square_slices({"path": str(path)})


def test_weight_average_is_what_is_selected_scored_and_resumed(cohort, tmp_path):
    """With ema_decay, model.pt holds the moving average of the weights (not the last step's),
    the held-out predictions come from it, and a killed run resumes the average too."""
    settings = _settings(epochs=2, ema_decay=0.8, selection_metric="loss")
    whole = tmp_path / "whole"
    summary = _train(cohort, whole, settings=settings)
    assert summary["settings"]["ema_decay"] == 0.8
    last = torch.load(whole / "last.pt", weights_only=False)
    best = torch.load(whole / "model.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in last["ema_state"].items()}
    n_train = len(cohort["records"]["train"])
    steps_per_epoch = n_train // 4 + (n_train % 4 > 1)  # batch 4; a lone last sample is dropped
    assert averaged.pop("n_averaged").item() == 2 * steps_per_epoch
    weights = [k for k in averaged if k.endswith(".weight")]
    assert any(not torch.equal(averaged[k], last["model_state"][k]) for k in weights)
    if best["epoch"] == 2:  # the average after the last step is the checkpoint
        for k in weights:
            torch.testing.assert_close(best["state_dict"][k], averaged[k])

    def kill_after_first_epoch(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _train(cohort, resumed, settings=settings, on_epoch_end=kill_after_first_epoch)
    _train(cohort, resumed, settings=settings)
    for name in ("predictions.tsv", "history.tsv"):
        a = pd.read_csv(whole / name, sep="\t").drop(columns="seconds", errors="ignore")
        b = pd.read_csv(resumed / name, sep="\t").drop(columns="seconds", errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="ema_decay"):
        _settings(ema_decay=1.0)


def test_a_validation_split_without_pet_names_the_fold_and_its_patients(cohort):
    from lungfusion.training.fold import prepare_fold

    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    folds = make_folds(sheet, n_folds=2, validation_fraction=0.25, seed=0)
    val = folds[(folds.fold == 0) & (folds.role == "val")].patient_id
    folds.loc[folds.patient_id.isin(val), "has_pet"] = False  # as if none of them had one
    common = dict(folds=folds, fold=0, roi_dir=cohort["roi_dir"], sheet=sheet,
                  task="classification", classes=("ADC", "SQC"))  # fmt: skip
    with pytest.raises(ValueError, match=rf"fold 0: none of its {len(val)} val patients has "
                       rf"CT and PET \(left out: {', '.join(sorted(val))}\)"):  # fmt: skip
        prepare_fold(**common, modalities={"ct", "pet"})
    assert len(prepare_fold(**common, modalities={"ct"}).val) == len(val)
