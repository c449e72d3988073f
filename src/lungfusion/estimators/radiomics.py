"""The lesion-feature models: penalised logistic regression (or ridge Cox) on the lesion features.

Classical CT+PET baselines beside the networks, on ``results/radiomics/features.tsv`` (written
by ``lungfusion radiomics``): ``radiomics``, feature-level fusion of every IBSI and context
feature of the lesion in both modalities, and ``semantic``, the seven descriptors a
radiologist reads (:data:`SEMANTIC_FEATURES`), lightly penalised. Imputation (a patient whose ROI showed no lesion), the removal of
constant features and scaling are fit on the fold's training patients only; the strong L2
penalty (``C``) keeps ~150 correlated features usable on a few hundred patients.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> table = pd.DataFrame({"patient_id": [f"p{i}" for i in range(40)],
...                       "ct_firstorder_Mean": rng.normal(size=40)})
>>> table["label"] = np.where(table.ct_firstorder_Mean > 0, "SQC", "ADC")
>>> model = fit_radiomics_model(table, fit_ids=table.patient_id, task="classification",
...                             classes=["ADC", "SQC"], C=1.0)
>>> float(model.score(table)["prob_SQC"][table.label == "SQC"].mean()) > 0.5
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis

from lungfusion.estimators.targets import (
    classification_target,
    estimator_scores,
    survival_target,
)

FEATURE_PREFIXES = ("ct_", "pet_", "lesion_", "ctpet_", "loc_", "sem_")
# the semantic model: what a radiologist reads off the PET-CT, each on a scale a linear model
# can use (the radiomics stage's ``semantic``, ``ctpet`` and ``location`` context features)
SEMANTIC_FEATURES = (
    "sem_log_volume_ml",
    "sem_solid_fraction",
    "sem_cavity_fraction",
    "sem_log_suvmax",
    "sem_pet_core_ratio",
    "ctpet_offset_cosine",
    "loc_lateral_fraction",
)
PET_PREFIXES = ("pet_", "ctpet_", "sem_log_suvmax", "sem_pet_core_ratio")


def feature_columns(
    table: pd.DataFrame, model: str = "radiomics", modalities=("ct", "pet")
) -> list[str]:
    """The model's columns of the features table: all of them for ``radiomics``, the
    descriptors for ``semantic``; without ``pet`` in ``modalities``, none read from the PET."""
    if model == "radiomics":
        columns = [c for c in table.columns if c.startswith(FEATURE_PREFIXES)]
    else:
        missing = [c for c in SEMANTIC_FEATURES if c not in table.columns]
        if missing:
            raise ValueError(
                f"the semantic model needs {missing} in the radiomics table: keep location, "
                "ctpet and semantic in radiomics.context, and if they are there, the table is "
                "older than they are (snakemake --forcerun radiomics)"
            )
        columns = list(SEMANTIC_FEATURES)
    if "pet" not in modalities:
        columns = [c for c in columns if not c.startswith(PET_PREFIXES)]
    return columns


@dataclass
class RadiomicsModel:
    task: str
    classes: list[str] | None
    columns: list[str]
    pipeline: Pipeline
    modalities: tuple[str, ...] = ("ct", "pet")

    def score(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """``{"prob_<class>": ...}`` (classification) or ``{"risk": ...}`` (survival)."""
        x = table[self.columns].to_numpy(float)
        return estimator_scores(self.pipeline, x, self.task, self.classes)


def fit_radiomics_model(
    table: pd.DataFrame,
    *,
    fit_ids: Sequence[str],
    task: str,
    classes: Sequence[str] | None = None,
    C: float = 0.01,
    alpha: float = 10.0,
    model: str = "radiomics",
    modalities: Sequence[str] = ("ct", "pet"),
) -> RadiomicsModel:
    """Fit ``model``'s columns (:func:`feature_columns`) on the ``fit_ids`` rows of ``table``
    (features plus ``label`` or survival columns)."""
    columns = feature_columns(table, model, modalities)
    if not columns:
        raise ValueError(
            f"the radiomics table has no feature columns ({', '.join(FEATURE_PREFIXES)})"
        )
    fit = table.set_index("patient_id", drop=False).loc[list(fit_ids)]
    if task == "survival":
        known, target = survival_target(fit)
        estimator = CoxPHSurvivalAnalysis(alpha=alpha)
    else:
        known, target = classification_target(fit, classes)
        if len(np.unique(target)) < 2:
            raise ValueError("the radiomics model needs both classes among its training patients")
        estimator = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    pipeline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        VarianceThreshold(),
        StandardScaler(),
        estimator,
    )
    pipeline.fit(fit.loc[known, columns].to_numpy(float), target)
    return RadiomicsModel(
        task=task,
        classes=None if classes is None else list(classes),
        columns=columns,
        pipeline=pipeline,
        modalities=tuple(modalities),
    )
