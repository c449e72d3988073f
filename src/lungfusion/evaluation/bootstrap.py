"""Seeded stratified bootstrap confidence intervals.

Each resample draws, with replacement, as many patients of each stratum (class, or event for
survival) as the stratum holds, so every resample keeps the class balance and an AUC stays
defined. The interval is the percentile interval of the resampled values; resamples where a
metric is undefined (NaN) are left out of that metric's interval, and the count is reported.

>>> import numpy as np
>>> strata = np.array([0, 0, 0, 1, 1])
>>> [sorted(set(strata[i])) for i in stratified_bootstrap_indices(strata, n_resamples=2, seed=0)]
[[0, 1], [0, 1]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def stratified_bootstrap_indices(
    strata: np.ndarray, *, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield ``n_resamples`` index arrays, each resampling every stratum to its own size."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    strata = np.asarray(strata)
    groups = [np.flatnonzero(strata == value) for value in np.unique(strata)]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield np.concatenate([rng.choice(group, size=len(group), replace=True) for group in groups])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], dict[str, float]],
    strata: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Percentile intervals of every value ``statistic(indices)`` returns.

    Args:
        statistic: maps an index array (into the patients) to a dict of named values.
        strata: one stratum label per patient.

    Returns:
        ``{name: {"ci_low": ..., "ci_high": ..., "n_valid": ...}}``.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    samples: dict[str, list[float]] = {}
    for indices in stratified_bootstrap_indices(strata, n_resamples=n_resamples, seed=seed):
        for name, value in statistic(indices).items():
            samples.setdefault(name, []).append(value)
    tail = 100 * (1 - ci) / 2
    intervals = {}
    for name, values in samples.items():
        array = np.asarray(values, dtype=float)
        valid = array[np.isfinite(array)]
        low, high = np.percentile(valid, [tail, 100 - tail]) if len(valid) else (np.nan, np.nan)
        intervals[name] = {"ci_low": float(low), "ci_high": float(high), "n_valid": len(valid)}
    return intervals
