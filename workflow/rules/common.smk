import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# The package's source must import inside a conda env that does not install it, so jobs get
# it on PYTHONPATH. Without conda, jobs use the Python that runs Snakemake (e.g. .venv's, even
# when the venv is not activated); with --use-conda the env's activation puts its own first.
SRC_DIR = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC_DIR))
_inherited = dict(os.environ)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (str(SRC_DIR), _inherited.get("PYTHONPATH")) if p
    ),
    PATH=os.pathsep.join(
        (str(Path(sys.executable).parent), _inherited.get("PATH", ""))
    ),
)

from lungfusion.samplesheet import read_sheet  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
COHORT = config["cohort"]
SYNTHETIC = COHORT["source"] == "synthetic"
SAMPLE_SHEET = (
    str(Path(config["synthetic"]["out_dir"]) / "clinical.tsv")
    if SYNTHETIC
    else COHORT["sample_sheet"]
)
DICOM_ROOT = (
    str(Path(config["synthetic"]["out_dir"]) / "dicom")
    if SYNTHETIC
    else COHORT["dicom_root"]
)


def read_samples():
    """The sample sheet, checked; None while the synthetic cohort is not generated yet."""
    if not Path(SAMPLE_SHEET).exists():
        if SYNTHETIC:
            return None
        raise ValueError(
            f"sample sheet not found: {SAMPLE_SHEET} (cohort.sample_sheet)"
        )
    samples = read_sheet(SAMPLE_SHEET, COHORT)
    validate(samples, schema="../schemas/samples.schema.yaml")
    return samples


def patient_ids():
    if SYNTHETIC:
        # The generated sheet may be stale (n_patients changed); the synth rule's params
        # change with it, so the cohort is regenerated for exactly these IDs.
        from lungfusion.synth.ids import patient_ids as synthetic_ids

        read_samples()  # still checks a sheet that exists
        return synthetic_ids(config["synthetic"]["n_patients"])
    return list(read_samples()["patient_id"])


PATIENTS = patient_ids()


wildcard_constraints:
    pid="[A-Za-z0-9][A-Za-z0-9._-]*",
    model="[a-z_]+(_L[0-9]+_N[0-9]+)?",
    fold="[0-9]+",


def sections(*names, **replaced):
    """The config sections a stage reads, as JSON: a change in them reruns the stage.
    ``replaced``: sections given instead of the config's (the external collection's cohort).
    """
    return json.dumps(
        {name: replaced.get(name, config[name]) for name in names}, sort_keys=True
    )


# train keys no single model's training reads, and the table models' and mmcaf's own sections:
# adding a model or a grid cell, or retuning another model, leaves a trained one as it is
RUN_WIDE_TRAIN_KEYS = ("models", "multistage", "sfsa_epochs", "sfsa_exhaustive")
MODEL_SECTIONS = ("clinical", "radiomics", "semantic", "clinical_net", "mmcaf")


def model_sections(model, *names):
    """``sections(*names)`` with only the train keys that shape ``model`` (sfsa keeps its own)."""
    train = {
        key: value
        for key, value in config["train"].items()
        if (
            key not in RUN_WIDE_TRAIN_KEYS
            or (model == "sfsa" and key.startswith("sfsa"))
        )
        and (key not in MODEL_SECTIONS or key == model)
    }
    return sections(*names, train=train)


def train_params(wildcards):
    return model_sections(wildcards.model, "task", "cohort", "train", "roi", "register")


def sfsa_params(wildcards):
    return model_sections("sfsa", "task", "cohort", "train", "roi", "register")


def table_model_params(wildcards):
    return model_sections(wildcards.model, "task", "cohort", "train")


def per_patient(pattern):
    return expand(pattern, pid=PATIENTS, results=RESULTS)


# the fusion-depth grid's cells train as models of their own (train.multistage.grid)
from lungfusion.fusion_grid import grid_names  # noqa: E402

MODELS = list(config["train"]["models"]) + grid_names(
    config["train"]["multistage"]["grid"]
)
FOLDS = list(range(config["splits"]["n_folds"]))
INTEGRATOR = "late_cox" if config["task"] == "survival" else "late_logistic"


# External validation (evaluate.external, off while null): the second collection's reading
# options in the cohort section's shape, so the index and radiomics stages read it unchanged.
EXTERNAL = config["evaluate"]["external"]
EXTERNAL_COHORT = EXTERNAL and {
    **COHORT,
    "source": "dicom",
    "series_overrides": None,
    "label_from_id": None,  # the external sheet's label column holds its labels
    **{
        key: EXTERNAL[key]
        for key in (
            "dicom_root",
            "sample_sheet",
            "sheet_format",
            "sheet_name",
            "columns",
        )
    },
}
EXT = f"{RESULTS}/external"


def external_patients():
    """The external sheet's patient IDs, the sheet checked as the cohort's is."""
    samples = read_sheet(EXTERNAL["sample_sheet"], EXTERNAL_COHORT)
    validate(samples, schema="../schemas/samples.schema.yaml")
    return list(samples["patient_id"])


EXT_PATIENTS = external_patients() if EXTERNAL else []


def external_per_patient(pattern):
    return expand(pattern, pid=EXT_PATIENTS, ext=EXT)


# the internal evaluation does not read evaluate.external: switching it on must not rerun it
EVALUATE_INTERNAL = {
    key: value for key, value in config["evaluate"].items() if key != "external"
}


# The robustness sweep and saliency score class probabilities: classification only.
CLASSIFICATION = config["task"] == "classification"
ROBUSTNESS = CLASSIFICATION and any(
    config["robustness"][key]
    for key in ("misalignment_mm", "rotation_deg", "drop_pet_fraction")
)
SALIENCY = CLASSIFICATION and config["saliency"]["enabled"]


def fold_outputs(models):
    return expand(
        f"{RESULTS}/train/{{model}}/fold{{fold}}/summary.json", model=models, fold=FOLDS
    )


def aux_targets_input(wildcards):
    """The radiomics table, when the networks learn auxiliary targets from it."""
    if (config["train"].get("aux_targets") or {}).get("features"):
        return {"features": f"{RESULTS}/radiomics/features.tsv"}
    return {}


def pretrain_descriptors_input(wildcards):
    """The radiomics table, when the encoders are pretrained to predict its descriptors."""
    if config["pretrain"]["objective"] == "descriptors":
        return {"features": f"{RESULTS}/radiomics/features.tsv"}
    return {}


def radiomics_features_option(wildcards, input):
    """--radiomics-features, for a job whose inputs hold the radiomics table."""
    return (
        f"--radiomics-features {input.features}" if "features" in input.keys() else ""
    )


def pretrain_params():
    """The pretrain section and the train keys that shape the encoder and pick the device."""
    train = {key: config["train"][key] for key in ("encoder", "widths", "device")}
    return json.dumps({"pretrain": config["pretrain"], "train": train}, sort_keys=True)


def pretrain_encoders(wildcards):
    """With train.init pretrain, the fold's encoder.pt of every modality the network reads
    (none for the table models, which the train rule runs too; the sfsa rule's is mmtm).
    """
    from lungfusion.estimators import TABLE_MODELS

    model = wildcards.get("model", "sfsa")
    if config["train"]["init"] != "pretrain" or model in TABLE_MODELS:
        return []
    from lungfusion.models import required_modalities

    modalities = sorted(required_modalities(model) & {"ct", "pet"})
    return expand(
        f"{RESULTS}/pretrain/{{modality}}/fold{wildcards.fold}/encoder.pt",
        modality=modalities,
    )


def pretrain_option(wildcards, input):
    """--pretrain-dir results/pretrain, from results/pretrain/{modality}/fold{k}/encoder.pt."""
    if not input.encoders:
        return ""
    return f"--pretrain-dir {shlex.quote(str(Path(input.encoders[0]).parents[2]))}"


def all_targets():
    return [f"{RESULTS}/report/index.html"]


def report_figures():
    if config["task"] == "survival":
        names = {"km": "km.rst"}
    else:
        names = {n: f"{n}.rst" for n in ("roc", "pr", "calibration", "confusion")}
    return {
        name: report(
            f"{RESULTS}/report/figures/{name}.png",
            caption=f"../report/{caption}",
            category="Survival" if name == "km" else "Performance",
        )
        for name, caption in names.items()
    }
