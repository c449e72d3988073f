"""Config schema: defaults filled in, and every error names the key at fault."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lungfusion.config import ConfigError, load_config, validate_config


def test_defaults_fill_a_minimal_config():
    config = validate_config({})
    assert config["register"]["target_spacing_mm"] == [0.977, 0.977, 3.27]
    assert config["cohort"]["source"] == "synthetic"
    assert config["synthetic"]["class_prior"] == {"ADC": 0.76, "SQC": 0.24}
    assert config["cohort"]["columns"]["patient_id"] == "patient_id"
    assert config["train"]["lr"] == pytest.approx(1e-3)


def test_repository_config_is_valid(repo_dir):
    config = load_config(repo_dir / "config.yaml")
    assert config["cohort"]["classes"] == ["ADC", "SQC"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"register": {"method": "bspline"}}, "register.method"),
        ({"register": {"target_spacing_mm": [1, 1]}}, "register.target_spacing_mm"),
        ({"synthetic": {"n_patients": "ten"}}, "synthetic.n_patients"),
        ({"register": {"metric": "mi"}}, "register.metric"),
        ({"trian": {}}, "trian"),
        ({"cohort": {"columns": {"patient": "ID"}}}, "cohort.columns.patient"),
        ({"cohort": {"label_from_id": {"pattern": "x"}}}, "cohort.label_from_id.map"),
    ],
)
def test_errors_name_the_key(config, key):
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert f"  {key}:" in str(error.value)


def test_rule_params_override_whole_sections(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"register": {"method": "affine", "seed": 3}}))
    config = load_config(path, overrides={"register": {"method": "none"}})
    assert config["register"]["method"] == "none"
    assert config["register"]["seed"] == 1  # the stale file value is not merged in


def test_snakemake_rejects_a_bad_config_before_any_job(tmp_path, repo_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"register": {"method": "bspline"}}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(repo_dir / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=repo_dir,
    )
    assert result.returncode != 0
    assert "bspline" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_train_settings_defaults_are_the_schemas():
    """The engine's defaults (a run from Python without a config) match the schema's ``train``
    defaults, so both ways of training give the same run."""
    from dataclasses import MISSING, fields

    from lungfusion.config import load_schema
    from lungfusion.training.engine import TrainSettings

    schema = load_schema("config.schema.yaml")["properties"]["train"]["properties"]
    compared = []
    for field in fields(TrainSettings):
        if field.name not in schema:
            continue
        default = field.default if field.default_factory is MISSING else field.default_factory()
        if field.name == "augment":
            keys = schema["augment"]["properties"].keys() & default.keys()
            wanted = {k: schema["augment"]["properties"][k]["default"] for k in keys}
            assert {k: default[k] for k in keys} == wanted
        else:
            assert default == schema[field.name]["default"], field.name
        compared.append(field.name)
    assert {"epochs", "lr", "optimizer", "selection_metric", "augment", "device"} <= set(compared)
