"""Sequential forward search of MMTM fusion positions (SFSA, seed 002).

Train the no-fusion baseline; then each single position warm-started from the baseline; keep the
best if its validation loss beats the current one; then try adding each remaining position,
warm-started from the current best, until no addition lowers the validation loss.

The search is independent of how a candidate is trained: ``train_candidate(positions, source)``
gets the positions to activate and the candidate to warm-start from (``None`` for the baseline)
and returns a :class:`CandidateResult`. Tests pass a deterministic fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

SEARCH_COLUMNS = [
    "step", "positions", "warm_start_from", "val_loss", "epochs", "best_of_step", "chosen",
]  # fmt: skip


@dataclass
class CandidateResult:
    """What training one configuration gave: its best validation loss and epochs trained.
    ``state`` is opaque to the search (e.g. the weights), handed back for warm starts."""

    val_loss: float
    epochs: int
    state: Any = None


@dataclass
class Candidate:
    step: int
    positions: tuple[int, ...]
    warm_start_from: tuple[int, ...] | None
    result: CandidateResult


@dataclass
class SearchResult:
    best: Candidate
    candidates: list[Candidate] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per trained candidate (``search.tsv``)."""
        step_best = {}
        for c in self.candidates:
            if c.step not in step_best or c.result.val_loss < step_best[c.step].result.val_loss:
                step_best[c.step] = c
        rows = [
            {
                "step": c.step,
                "positions": position_label(c.positions),
                "warm_start_from": (
                    "scratch" if c.warm_start_from is None else position_label(c.warm_start_from)
                ),
                "val_loss": c.result.val_loss,
                "epochs": c.result.epochs,
                "best_of_step": c is step_best[c.step],
                "chosen": c is self.best,
            }
            for c in self.candidates
        ]
        return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def position_label(positions: Sequence[int]) -> str:
    """``none`` for the baseline, else the positions joined by ``+`` (e.g. ``0+2``)."""
    return "+".join(str(p) for p in sorted(positions)) or "none"


def sequential_forward_search(
    train_candidate: Callable[[tuple[int, ...], Candidate | None], CandidateResult],
    *,
    positions: Sequence[int] = (0, 1, 2, 3),
) -> SearchResult:
    """Run SFSA over ``positions`` and return every candidate and the chosen one.

    A candidate replaces the current best only if its validation loss is strictly lower.
    """
    positions = tuple(positions)
    if len(set(positions)) != len(positions):
        raise ValueError(f"positions must be distinct, got {positions}")
    baseline = Candidate(0, (), None, train_candidate((), None))
    result = SearchResult(best=baseline, candidates=[baseline])
    step = 0
    while True:
        remaining = [p for p in positions if p not in result.best.positions]
        if not remaining:
            break
        step += 1
        source = result.best
        tried = []
        for position in remaining:
            candidate_positions = tuple(sorted((*source.positions, position)))
            trained = train_candidate(candidate_positions, source)
            tried.append(Candidate(step, candidate_positions, source.positions, trained))
        result.candidates += tried
        step_best = min(tried, key=lambda c: c.result.val_loss)
        if not step_best.result.val_loss < source.result.val_loss:
            break
        result.best = step_best
    return result
