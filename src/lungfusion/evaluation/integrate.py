"""Late fusion (seed 003): a logistic or Cox integrator on the unimodal submodels' scores.

Nested without leakage: in outer fold k the integrator is fit only on the scores the submodels
gave to fold k's VALIDATION patients (whom they were not trained on), then applied to fold k's
TEST patients. A patient's *pattern* is the set of submodels that scored it (e.g. ``ct+clinical``
when the PET is missing); one integrator is fit per pattern, on the validation patients that
have at least those submodels, using only those submodels' scores.

Scores enter the integrator as log-odds: ``logit(p_positive)`` for two classes,
``log(p_c / p_first)`` per class otherwise, and the raw risk for survival. They are
standardised inside the integrator pipeline (fit on the validation patients only).

>>> pattern_name(["pet", "ct"])
'ct+pet'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from lungfusion.artifacts import Timer, atomic_path, software_versions, write_json_atomic
from lungfusion.config import section_settings
from lungfusion.estimators import LESION_FEATURE_MODELS
from lungfusion.estimators.integrator import (
    fit_integrator,
    integrator_target,
    make_integrator,
    mean_fallback,
    predict_integrator,
)
from lungfusion.evaluation.tables import write_tsv
from lungfusion.folds import fold_patients, read_folds
from lungfusion.samplesheet import read_sheet

log = logging.getLogger(__name__)

SUBMODELS = ("ct", "pet", "clinical")
INTEGRATORS = {"late_logistic": "classification", "late_cox": "survival"}
EPSILON = 1e-6


def pattern_name(submodels) -> str:
    """Canonical name of a set of submodels: known ones in SUBMODELS order, then the rest."""
    order = {name: i for i, name in enumerate(SUBMODELS)}
    return "+".join(sorted(set(submodels), key=lambda s: (order.get(s, len(order)), s)))


def score_features(
    predictions: pd.DataFrame, *, submodel: str, task: str, classes: list[str]
) -> pd.DataFrame:
    """One submodel's scores as integrator features, indexed by patient_id.

    Columns are ``<submodel>`` (binary log-odds, or survival risk) or ``<submodel>:<class>``
    (multi-class log-odds against the first class).
    """
    index = predictions["patient_id"]
    if task == "survival":
        return pd.DataFrame({submodel: predictions["risk"].to_numpy(float)}, index=index)
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(float)
    logs = np.log(np.clip(probs, EPSILON, 1 - EPSILON))
    if len(classes) == 2:
        odds = logs[:, 1] - np.log(np.clip(1 - probs[:, 1], EPSILON, 1))
        return pd.DataFrame({submodel: odds}, index=index)
    columns = {f"{submodel}:{c}": logs[:, i] - logs[:, 0] for i, c in enumerate(classes) if i}
    return pd.DataFrame(columns, index=index)


def submodel_of(column: str) -> str:
    return column.split(":", 1)[0]


def patterns(scores: pd.DataFrame) -> pd.Series:
    """Each patient's pattern: the submodels all of whose features it has."""
    columns: dict[str, list[str]] = {}
    for column in scores.columns:
        columns.setdefault(submodel_of(column), []).append(column)
    complete = {s: scores[cols].notna().all(axis=1).to_numpy() for s, cols in columns.items()}
    names = [pattern_name(s for s in complete if complete[s][i]) for i in range(len(scores))]
    return pd.Series(names, index=scores.index, name="pattern")


def pattern_columns(columns, pattern: str) -> list[str]:
    chosen = set(pattern.split("+"))
    return [c for c in columns if submodel_of(c) in chosen]


def why_not_fittable(target: pd.DataFrame, *, kind: str, n_features: int, min_fit: int) -> str:
    """Empty when an integrator can be fit on these validation patients, else the reason."""
    if len(target) < max(min_fit, n_features + 1):
        return f"{len(target)} validation patients, need {max(min_fit, n_features + 1)}"
    if kind == "classification" and target["y"].nunique() < 2:
        return "validation patients hold a single class"
    if kind == "survival" and not (target["event"] > 0).any():
        return "no event among the validation patients"
    return ""


def _coefficients(model: Pipeline, columns: list[str]) -> dict:
    estimator = model[-1]
    coef = np.atleast_2d(estimator.coef_)
    record = {"coefficients": {c: coef[:, i].tolist() for i, c in enumerate(columns)}}
    if hasattr(estimator, "intercept_"):
        record["intercept"] = np.atleast_1d(estimator.intercept_).tolist()
    return record


def _inner_cv_predictions(
    features: pd.DataFrame, target: pd.DataFrame, *, kind: str, classes: list[str], C, alpha
) -> tuple[pd.DataFrame, str]:
    """Cross-validated integrator predictions for the validation patients themselves.

    They let the evaluation choose a threshold on validation scores the integrator was not
    fit on, as for every other model. Falls back to in-sample predictions when the validation
    set is too small to split.
    """
    model = make_integrator(kind, C=C, alpha=alpha)
    y = integrator_target(kind, target)
    if kind == "classification":
        n_splits = min(5, int(target["y"].value_counts().min()))
        cv = StratifiedKFold(n_splits) if n_splits >= 2 else None
        method = "predict_proba"
    else:
        cv = KFold(min(5, len(target))) if len(target) >= 4 else None
        method = "predict"
    if cv is not None:
        try:
            values = cross_val_predict(model, features, y, cv=cv, method=method)
            if kind == "survival":
                return pd.DataFrame({"risk": values}, index=features.index), "inner_cv"
            present = np.unique(target["y"])
            probs = np.zeros((len(features), len(classes)))
            probs[:, present] = values
            columns = [f"prob_{c}" for c in classes]
            return pd.DataFrame(probs, index=features.index, columns=columns), "inner_cv"
        except ValueError as error:
            log.warning("inner cross-validation of the integrator failed (%s); in-sample", error)
    model.fit(features, y)
    return predict_integrator(model, features, kind=kind, classes=classes), "in_sample"


def integrate_fold(
    val_scores: pd.DataFrame,
    val_target: pd.DataFrame,
    test_scores: pd.DataFrame,
    *,
    kind: str,
    classes: list[str],
    C: float = 1.0,
    alpha: float = 1.0,
    min_fit: int = 5,
    fitted: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Fit per-pattern integrators on one fold's validation patients and predict its test set.

    Args:
        val_scores, test_scores: submodel features (``score_features`` joined), indexed by
            patient_id, NaN where a submodel did not score the patient.
        val_target: the validation patients' targets, indexed by patient_id (see
            ``fit_integrator``); patients missing here are not fit on.
        fitted: when given, receives ``{pattern: {"columns", "model"}}`` (model None for the
            mean fallback), so the fold's integrators can score new patients later.

    Returns:
        ``(test_predictions, val_predictions, records)``: predictions indexed by patient_id with
        a ``pattern`` column; one record per pattern for the summary.
    """
    val_scores = val_scores.loc[val_scores.index.intersection(val_target.index)]
    test_patterns = patterns(test_scores)
    val_patterns = patterns(val_scores)
    test_parts, val_parts, records = [], [], []
    for pattern in sorted(set(test_patterns) | set(val_patterns)):
        if not pattern:
            log.warning(
                "patients %s have no submodel score", list(test_patterns.index[test_patterns == ""])
            )
            continue
        columns = pattern_columns(test_scores.columns, pattern)
        fit_rows = val_scores[columns].dropna()
        target = val_target.loc[fit_rows.index]
        test_x = test_scores.loc[test_patterns == pattern, columns]
        own_val = val_patterns[val_patterns == pattern].index
        record = {"pattern": pattern, "n_fit": len(fit_rows), "n_test": len(test_x)}
        reason = why_not_fittable(target, kind=kind, n_features=len(columns), min_fit=min_fit)
        if reason:
            log.warning("pattern %s: %s; using the mean of the submodel scores", pattern, reason)
            record.update(method="mean_fallback", reason=reason)
            model = None
            test_parts.append(
                mean_fallback(test_x, kind=kind, classes=classes).assign(pattern=pattern)
            )
            val_x = val_scores.loc[own_val, columns]
            val_parts.append(
                mean_fallback(val_x, kind=kind, classes=classes).assign(pattern=pattern)
            )
        else:
            model = fit_integrator(fit_rows, target, kind=kind, C=C, alpha=alpha)
            record.update(method="fitted", **_coefficients(model, columns))
            if len(test_x):
                predicted = predict_integrator(model, test_x, kind=kind, classes=classes)
                test_parts.append(predicted.assign(pattern=pattern))
            inner, how = _inner_cv_predictions(
                fit_rows, target, kind=kind, classes=classes, C=C, alpha=alpha
            )
            record["val_predictions"] = how
            val_parts.append(inner.loc[inner.index.intersection(own_val)].assign(pattern=pattern))
        records.append(record)
        if fitted is not None:
            fitted[pattern] = {"columns": columns, "model": model}
    empty = pd.DataFrame(columns=["pattern"])
    test_out = pd.concat(test_parts) if test_parts else empty
    val_out = pd.concat(val_parts) if val_parts else empty
    return test_out, val_out, records


# ---------------------------------------------------------------- reading the submodels' files

MODALITY_FLAGS = {
    "ct": "has_ct",
    "pet": "has_pet",
    **dict.fromkeys(LESION_FEATURE_MODELS, "has_pet"),
}


def modality_flag(submodel: str, folder: Path) -> str | None:
    """The folds' flag of the imaging modality a submodel needs beyond CT: from its fold's
    ``summary.json`` (``modalities``: a CT-only radiomics model keeps the patients without
    PET), else :data:`MODALITY_FLAGS` by name."""
    summary = folder / "summary.json"
    if summary.is_file():
        modalities = json.loads(summary.read_text()).get("modalities")
        if modalities is not None:
            return "has_pet" if "pet" in modalities else ("has_ct" if "ct" in modalities else None)
    return MODALITY_FLAGS.get(submodel)


def _as_bool(values: pd.Series) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "yes", "1.0"])


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"patient_id": str, "label": str})


def targets(sheet: pd.DataFrame, *, kind: str, classes: list[str]) -> pd.DataFrame:
    """Integrator targets indexed by patient_id: ``y``, or ``survival_days`` and ``event``."""
    table = sheet.set_index(sheet["patient_id"])
    if kind == "classification":
        y = table["label"].map({c: i for i, c in enumerate(classes)})
        return pd.DataFrame({"y": y}).dropna().astype(int)
    out = pd.DataFrame(
        {
            "survival_days": pd.to_numeric(table["survival_days"], errors="coerce"),
            "event": pd.to_numeric(table["event"], errors="coerce"),
        }
    )
    return out.dropna()


def submodel_fold_scores(
    *,
    submodel: str,
    fold: int,
    roles: dict[str, list[str]],
    train_dir: Path,
    sheet: pd.DataFrame,
    kind: str,
    classes: list[str],
    clinical_C: float = 1.0,
    clinical_alpha: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """One submodel's predictions for fold ``fold``'s test and validation patients.

    Read from ``train_dir/{submodel}/fold{k}/`` when the training engine wrote them; the
    clinical submodel is otherwise fit here on the fold's training patients. Rows for patients
    outside the fold's test (or validation) set are dropped. Returns ``(test, val, source)``.
    """
    folder = Path(train_dir) / submodel / f"fold{fold}"
    if (folder / "predictions.tsv").exists():
        test = _read_tsv(folder / "predictions.tsv")
        val_path = folder / "val_predictions.tsv"
        val = _read_tsv(val_path) if val_path.exists() else test.iloc[0:0]
        source = str(folder)
    elif submodel == "clinical":
        from lungfusion.estimators.clinical import fit_predict_clinical

        scored = fit_predict_clinical(
            sheet, fit_ids=roles["train"], score_ids=roles["val"] + roles["test"],
            task=kind, classes=classes, C=clinical_C, alpha=clinical_alpha,
        )  # fmt: skip
        test = scored[scored["patient_id"].isin(roles["test"])]
        val = scored[scored["patient_id"].isin(roles["val"])]
        source = f"fit here on the {len(roles['train'])} training patients of fold {fold}"
    else:
        raise FileNotFoundError(f"no predictions for submodel {submodel!r} in {folder}")
    test = test[test["patient_id"].isin(roles["test"])]
    val = val[val["patient_id"].isin(roles["val"])]
    return test.reset_index(drop=True), val.reset_index(drop=True), source


def masked_features(
    predictions: pd.DataFrame,
    flags: pd.DataFrame,
    *,
    submodel: str,
    flag: str | None,
    kind: str,
    classes: list[str],
) -> pd.DataFrame:
    """One submodel's scores as integrator features, NaN for the patients whose ``flag``
    column of ``flags`` (indexed by patient_id) says they lack the modality it needs."""
    features = score_features(predictions, submodel=submodel, task=kind, classes=classes)
    if flag and flag in flags.columns:
        # a network may still emit a score for a patient whose modality is absent: ignore it
        absent = flags.index[~_as_bool(flags[flag])]
        features.loc[features.index.isin(absent)] = np.nan
    return features


def late_fusion(
    *,
    name: str,
    train_dir: str | Path,
    folds: pd.DataFrame,
    sheet: pd.DataFrame,
    classes: list[str],
    submodels: tuple[str, ...] | list[str] = SUBMODELS,
    C: float = 1.0,
    alpha: float = 1.0,
    clinical_C: float = 1.0,
    clinical_alpha: float = 1.0,
    min_fit: int = 5,
) -> dict:
    """Run the integrator ``name`` (``late_logistic`` or ``late_cox``) over every outer fold.

    Returns ``{"predictions", "val_predictions", "clinical", "models", "summary"}``: the test
    and validation prediction tables (with ``fold`` and ``pattern``), the clinical submodel's
    predictions per fold when fit here, each fold's integrators per pattern (see
    ``integrate_fold``'s ``fitted``) and the summary record.
    """
    if name not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {sorted(INTEGRATORS)}, got {name!r}")
    kind = INTEGRATORS[name]
    all_targets = targets(sheet, kind=kind, classes=classes)
    tests, vals, fold_records, clinical, models = [], [], [], {}, {}
    warnings: list[str] = []
    for fold in sorted(folds["fold"].unique()):
        part = folds[folds["fold"] == fold]
        roles = {r: rows["patient_id"].tolist() for r, rows in fold_patients(folds, fold).items()}
        flags = part.set_index(part["patient_id"])
        test_scores, val_scores, sources = [], [], {}
        for submodel in submodels:
            try:
                test, val, sources[submodel] = submodel_fold_scores(
                    submodel=submodel, fold=int(fold), roles=roles, train_dir=Path(train_dir),
                    sheet=sheet, kind=kind, classes=classes,
                    clinical_C=clinical_C, clinical_alpha=clinical_alpha,
                )  # fmt: skip
            except (FileNotFoundError, ValueError) as error:
                warnings.append(f"fold {fold}: submodel {submodel} left out: {error}")
                log.warning(warnings[-1])
                continue
            if sources[submodel].startswith("fit here"):
                clinical[int(fold)] = (test, val)
            flag = modality_flag(submodel, Path(train_dir) / submodel / f"fold{fold}")
            mask = {"submodel": submodel, "flag": flag, "kind": kind, "classes": classes}
            test_scores.append(masked_features(test, flags, **mask))
            val_scores.append(masked_features(val, flags, **mask))
        if not test_scores:
            raise ValueError(f"fold {fold}: no submodel predictions at all")
        test_x = pd.concat(test_scores, axis=1).reindex(roles["test"])
        val_x = pd.concat(val_scores, axis=1).reindex(roles["val"])
        val_target = all_targets.loc[all_targets.index.intersection(val_x.index)]
        models[int(fold)] = {}
        predicted, val_predicted, records = integrate_fold(
            val_x, val_target, test_x, kind=kind, classes=classes, C=C, alpha=alpha,
            min_fit=min_fit, fitted=models[int(fold)],
        )  # fmt: skip
        tests.append(predicted.assign(fold=int(fold)))
        vals.append(val_predicted.assign(fold=int(fold)))
        fold_records.append(
            {"fold": int(fold), "n_val": len(roles["val"]), "n_test": len(roles["test"]),
             "submodel_sources": sources, "patterns": records}
        )  # fmt: skip
    predictions = _with_outcomes(pd.concat(tests), sheet, kind=kind, classes=classes)
    val_predictions = _with_outcomes(pd.concat(vals), sheet, kind=kind, classes=classes)
    counts = predictions["pattern"].value_counts().sort_index()
    summary = {
        "name": name,
        "task": kind,
        "integrator": f"logistic regression (C={C})"
        if kind == "classification"
        else f"Cox PH with ridge penalty alpha={alpha} (scikit-survival)",
        "submodels": list(submodels),
        "features": "binary: logit(p_positive); multi-class: log(p_c/p_first); survival: risk; "
        "standardised on the fitting patients",
        "fit_on": "each outer fold's validation patients, scored by submodels not trained on them; "
        "never the fold's test patients",
        "val_predictions": "integrator predictions for validation patients by inner cross-validation",
        "n_patients": len(predictions),
        "pattern_counts": {str(k): int(v) for k, v in counts.items()},
        "folds": fold_records,
        "warnings": warnings,
    }
    return {
        "predictions": predictions,
        "val_predictions": val_predictions,
        "clinical": clinical,
        "models": models,
        "summary": summary,
    }


def _with_outcomes(
    predicted: pd.DataFrame, sheet: pd.DataFrame, *, kind: str, classes: list[str]
) -> pd.DataFrame:
    """Predictions in the model-prediction layout, with label (and survival) from the sheet."""
    table = sheet.set_index(sheet["patient_id"])
    out = pd.DataFrame({"patient_id": predicted.index, "fold": predicted["fold"].to_numpy()})
    out["label"] = (
        table["label"].reindex(out["patient_id"]).to_numpy() if "label" in table else None
    )
    if kind == "classification":
        for c in classes:
            out[f"prob_{c}"] = predicted[f"prob_{c}"].to_numpy(float)
    else:
        out["risk"] = predicted["risk"].to_numpy(float)
        for column in ("survival_days", "event"):
            out[column] = (
                pd.to_numeric(table[column], errors="coerce").reindex(out["patient_id"]).to_numpy()
            )
    out["pattern"] = predicted["pattern"].to_numpy()
    return out.sort_values(["fold", "patient_id"]).reset_index(drop=True)


# ------------------------------------------------------------------ the integrate stage's run
#
# Late-fusion logistic / Cox integration of the submodels' scores.
#
# Writes ``{out}/predictions.tsv`` (the model-prediction layout plus ``pattern``),
# ``val_predictions.tsv`` (the validation patients, by inner cross-validation), the clinical
# submodel's own predictions under ``submodels/clinical_logistic/fold{k}/`` (or
# ``clinical_cox``) when it was fit here, so ``evaluate`` scores it like any model under a name
# that cannot clash with a clinical model of the training engine, each fold's integrators
# (``fold{k}/model.joblib``, see ``write_fold_integrators``: external validation scores new
# patients with them), and last ``summary.json``.

# the name the clinical submodel fit here gets in results/metrics
CLINICAL_NAMES = {"late_logistic": "clinical_logistic", "late_cox": "clinical_cox"}


def run_integration(
    name: str,
    *,
    train_dir: Path,
    folds_path: Path,
    sample_sheet: Path,
    out_dir: Path,
    submodels: list[str] | None,
    config: dict,
) -> dict:
    """Fit and score the ``name`` integrator on every fold; write its files under ``out_dir``
    (``summary.json`` last) and return the summary."""
    settings = section_settings(config, "integrate")
    if INTEGRATORS[name] != config["task"]:
        raise ValueError(
            f"integrator {name} is for task {INTEGRATORS[name]}, config task is {config['task']}"
        )
    classes = list(config["cohort"]["classes"])
    sheet = read_sheet(sample_sheet, config["cohort"])
    folds = read_folds(folds_path)
    timer = Timer()
    with timer("integrate"):
        result = late_fusion(
            name=name, train_dir=train_dir, folds=folds, sheet=sheet, classes=classes,
            submodels=submodels or settings["submodels"],
            C=float(settings["logistic_C"]), alpha=float(settings["cox_alpha"]),
            clinical_C=float(settings["clinical_C"]), clinical_alpha=float(settings["clinical_alpha"]),
            min_fit=int(settings["min_fit_patients"]),
        )  # fmt: skip
    out = out_dir
    write_tsv(result["predictions"], out / "predictions.tsv")
    write_tsv(result["val_predictions"], out / "val_predictions.tsv")
    for fold, (test, val) in result["clinical"].items():
        folder = out / "submodels" / CLINICAL_NAMES[name] / f"fold{fold}"
        write_tsv(predictions_layout(test, sheet, fold, config["task"]), folder / "predictions.tsv")
        write_tsv(
            predictions_layout(val, sheet, fold, config["task"]), folder / "val_predictions.tsv"
        )
    write_fold_integrators(result["models"], out, kind=INTEGRATORS[name], classes=classes)
    summary = result["summary"]
    summary.update(
        inputs={"train_dir": str(train_dir), "folds": str(folds_path), "sample_sheet": str(sample_sheet)},
        parameters=settings, timings_s=timer.seconds, software=software_versions(),
    )  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    log.info("%s: %d patients; patterns %s", name, summary["n_patients"], summary["pattern_counts"])
    return summary


def write_fold_integrators(models: dict, out_dir: Path, *, kind: str, classes: list[str]) -> None:
    """Each fold's integrators as ``{out_dir}/fold{k}/model.joblib``: ``{"kind", "classes",
    "patterns": {pattern: {"columns", "model"}}}`` (model None: the mean of the scores)."""
    import joblib

    for fold, patterns_ in models.items():
        with atomic_path(out_dir / f"fold{fold}" / "model.joblib") as tmp:
            joblib.dump({"kind": kind, "classes": classes, "patterns": patterns_}, tmp)


def apply_fold_integrators(
    saved: dict, features: pd.DataFrame, *, kind: str, classes: list[str]
) -> pd.DataFrame:
    """One fold's saved integrators (``write_fold_integrators``) applied to new patients'
    submodel features: each patient by its pattern's integrator, the mean of its scores where
    the fold had none for that pattern. Nothing is fit. Indexed by patient_id, with ``pattern``."""
    found = patterns(features)
    parts = []
    for pattern in sorted(set(found) - {""}):
        chosen = saved["patterns"].get(pattern)
        rows = features.loc[found == pattern]
        if chosen is None or chosen["model"] is None:
            columns = chosen["columns"] if chosen else pattern_columns(features.columns, pattern)
            predicted = mean_fallback(rows[columns], kind=kind, classes=classes)
        else:
            predicted = predict_integrator(
                chosen["model"], rows[chosen["columns"]], kind=kind, classes=classes
            )
        parts.append(predicted.assign(pattern=pattern))
    return pd.concat(parts) if parts else pd.DataFrame(columns=["pattern"])


def fold_integrator_scores(
    saved: dict, tables: dict[str, pd.DataFrame], flags: pd.DataFrame, *, train_dir: Path,
    fold: str, classes: list[str],
) -> pd.DataFrame:  # fmt: skip
    """One fold's saved integrators (``fold`` as ``fold0``...) on its submodels' scores of new
    or perturbed patients: ``tables`` (per submodel, ``patient_id`` and ``prob_<class>...`` or
    ``risk``) masked by the modality flag each submodel needs in ``flags`` (indexed by
    patient_id, as in integration), so a patient whose ``has_pet`` is false is scored by the
    pattern model without the PET-reading submodels. Indexed by ``flags``' patients, with
    ``pattern``; external validation and the robustness sweep both score through it."""
    kind = saved["kind"]
    features = [
        masked_features(
            table,
            flags,
            submodel=name,
            flag=modality_flag(name, train_dir / name / fold),
            kind=kind,
            classes=classes,
        )
        for name, table in tables.items()
    ]
    joined = pd.concat(features, axis=1).reindex(flags.index)
    return apply_fold_integrators(saved, joined, kind=kind, classes=classes)


def fold_submodel_predictions(
    integrator_dir: Path, *, train_dir: Path, fold: int
) -> dict[str, pd.DataFrame]:
    """The test predictions of fold ``fold`` that the integrator in ``integrator_dir``
    combined, per submodel it used in that fold (its ``summary.json``): the training engine's
    ``train_dir/{submodel}/fold{k}/predictions.tsv``, or the clinical submodel's that
    ``integrate`` fit itself (``submodels/clinical_logistic/fold{k}/``). Nothing is fit."""
    summary = json.loads((integrator_dir / "summary.json").read_text())
    record = next(r for r in summary["folds"] if r["fold"] == fold)
    tables = {}
    for submodel, source in record["submodel_sources"].items():
        folder = (
            integrator_dir / "submodels" / CLINICAL_NAMES[summary["name"]] / f"fold{fold}"
            if source.startswith("fit here")
            else train_dir / submodel / f"fold{fold}"
        )
        tables[submodel] = _read_tsv(folder / "predictions.tsv")
    return tables


def predictions_layout(
    scored: pd.DataFrame, sheet: pd.DataFrame, fold: int, task: str
) -> pd.DataFrame:
    """Scores (``patient_id`` first) in the training engine's predictions layout: ``fold``
    and the sheet's ``label`` inserted, for survival its outcomes appended (the clinical
    submodel's, and the external validation's mean of the folds)."""
    table = sheet.set_index(sheet["patient_id"])
    out = scored.copy()
    out.insert(1, "fold", fold)
    out.insert(2, "label", table["label"].reindex(out["patient_id"]).to_numpy())
    if task == "survival":
        for column in ("survival_days", "event"):
            values = pd.to_numeric(table[column], errors="coerce")
            out[column] = values.reindex(out["patient_id"]).to_numpy()
    return out
