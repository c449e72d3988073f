"""``lungfusion train``: train one model on one fold and score its held-out patients."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lungfusion.clinical import clinical_tabular_features
from lungfusion.samplesheet import read_sheet
from lungfusion.training.data import make_records, roi_shape, split_by_modality
from lungfusion.training.engine import TrainSettings, config_hash, train_model
from lungfusion.training.splits import fold_patients, read_folds

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--folds", required=True, help="folds.tsv from `lungfusion splits`")
    parser.add_argument("--roi-dir", required=True)
    parser.add_argument("--sample-sheet", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--radiomics-features", type=Path, default=None,
        help="features.tsv of `lungfusion radiomics` (models radiomics and semantic only)",
    )  # fmt: skip


def settings_from_config(config: dict, *, progress: bool = True, **overrides) -> TrainSettings:
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
        "sgd_momentum", "weight_decay", "ema_decay", "tta", "calibration",
    ):  # fmt: skip
        if name in train:
            values[name] = train[name]
    values.update(overrides)
    return TrainSettings(**values)


@dataclass
class FoldData:
    """One fold's records for one model, and who was left out for a missing modality."""

    train: list[dict]
    val: list[dict]
    test: list[dict]
    excluded: dict[str, list[str]]
    in_shape: tuple[int, int, int]
    n_tabular: int
    tabular_columns: list[str]
    tabular_preprocessor: object = None  # the fitted sklearn ColumnTransformer, or None


def prepare_fold(
    *,
    folds: pd.DataFrame,
    fold: int,
    roi_dir: str | Path,
    sheet: pd.DataFrame,
    modalities: set[str],
    task: str,
    classes: tuple[str, ...],
    clinical_columns: list[str] | None = None,
) -> FoldData:
    """Records per role, leaving out (and naming) patients without a modality the model reads."""
    kept, excluded = fold_roles_with(folds, fold, modalities)
    clinical = sheet.drop(columns=["label"], errors="ignore")
    tabular, preprocessor = None, None
    if "tab" in modalities:  # imputation and scaling fit on the training patients only
        tabular, preprocessor = clinical_tabular_features(
            sheet, fit_ids=list(kept["train"].patient_id.astype(str)), columns=clinical_columns
        )
    records = {}
    for role, rows in kept.items():
        rows = rows.merge(clinical, on="patient_id", how="left", validate="one_to_one")
        records[role] = make_records(rows, roi_dir, task=task, classes=classes, tabular=tabular)
    return FoldData(
        train=records["train"],
        val=records["val"],
        test=records["test"],
        excluded=excluded,
        in_shape=roi_shape(records["train"][0]),
        n_tabular=0 if tabular is None else tabular.shape[1],
        tabular_columns=[] if tabular is None else list(tabular.columns),
        tabular_preprocessor=preprocessor,
    )


def fold_roles_with(
    folds: pd.DataFrame, fold: int, modalities: set[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """The fold's patients per role who have every imaging modality in ``modalities``, and the
    IDs of those left out for lacking one."""
    kept, excluded = {}, {}
    for role, rows in fold_patients(folds, fold).items():
        kept[role], dropped = split_by_modality(rows, modalities)
        excluded[role] = sorted(dropped.patient_id.astype(str))
    return kept, excluded


def excluded_summary(excluded: dict[str, list[str]]) -> dict:
    """``summary.json``'s ``excluded_missing_modality``: who was left out of each role."""
    return {
        "count": sum(len(v) for v in excluded.values()),
        "by_role": {k: len(v) for k, v in excluded.items()},
        "patients": excluded,
    }


def run_hash_payload(name: str, build: dict, settings: TrainSettings, data: FoldData) -> dict:
    return {
        "model": name,
        "build": build,
        "settings": settings.identity(),
        "patients": {
            role: [r["patient_id"] for r in getattr(data, role)]
            for role in ("train", "val", "test")
        },
    }


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


def run(args: argparse.Namespace, config: dict) -> int:
    from lungfusion.models import build_model, required_modalities

    if args.model == "clinical":
        return run_clinical(args, config)
    if args.model in ("radiomics", "semantic"):
        return run_radiomics(args, config)
    settings = settings_from_config(
        config, progress=not args.no_progress, **loss_overrides(config, args.model)
    )
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    sheet["patient_id"] = sheet.patient_id.astype(str)
    data = prepare_fold(
        folds=read_folds(args.folds),
        fold=args.fold,
        roi_dir=args.roi_dir,
        sheet=sheet,
        modalities=required_modalities(args.model),
        task=settings.task,
        classes=settings.classes,
        clinical_columns=config["train"].get("clinical_columns"),
    )
    section = model_section(config, args.model)
    options = {k: section[k] for k in MODEL_OPTIONS.get(args.model, ()) if k in section}
    build = {
        "n_classes": settings.n_outputs,
        "in_shape": list(data.in_shape),
        "widths": list(config["train"]["widths"]),
        "blocks_per_stage": config["train"]["blocks_per_stage"],
        "n_tabular": data.n_tabular,
        **options,
    }
    model = build_model(args.model, **build)
    if section.get("pretrained"):
        load_pretrained_encoder(model, section["pretrained"])
    meta = {
        "name": args.model,
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
            args.model,
            args.fold,
            n_excluded,
        )
    train_model(
        model,
        fold=args.fold,
        train_records=data.train,
        val_records=data.val,
        test_records=data.test,
        settings=settings,
        out_dir=args.out_dir,
        run_hash=config_hash(
            {
                **run_hash_payload(args.model, build, settings, data),
                "pretrained": section.get("pretrained"),
                "clinical_columns": data.tabular_columns,
            }
        ),  # fmt: skip
        model_meta=meta,
        summary_extra={
            "excluded_missing_modality": excluded_summary(data.excluded),
            "modalities": sorted(required_modalities(args.model)),
        },
    )
    return 0


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


# ---------------------------------------------------------------- the clinical (sklearn) model


def run_clinical(args: argparse.Namespace, config: dict) -> int:
    """Logistic regression (or Cox PH) on the clinical table, written like the networks' runs:
    ``model.joblib``, ``history.tsv`` (one row), ``val_predictions.tsv``, ``predictions.tsv`` and,
    last, ``summary.json``."""
    from lungfusion.evaluation.clinical import fit_clinical_model

    started = time.perf_counter()
    settings = settings_from_config(config, progress=False)
    section = model_section(config, "clinical")
    columns = config["train"].get("clinical_columns")
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    sheet["patient_id"] = sheet.patient_id.astype(str)
    roles = _table_model_roles(args)
    out_dir = _fresh_out_dir(args.out_dir)
    model = fit_clinical_model(
        sheet, fit_ids=roles["train"], task=settings.task, classes=list(settings.classes),
        C=float(section.get("C", 1.0)), alpha=float(section.get("alpha", 1.0)), columns=columns,
    )  # fmt: skip
    table = sheet.set_index("patient_id", drop=False)
    _write_table_model_run(
        out_dir, model, table, roles, fold=args.fold, settings=settings, started=started,
        summary={
            "model": "clinical",
            "estimator": type(model.estimator).__name__,
            "features": [str(n) for n in model.preprocessor.get_feature_names_out()],
            "model_options": {
                "C": section.get("C", 1.0),
                "alpha": section.get("alpha", 1.0),
                "clinical_columns": columns,
            },
            "excluded_missing_modality": excluded_summary({}),
            "modalities": ["tab"],
        },
    )  # fmt: skip
    return 0


def run_radiomics(args: argparse.Namespace, config: dict) -> int:
    """Penalised logistic regression (or ridge Cox) on the lesion's CT and PET features (all of
    them for ``radiomics``, the descriptors for ``semantic``), written like the clinical model's
    runs. Patients without an imaging modality the model reads (``train.<model>.modalities``:
    CT and PET, or CT alone) are left out and counted, as for the networks; those whose ROI
    showed no lesion are imputed."""
    from lungfusion.training.radiomics import MODEL_DEFAULTS, fit_radiomics_model

    started = time.perf_counter()
    settings = settings_from_config(config, progress=False)
    section = {**MODEL_DEFAULTS[args.model], **model_section(config, args.model)}
    if args.radiomics_features is None:
        raise ValueError(f"model {args.model} needs --radiomics-features (lungfusion radiomics)")
    features = pd.read_csv(args.radiomics_features, sep="\t", dtype={"patient_id": str})
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    sheet["patient_id"] = sheet.patient_id.astype(str)
    features = features.drop(columns=["has_pet"], errors="ignore")  # the folds' flag decides
    table = sheet.merge(features, on="patient_id", how="left", validate="one_to_one")
    table = table.set_index("patient_id", drop=False)
    modalities = sorted(section["modalities"])
    if "ct" not in modalities:
        raise ValueError(f"train.{args.model}.modalities must include ct (the lesion is the CT's)")
    kept, excluded = fold_roles_with(read_folds(args.folds), args.fold, set(modalities))
    roles = {role: [str(p) for p in rows.patient_id] for role, rows in kept.items()}
    if not roles["train"] or not roles["val"]:
        raise ValueError(
            f"fold {args.fold}: need training and validation patients with {'+'.join(modalities)}"
        )
    out_dir = _fresh_out_dir(args.out_dir)
    C, alpha = float(section["C"]), float(section["alpha"])
    model = fit_radiomics_model(
        table, fit_ids=roles["train"], task=settings.task, classes=list(settings.classes),
        C=C, alpha=alpha, model=args.model, modalities=modalities,
    )  # fmt: skip
    used = sorted({p for ids in roles.values() for p in ids})
    status = table.loc[used, "status"].fillna("missing")
    _write_table_model_run(
        out_dir, model, table, roles, fold=args.fold, settings=settings, started=started,
        summary={
            "model": args.model,
            "estimator": type(model.pipeline[-1]).__name__,
            "features": model.columns,
            "model_options": {"C": C, "alpha": alpha, "modalities": modalities},
            "imputed_without_features": sorted(status.index[status != "ok"]),
            "excluded_missing_modality": excluded_summary(excluded),
            "modalities": modalities,
        },
    )  # fmt: skip
    return 0


def _table_model_roles(args: argparse.Namespace) -> dict[str, list[str]]:
    roles = {
        role: [str(p) for p in rows.patient_id]
        for role, rows in fold_patients(read_folds(args.folds), args.fold).items()
    }
    if not roles["train"] or not roles["val"]:
        raise ValueError(f"fold {args.fold}: need training and validation patients")
    return roles


def _fresh_out_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # the run is not complete until rewritten
    return out_dir


def _write_table_model_run(
    out_dir: Path, model, table: pd.DataFrame, roles: dict, *, fold: int, settings, started: float,
    summary: dict,
) -> None:  # fmt: skip
    """``model.joblib``, ``history.tsv`` (one row), ``val_predictions.tsv``,
    ``predictions.tsv`` and, last, ``summary.json`` of a fitted table model (``model.score``)."""
    import joblib

    from lungfusion.artifacts import atomic_path, software_versions, write_json_atomic
    from lungfusion.training.engine import (
        _empty_predictions,
        auc_score,
        cindex_score,
        gmean_score,
        write_table,
    )

    with atomic_path(out_dir / "model.joblib") as tmp:
        joblib.dump(model, tmp)
    tables = {
        role: table_model_predictions(model, table.loc[ids], fold=fold, settings=settings)
        if ids else _empty_predictions(settings)
        for role, ids in roles.items()
    }  # fmt: skip
    row = {"epoch": 1, "train_loss": _clinical_loss(tables["train"], settings)}
    row["val_loss"] = _clinical_loss(tables["val"], settings)
    val = tables["val"]
    if settings.task == "survival":
        row["val_cindex"] = cindex_score(
            val.survival_days.to_numpy(float), val.event.to_numpy(float), val.risk.to_numpy(float)
        )
        row.update(val_auc=float("nan"), val_gmean=float("nan"))
    else:
        labels, probs = _labels_probs(val, settings)
        row.update(val_auc=auc_score(labels, probs), val_gmean=gmean_score(labels, probs))
    row.update(lr=float("nan"), seconds=round(time.perf_counter() - started, 3))
    write_table(pd.DataFrame([row]), out_dir / "history.tsv")
    write_table(tables["val"], out_dir / "val_predictions.tsv")
    write_table(tables["test"], out_dir / "predictions.tsv")
    write_json_atomic(
        out_dir / "summary.json",
        {
            "status": "ok",
            "model": summary["model"],
            "fold": fold,
            "task": settings.task,
            "n_patients": {role: len(ids) for role, ids in roles.items()},
            "best_epoch": 1,
            "selection_metric": settings.selection_metric,
            "best_val_loss": row["val_loss"],
            **summary,
            "timings_s": {"fit_and_predict": round(time.perf_counter() - started, 3)},
            "software": software_versions(),
        },
    )


def table_model_predictions(model, rows: pd.DataFrame, *, fold: int, settings) -> pd.DataFrame:
    """The engine's prediction table columns for a table model's scores of ``rows``."""
    scores = model.score(rows)
    table = pd.DataFrame({"patient_id": rows["patient_id"].astype(str).to_list(), "fold": fold})
    if settings.task == "survival":
        table["risk"] = scores["risk"]
        table["survival_days"] = pd.to_numeric(rows["survival_days"], errors="coerce").to_numpy()
        table["event"] = pd.to_numeric(rows["event"], errors="coerce").astype("Int64").to_numpy()
    else:
        table["label"] = rows["label"].to_numpy()
        for name in settings.classes:
            table[f"prob_{name}"] = scores[f"prob_{name}"]
    return table


def _labels_probs(table: pd.DataFrame, settings):

    known = table["label"].isin(settings.classes).to_numpy()
    labels = table["label"][known].map({c: i for i, c in enumerate(settings.classes)}).to_numpy(int)
    probs = table.loc[known, [f"prob_{c}" for c in settings.classes]].to_numpy(float)
    return labels, probs


def _clinical_loss(table: pd.DataFrame, settings) -> float:
    """Mean cross-entropy (classification) or NaN (survival: no per-patient loss)."""
    import numpy as np

    if settings.task == "survival" or table.empty:
        return float("nan")
    labels, probs = _labels_probs(table, settings)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(picked).mean())
