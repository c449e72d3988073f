"""CT/PET/clinical models: a registry by name; every model takes the batch dict, returns logits.

Models know torch and MONAI only. ``build_model(name, n_classes=..., in_shape=...)`` builds one;
``forward(batch)`` reads ``ct`` / ``pet`` (B, 1, D, H, W), optional ``tab`` (B, F) and ``has_pet``
(B,), and returns (B, n_classes) logits, or a (B, 1) risk when built with ``n_classes=1``.
"""

from . import baselines, fusion, kan, mmcaf, mmtm  # noqa: F401  (importing registers them)
from .fusion import MULTISTAGE_BLOCKS_PER_STAGE, MULTISTAGE_WIDTHS, FusionBlock
from .kan import KAN, ClinicalNet, KANLinear
from .mmcaf import MMCAFNet
from .mmtm import MMTM, MMTM_POSITIONS, MMTMNet, warm_start
from .registry import (
    MODEL_ALIASES,
    build_model,
    count_parameters,
    model_names,
    register_model,
    required_modalities,
)

MODEL_NAMES = model_names()

__all__ = [
    "KAN",
    "ClinicalNet",
    "KANLinear",
    "MMCAFNet",
    "MMTM",
    "MMTM_POSITIONS",
    "MODEL_ALIASES",
    "MODEL_NAMES",
    "MULTISTAGE_BLOCKS_PER_STAGE",
    "MULTISTAGE_WIDTHS",
    "FusionBlock",
    "MMTMNet",
    "build_model",
    "count_parameters",
    "model_names",
    "register_model",
    "required_modalities",
    "warm_start",
]
