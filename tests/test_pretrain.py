"""Label-free pretraining (training/pretrain.py): which ROIs a fold reads, that the
reconstruction and the descriptor losses fall, that the saved encoder loads into the trunk, and
the rule's wiring."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lungfusion import cli
from lungfusion.models.encoders import EncoderSpec, build_trunk
from lungfusion.training import pretrain as pretrain_module
from lungfusion.training.pretrain import pretrain_encoder, pretrain_patients

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 32, 32)  # z, y, x
N_LABELLED = 12
CONFIG = {
    "train": {"encoder": "resnet10", "widths": [4, 8, 16], "device": "cpu"},
    "pretrain": {"epochs": 2, "batch_size": 4, "validation_fraction": 0.2},
}


def write_roi(path: Path, seed: int, *, has_pet: bool = True) -> dict:
    """A smooth blob at a random place on a noisy background, windowed to [0, 1]; returns its
    descriptors as the radiomics table would hold them (log volume, log peak uptake)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    centre = rng.uniform([5, 10, 10], [11, 22, 22])
    radius = rng.uniform(3, 6)
    distance = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / radius**2
    blob = np.exp(-distance).astype(np.float32)
    ct = np.clip(0.3 + 0.6 * blob + rng.normal(0, 0.02, SHAPE), 0, 1).astype(np.float32)
    uptake = rng.uniform(0.5, 1.0)
    pet = (blob * uptake).astype(np.float32) if has_pet else np.zeros_like(ct)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ct=ct, pet=pet, has_pet=np.bool_(has_pet))
    return {
        "sem_log_volume_ml": 3 * np.log(radius),
        "sem_log_suvmax": np.log(uptake) if has_pet else np.nan,
    }


@pytest.fixture
def cohort(tmp_path) -> dict:
    """12 labelled patients in 2 folds (train/val/test), 2 unlabelled, 2 extra-folder ROIs;
    p03 has no PET."""
    roi_dir = tmp_path / "roi"
    labelled = [f"p{i:02d}" for i in range(N_LABELLED)]
    unlabelled = ["u00", "u01"]
    descriptors = {}
    for i, pid in enumerate(labelled + unlabelled):
        descriptors[pid] = write_roi(roi_dir / f"{pid}.npz", i, has_pet=pid != "p03")
    # the radiomics table: p05 failed (no lesion found), the extra folder's ROIs are not in it
    features = pd.DataFrame.from_dict(descriptors, orient="index").rename_axis("patient_id")
    features.loc["p05"] = np.nan
    others = (
        "sem_solid_fraction",
        "sem_cavity_fraction",
        "loc_lateral_fraction",
        "sem_pet_core_ratio",
    )
    for column in others:
        features[column] = np.nan  # the other default descriptors: not computed here
    features_path = tmp_path / "features.tsv"
    features.reset_index().to_csv(features_path, sep="\t", index=False)
    extra = tmp_path / "extra"
    for i in range(2):
        write_roi(extra / f"x{i}.npz", 100 + i)
    rows = []
    for fold in range(2):
        for i, pid in enumerate(labelled):
            test = (i % 2) == fold
            role = "test" if test else ("val" if i in (1 + fold, 5 + fold) else "train")
            rows.append(
                {"patient_id": pid, "label": "ADC" if i % 3 else "SQC", "fold": fold,
                 "role": role, "has_ct": True, "has_pet": pid != "p03"}
            )  # fmt: skip
    folds = pd.DataFrame(rows)
    folds_path = tmp_path / "folds.tsv"
    folds.to_csv(folds_path, sep="\t", index=False)
    cohort_rows = [
        {"patient_id": pid, "label": "ADC", "included": "yes", "roi_status": "ok"}
        for pid in labelled
    ] + [
        {"patient_id": pid, "label": "", "included": "no", "roi_status": "ok"} for pid in unlabelled
    ]
    cohort_path = tmp_path / "cohort.tsv"
    pd.DataFrame(cohort_rows).to_csv(cohort_path, sep="\t", index=False)
    return {
        "roi_dir": roi_dir, "folds": folds, "folds_path": folds_path, "cohort_path": cohort_path,
        "extra": extra, "unlabelled": unlabelled, "dir": tmp_path, "features": features_path,
    }  # fmt: skip


def run_pretrain(cohort: dict, out_dir: Path, *, modality="ct", fold=0, **pretrain) -> dict:
    config = {**CONFIG, "pretrain": {**CONFIG["pretrain"], **pretrain}}
    return pretrain_encoder(
        modality=modality, fold=fold, folds_path=cohort["folds_path"], roi_dir=cohort["roi_dir"],
        out_dir=out_dir, config=config, cohort_path=cohort["cohort_path"],
        radiomics_features=cohort["features"], progress=False,
    )  # fmt: skip


def test_the_reconstruction_loss_falls(cohort, tmp_path):
    summary = run_pretrain(cohort, tmp_path / "out", epochs=6, lr=0.01)
    history = pd.read_csv(tmp_path / "out" / "history.tsv", sep="\t")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "seconds"]
    assert len(history) == 6
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    assert summary["best_epoch"] == int(history.val_loss.idxmin()) + 1
    assert summary["device"] == "cpu"


def test_the_command_writes_an_encoder_that_loads_into_the_trunk_strictly(cohort, tmp_path):
    out = tmp_path / "out"
    params = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "epochs": 1}}
    paths = {
        "--folds": cohort["folds_path"], "--cohort": cohort["cohort_path"],
        "--roi-dir": cohort["roi_dir"], "--out-dir": out,
    }  # fmt: skip
    argv = ["--params", json.dumps(params), "pretrain", "--modality", "ct", "--fold", "0"]
    argv += [str(part) for pair in paths.items() for part in pair] + ["--no-progress"]
    assert cli.main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"encoder.pt", "history.tsv", "summary.json"}
    checkpoint = torch.load(out / "encoder.pt", weights_only=False)
    spec = EncoderSpec.from_value(checkpoint["spec"])
    assert spec.arch == "resnet10" and spec.widths == (4, 8, 16, 32)
    trunk = build_trunk(spec, in_channels=1)
    trunk.load_state_dict(checkpoint["state_dict"], strict=True)
    assert set(checkpoint["state_dict"]) == set(trunk.state_dict())
    assert checkpoint["modality"] == "ct" and checkpoint["fold"] == 0
    assert checkpoint["objective"] == "masked"


def test_the_stages_encoders_start_a_ct_pet_network(cohort, tmp_path):
    """train.init pretrain reads what this stage wrote (same spec, same keys)."""
    from lungfusion.models import build_model
    from lungfusion.training.init import encoder_spec_from_config, initialise_encoders

    for modality in ("ct", "pet"):
        run_pretrain(
            cohort, tmp_path / "pretrain" / modality / "fold0", modality=modality, epochs=1
        )
    config = {"train": {**CONFIG["train"], "init": "pretrain"}}
    spec = encoder_spec_from_config(config)
    model = build_model(
        "late", n_classes=2, in_shape=SHAPE, widths=[4, 8, 16], encoder=spec.as_dict()
    )
    init = initialise_encoders(model, config=config, fold=0, pretrain_dir=tmp_path / "pretrain")
    assert set(init.loaded) == {"ct", "pet"}
    saved = torch.load(tmp_path / "pretrain/pet/fold0/encoder.pt", weights_only=False)
    got = model.encoders()["pet"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in saved["state_dict"].items())


def test_the_descriptor_loss_falls_and_the_encoder_loads_into_the_trunk(cohort, tmp_path):
    """objective descriptors: the pooled encoder learns the lesion's size (the CT default's
    columns that have a value: the others are dropped), standardised on the fit patients."""
    summary = run_pretrain(
        cohort, tmp_path / "out", epochs=8, lr=0.01, objective="descriptors",
        validation_fraction=0,
    )  # fmt: skip
    history = pd.read_csv(tmp_path / "out" / "history.tsv", sep="\t")
    assert history.train_loss.iloc[-1] < 0.5 * history.train_loss.iloc[0]
    scaling = summary["descriptors"]
    assert scaling["columns"] == ["sem_log_volume_ml"]
    checkpoint = torch.load(tmp_path / "out" / "encoder.pt", weights_only=False)
    volumes = pd.read_csv(cohort["features"], sep="\t").set_index("patient_id").sem_log_volume_ml
    fit_patients = checkpoint["patients"]  # no validation share: every one is fitted on
    assert "p05" not in fit_patients
    assert scaling["mean"]["sem_log_volume_ml"] == pytest.approx(volumes[fit_patients].mean())
    assert checkpoint["objective"] == "descriptors" and checkpoint["descriptors"] == scaling
    trunk = build_trunk(EncoderSpec.from_value(checkpoint["spec"]), in_channels=1)
    trunk.load_state_dict(checkpoint["state_dict"], strict=True)


def test_descriptor_pretraining_reads_only_patients_with_descriptors(cohort, tmp_path, spy):
    """p05's lesion failed and the extra folder is not in the table: neither is read; the
    fold's test patients stay out as with the masked objective; PET reads its own descriptor."""
    summary = run_pretrain(
        cohort, tmp_path / "out", modality="pet", epochs=1, objective="descriptors",
        extra_roi_dirs=[str(cohort["extra"])],
    )  # fmt: skip
    folds = cohort["folds"]
    test = set(folds[(folds.fold == 0) & (folds.role == "test")].patient_id)
    assert "p05" not in spy and "p03" not in spy and not test & set(spy)
    assert not {"x0", "x1"} & set(spy) and set(cohort["unlabelled"]) <= set(spy)
    assert summary["skipped"]["no_descriptors"] == 3  # p05 (a validation patient), x0, x1
    assert summary["descriptors"]["columns"] == ["sem_log_suvmax"]


def test_a_descriptor_missing_from_the_table_is_named(cohort, tmp_path):
    with pytest.raises(
        KeyError, match=r"pretrain.descriptors.ct: \['sem_spiculation'\].*features.tsv"
    ):
        run_pretrain(
            cohort, tmp_path / "out", epochs=1, objective="descriptors",
            descriptors={"ct": ["sem_log_volume_ml", "sem_spiculation"]},
        )  # fmt: skip
    with pytest.raises(ValueError, match="--radiomics-features"):
        pretrain_encoder(
            modality="ct", fold=0, folds_path=cohort["folds_path"], roi_dir=cohort["roi_dir"],
            out_dir=tmp_path / "out", progress=False,
            config={**CONFIG, "pretrain": {**CONFIG["pretrain"], "objective": "descriptors"}},
        )  # fmt: skip


def test_without_validation_rois_the_last_epoch_is_kept(cohort, tmp_path):
    summary = run_pretrain(cohort, tmp_path / "out", epochs=2, validation_fraction=0)
    assert summary["n_validation"] == 0 and summary["best_epoch"] == 2
    assert summary["final_val_loss"] is None
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["best_val_loss"] is None


def test_a_rerun_repeats_exactly(cohort, tmp_path):
    run_pretrain(cohort, tmp_path / "a", epochs=1)
    run_pretrain(cohort, tmp_path / "b", epochs=1)
    a, b = (pd.read_csv(tmp_path / d / "history.tsv", sep="\t") for d in "ab")
    assert np.allclose(a.train_loss, b.train_loss) and np.allclose(a.val_loss, b.val_loss)


@pytest.fixture
def spy(monkeypatch) -> list[str]:
    """Every ROI file that reaches a pretraining dataset (fit or validation)."""
    seen: list[str] = []
    original = pretrain_module.pretrain_dataset

    def recording(paths, **kwargs):
        seen.extend(Path(p).stem for p in paths)
        return original(paths, **kwargs)

    monkeypatch.setattr(pretrain_module, "pretrain_dataset", recording)
    return seen


@pytest.mark.parametrize("transductive", [False, True])
def test_test_patients_reach_pretraining_only_when_transductive(
    cohort, tmp_path, spy, transductive
):
    summary = run_pretrain(
        cohort, tmp_path / "out", epochs=1, transductive=transductive,
        extra_roi_dirs=[str(cohort["extra"])],
    )  # fmt: skip
    folds = cohort["folds"]
    roles = folds[folds.fold == 0].groupby("role").patient_id.apply(set)
    seen = set(spy)
    assert len(spy) == len(seen)  # each file once
    assert roles["train"] | roles["val"] <= seen
    assert set(cohort["unlabelled"]) <= seen and {"x0", "x1"} <= seen
    assert bool(roles["test"] & seen) is transductive
    assert summary["transductive"] is transductive
    counts = summary["counts"]
    assert counts["test"] == (len(roles["test"]) if transductive else 0)
    assert counts["unlabelled"] == 2 and counts["extra"] == 2


def test_an_extra_folder_cannot_smuggle_test_patients_in(cohort):
    """An extra folder pointed at the cohort's own ROIs adds only the non-test files."""
    inputs = pretrain_patients(
        folds_path=cohort["folds_path"], fold=1, roi_dir=cohort["roi_dir"], modality="ct",
        cohort_path=cohort["cohort_path"], extra_roi_dirs=[cohort["roi_dir"]],
    )  # fmt: skip
    folds = cohort["folds"]
    test = set(folds[(folds.fold == 1) & (folds.role == "test")].patient_id)
    assert not test & set(inputs.patients)
    assert inputs.counts["extra"] == 0  # the others were already in, once
    assert len(set(inputs.paths)) == len(inputs.paths)


def test_pet_pretraining_reads_patients_with_pet_only(cohort):
    kwargs = {"folds_path": cohort["folds_path"], "fold": 0, "roi_dir": cohort["roi_dir"]}
    ct = pretrain_patients(**kwargs, modality="ct", cohort_path=cohort["cohort_path"])
    pet = pretrain_patients(**kwargs, modality="pet", cohort_path=cohort["cohort_path"])
    assert "p03" in ct.patients and "p03" not in pet.patients
    assert pet.skipped["no_pet"] == 1
    unlabelled = pretrain_patients(
        **kwargs, modality="ct", cohort_path=cohort["cohort_path"], include_unlabelled=False
    )
    assert unlabelled.counts["unlabelled"] == 0 and ct.counts["unlabelled"] == 2


# ------------------------------------------------------------------------------ the workflow


def dry_run(tmp_path: Path, init: str, objective: str = "masked") -> str:
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["train"].update(
        init=init, encoder="resnet10", models=["ct", "early", "clinical", "sfsa"]
    )
    config["pretrain"] = {"objective": objective}
    config_path = tmp_path / f"config_{init}_{objective}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(config_path),
            "--cores",
            "1",
            "--dry-run",
            "--printshellcmds",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def jobs(output: str, rule: str) -> list[dict]:
    """The dry run's jobs of ``rule``: wildcards (dict), inputs (list) and shell command."""
    found = []
    for block in re.split(r"^rule ", output, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition(":\n")
        if name != rule:
            continue
        fields = dict(re.findall(r"^\s*(input|wildcards|Shell command): (.*)$", body, re.MULTILINE))
        wildcards = dict(w.split("=", 1) for w in fields.get("wildcards", "").split(", ") if w)
        inputs = fields.get("input", "").split(", ")
        found.append({"wildcards": wildcards, "input": inputs, "shell": fields["Shell command"]})
    return found


@pytest.mark.workflow
def test_init_pretrain_schedules_one_pretrain_job_per_modality_and_fold(tmp_path):
    output = dry_run(tmp_path, "pretrain")
    pretrain = jobs(output, "pretrain")
    assert sorted((j["wildcards"]["modality"], j["wildcards"]["fold"]) for j in pretrain) == [
        (m, f) for m in ("ct", "pet") for f in ("0", "1")
    ]
    assert all("results/splits/cohort.tsv" in j["input"] for j in pretrain)
    assert not any("--radiomics-features" in j["shell"] for j in pretrain)
    # each network's train job takes the encoders of the modalities it reads, for its fold
    # (the tiny config's fusion-depth grid cells and the integrator's pet submodel train too)
    expected = {"ct": ["ct"], "pet": ["pet"], "early": ["ct", "pet"], "clinical": []}
    train = jobs(output, "train")
    assert {"ct", "early", "clinical"} <= {j["wildcards"]["model"] for j in train}
    for job in train:
        model, fold = job["wildcards"]["model"], job["wildcards"]["fold"]
        modalities = expected.get(model, ["ct", "pet"])  # the grid cells are multistage
        encoders = [p for p in job["input"] if p.startswith("results/pretrain/")]
        assert encoders == [f"results/pretrain/{m}/fold{fold}/encoder.pt" for m in modalities]
        assert ("--pretrain-dir results/pretrain " in job["shell"]) is bool(modalities)
    # the SFSA search trains MMTM candidates (CT and PET) from the same encoders
    (search,) = [job for job in jobs(output, "sfsa") if job["wildcards"]["fold"] == "1"]
    encoders = [p for p in search["input"] if p.startswith("results/pretrain/")]
    assert encoders == [f"results/pretrain/{m}/fold1/encoder.pt" for m in ("ct", "pet")]
    assert "--pretrain-dir results/pretrain " in search["shell"]


@pytest.mark.workflow
def test_init_scratch_schedules_no_pretraining(tmp_path):
    output = dry_run(tmp_path, "scratch")
    assert not jobs(output, "pretrain")
    assert jobs(output, "train") and jobs(output, "sfsa")
    assert "results/pretrain/" not in output and "--pretrain-dir" not in output


@pytest.mark.workflow
def test_the_descriptors_objective_hands_the_radiomics_table_to_pretraining(tmp_path):
    pretrain = jobs(dry_run(tmp_path, "pretrain", objective="descriptors"), "pretrain")
    assert len(pretrain) == 4
    for job in pretrain:
        assert "results/radiomics/features.tsv" in job["input"]
        assert "--radiomics-features results/radiomics/features.tsv " in job["shell"]
