"""Training one network on one fold from the config: the engine's settings, the model's own
config section (``train.<model>``: build options, loss, pretrained encoder weights) and the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lungfusion.fusion_grid import grid_widths, parse_grid_name
from lungfusion.training.device import seed_everything
from lungfusion.training.engine import TrainSettings, config_hash, train_model
from lungfusion.training.fold import excluded_summary, load_fold, run_hash_payload

log = logging.getLogger(__name__)


def settings_from_config(config: dict, *, progress: bool = True, **overrides) -> TrainSettings:
    """The engine's settings from the config: the task, the classes and ``train``'s keys that
    the config sets (the rest keep :class:`TrainSettings`' defaults), then ``overrides``."""
    train = config["train"]
    values = {
        "task": config["task"],
        "classes": tuple(config["cohort"]["classes"]),
        # the CT shift is given in HU; the ROI tensors hold the CT windowed to [0, 1]
        "augment": {**train.get("augment", {}), "ct_window": list(config["roi"]["ct_window"])},
        "progress": progress,
    }
    for name in (
        "epochs", "batch_size", "lr", "lr_step_epochs", "lr_gamma", "optimizer", "imbalance",
        "selection_metric", "early_stopping_patience", "num_workers", "seed", "device",
        "sgd_momentum", "weight_decay", "ema_decay", "tta", "calibration", "freeze_encoder_epochs",
        "encoder_lr_factor",
    ):  # fmt: skip
        if name in train:
            values[name] = train[name]
    if "weight" in (train.get("aux_targets") or {}):
        values["aux_weight"] = train["aux_targets"]["weight"]
    values.update(overrides)
    return TrainSettings(**values)


# Model-specific config sections (train.<model>) and the build options each one may set.
MODEL_OPTIONS = {
    "mmcaf": ("use_pet", "tabular_encoder", "tabular_hidden", "dims", "heads", "dropout"),
    "clinical_net": ("tabular_encoder", "hidden", "dropout"),
}
LOSS_NAMES = {"bce": "cross_entropy", "cross_entropy": "cross_entropy", "focal": "focal"}


def model_section(config: dict, model: str) -> dict:
    """``train.<model>`` (e.g. ``train.mmcaf``), empty when absent."""
    return dict(config["train"].get(model) or {})


def loss_overrides(config: dict, model: str) -> dict:
    """Engine loss settings from ``train.<model>.loss`` (bce | focal) and ``focal_gamma``."""
    section = model_section(config, model)
    overrides = {}
    if "loss" in section:
        if section["loss"] not in LOSS_NAMES:
            raise ValueError(
                f"train.{model}.loss must be one of {sorted(LOSS_NAMES)}, got {section['loss']!r}"
            )
        overrides["loss"] = LOSS_NAMES[section["loss"]]
    if "focal_gamma" in section:
        overrides["focal_gamma"] = float(section["focal_gamma"])
    return overrides


def train_network(
    model_name: str, *, fold: int, folds_path: str | Path, roi_dir: str | Path,
    sample_sheet: str | Path, out_dir: str | Path, config: dict, progress: bool = True,
    pretrain_dir: str | Path | None = None, aux_features: str | Path | None = None,
) -> None:  # fmt: skip
    """Train the registered network ``model_name`` on fold ``fold`` and score its validation
    and test patients in ``out_dir`` (``lungfusion train`` for every model but the table
    models); patients lacking a modality the model reads are left out and named.

    ``pretrain_dir`` holds the pretrain stage's encoders (``train.init: pretrain``);
    ``aux_features`` is the radiomics table the auxiliary targets come from
    (``train.aux_targets.features``)."""
    from lungfusion.models import build_model, required_modalities
    from lungfusion.training.init import encoder_spec_from_config, initialise_encoders

    settings = settings_from_config(config, progress=progress, **loss_overrides(config, model_name))
    data = load_fold(
        sample_sheet=sample_sheet, folds_path=folds_path, fold=fold, roi_dir=roi_dir,
        modalities=required_modalities(model_name), settings=settings, config=config,
        clinical_columns=config["train"].get("clinical_columns"),
    )  # fmt: skip
    section = model_section(config, model_name)
    options = {k: section[k] for k in MODEL_OPTIONS.get(model_name, ()) if k in section}
    build = {
        "n_classes": settings.n_outputs,
        "in_shape": list(data.in_shape),
        "widths": list(config["train"]["widths"]),
        "blocks_per_stage": config["train"]["blocks_per_stage"],
        "n_tabular": data.n_tabular,
        **options,
    }
    spec = encoder_spec_from_config(config)
    if spec is not None:  # every image network on the shared trunk (models/encoders.py)
        build["encoder"] = spec.as_dict()
    cell = parse_grid_name(model_name)
    if cell is not None:  # a fusion-depth grid cell: its own depth
        build["widths"] = grid_widths(build["widths"], cell[0])
        build["blocks_per_stage"] = cell[1]
    seed_everything(settings.seed)  # the initial weights too: a rerun repeats the run
    model = build_model(model_name, **build)
    if section.get("pretrained"):
        load_pretrained_encoder(model, section["pretrained"])
    init = initialise_encoders(
        model, config=config, fold=fold, pretrain_dir=pretrain_dir, spec=spec
    )
    aux = auxiliary_targets(model, data, config=config, features_path=aux_features)
    meta = {
        "name": model_name,
        "build": build,
        "options": options,
        "tabular_columns": data.tabular_columns,
        "clinical_preprocessor": data.tabular_preprocessor,
        "pretrained": section.get("pretrained"),
    }
    n_excluded = sum(len(v) for v in data.excluded.values())
    if n_excluded:
        log.warning(
            "%s fold %d: %d patients lack a modality the model reads",
            model_name,
            fold,
            n_excluded,
        )
    train_model(
        model,
        fold=fold,
        train_records=data.train,
        val_records=data.val,
        test_records=data.test,
        settings=settings,
        out_dir=out_dir,
        run_hash=config_hash(
            {
                **run_hash_payload(model_name, build, settings, data),
                "pretrained": section.get("pretrained"),
                "clinical_columns": data.tabular_columns,
                "init": init.identity(),
                "aux_targets": aux.identity(),
            }
        ),  # fmt: skip
        model_meta=meta,
        summary_extra={
            "excluded_missing_modality": excluded_summary(data.excluded),
            "modalities": sorted(required_modalities(model_name)),
            "init": init.summary(),
            "aux_targets": aux.summary(),
        },
        pretrained_encoders=init.pretrained_modules,
        aux_head=aux.head,
    )
    if aux.head is not None:
        aux.head.remove()


def auxiliary_targets(model, data, *, config: dict, features_path: str | Path | None):
    """The auxiliary head and each record's standardised targets (``train.aux_targets``)."""
    import pandas as pd

    from lungfusion.training.aux import AuxHead, attach_targets, standardised_targets

    columns = list((config["train"].get("aux_targets") or {}).get("features") or [])
    if not columns:
        return AuxTargets()
    if not hasattr(model, "encoders"):
        raise ValueError(f"train.aux_targets: {type(model).__name__} has no image encoder")
    if features_path is None:
        raise ValueError("train.aux_targets needs the radiomics table (--radiomics-features)")
    features = pd.read_csv(features_path, sep="\t", dtype={"patient_id": str})
    features = features.set_index("patient_id")
    train_ids = [r["patient_id"] for r in data.train]
    targets, scaling = standardised_targets(features, columns, train_ids)
    for records in (data.train, data.val, data.test):
        attach_targets(records, targets)
    return AuxTargets(AuxHead(model.encoders(), len(columns)), columns, scaling)


class AuxTargets:
    """The auxiliary head (None: off), its target columns and their training-fold scaling."""

    def __init__(self, head=None, columns: list[str] | None = None, scaling: dict | None = None):
        self.head, self.columns, self.scaling = head, list(columns or []), scaling or {}

    def identity(self) -> dict:
        return {"features": self.columns}

    def summary(self) -> dict:
        return {"features": self.columns, "scaling_on_training_patients": self.scaling}


def load_pretrained_encoder(model, path: str) -> None:
    """User weights for the image encoder of a model with ``load_image_encoder`` (mmcaf): a
    state dict, or a checkpoint holding one under ``state_dict``."""
    import torch

    if not hasattr(model, "load_image_encoder"):
        raise ValueError(f"{type(model).__name__} has no image encoder to load weights into")
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model.load_image_encoder(state)
    log.info("image encoder weights loaded from %s", path)
