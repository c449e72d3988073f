"""The table models: scikit-learn estimators on the clinical sheet or the lesion features.

Torch-free, so the evaluation layer (late fusion) and ``predict`` use them without the
training engine. :data:`TABLE_MODELS` is the one place that names them: the workflow, the
``train`` command and ``predict`` look a model up here rather than test its name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableModel:
    """What a table model reads: the radiomics stage's ``features.tsv`` or only the sample
    sheet, and its imaging modalities (``None``: set by ``train.<model>.modalities``)."""

    reads_features: bool
    modalities: tuple[str, ...] | None


TABLE_MODELS = {
    "clinical": TableModel(reads_features=False, modalities=("tab",)),
    "radiomics": TableModel(reads_features=True, modalities=None),
    "semantic": TableModel(reads_features=True, modalities=None),
}
# the models fit on the lesion features (radiomics.py) rather than on the clinical sheet
LESION_FEATURE_MODELS = tuple(name for name, m in TABLE_MODELS.items() if m.reads_features)
