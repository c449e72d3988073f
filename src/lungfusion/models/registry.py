"""A registry that maps a model name to its builder and the modalities it reads.

Builders are registered with :func:`register_model` and called through :func:`build_model`, which
checks the arguments every model shares before the builder sees them.

Example:
    >>> from lungfusion.models import build_model, required_modalities
    >>> model = build_model("multistage", n_classes=2, in_shape=(32, 64, 64))
    >>> sorted(required_modalities("multistage"))
    ['ct', 'pet']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from lungfusion.fusion_grid import parse_grid_name

KNOWN_MODALITIES = frozenset({"ct", "pet", "tab"})

# Names that build another registered model: SFSA searches over MMTM positions, so the network it
# trains and scores is an `mmtm` model with the chosen `mmtm_positions`.
MODEL_ALIASES = {"sfsa": "mmtm"}


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its builder, the modalities it reads, its default depth."""

    name: str
    builder: Callable[..., nn.Module]
    modalities: frozenset[str]
    default_blocks_per_stage: int


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, modalities: Sequence[str], default_blocks_per_stage: int = 1
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` (a decorator).

    The builder takes keyword-only arguments ``n_classes``, ``in_shape``, ``widths``,
    ``blocks_per_stage``, ``n_tabular`` and any model-specific options, and returns a module whose
    ``forward(batch)`` returns logits (or a risk when ``n_classes == 1``).
    """
    unknown = set(modalities) - KNOWN_MODALITIES
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)} for model {name!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY or name in MODEL_ALIASES:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=builder,
            modalities=frozenset(modalities),
            default_blocks_per_stage=default_blocks_per_stage,
        )
        return builder

    return decorator


def model_names() -> tuple[str, ...]:
    """Names of the registered models, in registration order (aliases excluded)."""
    return tuple(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registered spec for ``name`` (aliases and fusion-depth grid cells resolved)."""
    resolved = "multistage" if parse_grid_name(name) else MODEL_ALIASES.get(name, name)
    if resolved not in _REGISTRY:
        known = ", ".join(sorted([*_REGISTRY, *MODEL_ALIASES]))
        raise KeyError(f"unknown model {name!r}; registered models: {known}")
    return _REGISTRY[resolved]


def required_modalities(name: str) -> set[str]:
    """Modalities the model ``name`` reads from the batch, e.g. ``{"ct", "pet"}``."""
    return set(model_spec(name).modalities)


def build_model(
    name: str,
    *,
    n_classes: int,
    in_shape: Sequence[int],
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int | None = None,
    n_tabular: int = 0,
    **options,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a registered name (see ``MODEL_NAMES``) or an alias (``sfsa`` -> ``mmtm``).
        n_classes: classes for classification (>= 2); 1 builds a survival model returning a
            (B, 1) risk for a Cox loss.
        in_shape: (D, H, W) of the ROI tensors.
        widths: channels per stage; the number of stages L is ``len(widths)``.
        blocks_per_stage: residual blocks N per stage; None takes the model's own default
            (3 for ``multistage`` as in seed 000, 1 otherwise).
        n_tabular: number of clinical features in ``batch["tab"]`` (0: none).
        **options: model-specific keyword options (e.g. ``dropout``, ``mmtm_positions``, or
            ``encoder``: an :class:`~lungfusion.models.encoders.EncoderSpec` dict for the image
            networks); an unknown option raises ``TypeError`` naming the accepted ones.
    """
    spec = model_spec(name)
    in_shape = _check_in_shape(in_shape)
    widths = _check_widths(widths)
    if blocks_per_stage is None:
        blocks_per_stage = spec.default_blocks_per_stage
    _check_positive_int("n_classes", n_classes)
    _check_positive_int("blocks_per_stage", blocks_per_stage)
    if not isinstance(n_tabular, int) or n_tabular < 0:
        raise ValueError(f"n_tabular must be an integer >= 0, got {n_tabular!r}")
    _check_options(spec, options)
    return spec.builder(
        n_classes=n_classes,
        in_shape=in_shape,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
        n_tabular=n_tabular,
        **options,
    )


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_positive_int(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be an integer >= 1, got {value!r}")


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(in_shape)
    if len(shape) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ValueError(f"in_shape must be three positive integers (D, H, W), got {in_shape!r}")
    return shape


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(widths)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(
            f"widths must be a non-empty sequence of positive integers, got {widths!r}"
        )
    return widths


def _check_options(spec: ModelSpec, options: dict) -> None:
    parameters = inspect.signature(spec.builder).parameters
    common = {"n_classes", "in_shape", "widths", "blocks_per_stage", "n_tabular"}
    if "encoder" in options and "encoder" not in parameters:
        if options["encoder"] is None:
            del options["encoder"]  # the native encoder: nothing to pass
        else:
            raise TypeError(f"model {spec.name!r} has no image encoder to build from a spec")
    accepted = sorted(set(parameters) - common)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {spec.name!r} does not accept option(s) {unknown}; "
            f"accepted options: {accepted or 'none'}"
        )
