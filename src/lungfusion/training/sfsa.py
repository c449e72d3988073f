"""Sequential forward search of MMTM fusion positions (SFSA, seed 002).

Train the no-fusion baseline; then each single position warm-started from the baseline; keep the
best if its validation loss beats the current one; then try adding each remaining position,
warm-started from the current best, until no addition lowers the validation loss.
With ``train.sfsa_exhaustive``, :func:`exhaustive_search` also trains every subset of positions
from scratch and ranks the greedy choice among them (a diagnostic; the chosen network stays the
greedy one).

The search is independent of how a candidate is trained: ``train_candidate(positions, source)``
gets the positions to activate and the candidate to warm-start from (``None`` for the baseline)
and returns a :class:`CandidateResult`. Tests pass a deterministic fake; :func:`run_sfsa`
trains each candidate with the engine on one fold (``lungfusion sfsa``).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lungfusion.artifacts import software_versions, write_json_atomic
from lungfusion.training.device import seed_everything
from lungfusion.training.engine import (
    Trainer,
    TrainSettings,
    config_hash,
    write_fold_predictions,
    write_table,
)
from lungfusion.training.fold import excluded_summary, load_fold, run_hash_payload
from lungfusion.training.run import settings_from_config

log = logging.getLogger(__name__)

SEARCH_COLUMNS = [
    "step", "positions", "warm_start_from", "val_loss", "epochs", "best_of_step", "chosen",
]  # fmt: skip
EXHAUSTIVE_COLUMNS = ["positions", "val_loss", "epochs", "rank"]


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


def candidate_folder(positions: Sequence[int], warm_start_from: Sequence[int] | None) -> str:
    """A candidate's folder under ``candidates/``, one per run: the label for the greedy search's
    runs (the baseline and the warm-started candidates), ``scratch-<label>`` for a non-empty
    subset trained from scratch (only the exhaustive search trains those): a different run from
    the greedy candidate with the same positions."""
    label = position_label(positions)
    return f"scratch-{label}" if positions and warm_start_from is None else label


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


def nonempty_subsets(positions: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``positions`` (sorted tuples), the smaller ones first."""
    return [
        tuple(sorted(subset))
        for size in range(1, len(positions) + 1)
        for subset in itertools.combinations(positions, size)
    ]


def exhaustive_search(
    train_candidate: Callable[[tuple[int, ...], Candidate | None], CandidateResult],
    *,
    positions: Sequence[int],
    baseline: Candidate,
) -> pd.DataFrame:
    """Train every non-empty subset of ``positions`` from scratch and rank all subsets, the
    no-MMTM baseline included, by validation loss (``exhaustive.tsv``; rank 1 is the lowest,
    ties share the better rank).

    From scratch (``train_candidate(subset, None)``) rather than warm-started: a greedy
    candidate's warm start depends on the path the search took, which a subset it never reached
    does not have; from scratch every subset trains alike. The baseline is the greedy search's
    own (trained from scratch too) and is not trained again; the greedy search's warm-started
    candidates are other runs and are not reused.
    """
    results = {(): baseline.result}
    for subset in nonempty_subsets(positions):
        results[subset] = train_candidate(subset, None)
    table = pd.DataFrame(
        [
            {"positions": position_label(p), "val_loss": r.val_loss, "epochs": r.epochs}
            for p, r in results.items()
        ]
    )
    table["rank"] = table.val_loss.rank(method="min").astype(int)
    return table.sort_values("rank", kind="stable").reset_index(drop=True)[EXHAUSTIVE_COLUMNS]


def exhaustive_record(table: pd.DataFrame, greedy_positions: Sequence[int]) -> dict:
    """The greedy choice against every subset of :func:`exhaustive_search`'s ``table``: its rank
    of ``n_subsets`` and its validation-loss gap to the best subset, both from the subsets' runs
    from scratch (the greedy run's own loss is ``best.json``'s ``val_loss``)."""
    label = position_label(greedy_positions)
    greedy = table[table.positions == label].iloc[0]
    best = table.iloc[0]
    return {
        "greedy_label": label,
        "rank": int(greedy["rank"]),
        "n_subsets": len(table),
        "val_loss_gap": float(greedy.val_loss - best.val_loss),
        "best_label": str(best.positions),
        "greedy_val_loss": float(greedy.val_loss),
        "best_val_loss": float(best.val_loss),
    }


# ---------------------------------------------------------------- the search on one fold


def run_sfsa(
    *, fold: int, folds_path: str | Path, roi_dir: str | Path, sample_sheet: str | Path,
    out_dir: str | Path, train_out_dir: str | Path | None, config: dict, progress: bool = True,
    pretrain_dir: str | Path | None = None,
) -> None:  # fmt: skip
    """Search the MMTM positions on fold ``fold`` (``search.tsv``, ``best.json`` and each
    candidate's run in ``out_dir``), then score the chosen network in ``train_out_dir``
    (default ``results/train/sfsa/fold{k}``) as ``lungfusion train`` writes a network's run.
    With ``train.sfsa_exhaustive`` also rank every subset (``exhaustive.tsv`` and
    ``best.json``'s ``exhaustive`` record). Every candidate trained from nothing starts its
    streams as ``train.init`` says (``pretrain_dir``: the pretrain stage's encoders)."""
    from lungfusion.models import MMTM_POSITIONS, build_model, required_modalities, warm_start
    from lungfusion.training.init import encoder_spec_from_config, initialise_encoders

    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_dir = Path(train_out_dir or out_dir.parent.parent / "train" / "sfsa" / out_dir.name)
    for stale in (out_dir / "best.json", out_dir / "exhaustive.tsv", train_dir / "summary.json"):
        stale.unlink(missing_ok=True)
    # candidates are compared on validation loss, as in seed 002
    sfsa_epochs = config["train"].get("sfsa_epochs")
    overrides = {"epochs": sfsa_epochs} if sfsa_epochs else {}
    settings = settings_from_config(config, progress=progress, selection_metric="loss", **overrides)
    data = load_fold(
        sample_sheet=sample_sheet, folds_path=folds_path, fold=fold, roi_dir=roi_dir,
        modalities=required_modalities("mmtm"), settings=settings, config=config,
    )  # fmt: skip
    base_build = {
        "n_classes": settings.n_outputs,
        "in_shape": list(data.in_shape),
        "widths": list(config["train"]["widths"]),
        "blocks_per_stage": config["train"]["blocks_per_stage"],
        "n_tabular": 0,
    }
    spec = encoder_spec_from_config(config)
    if spec is not None:
        base_build["encoder"] = spec.as_dict()

    def build(positions: tuple[int, ...]):
        seed_everything(settings.seed)  # the initial weights too: a rerun repeats the search
        return build_model("mmtm", **base_build, mmtm_positions=positions)

    hashes: dict[str, str] = {}  # run hash per candidate folder

    def train_candidate(positions: tuple[int, ...], source: Candidate | None) -> CandidateResult:
        model = build(positions)
        folder = candidate_folder(positions, None if source is None else source.positions)
        payload = run_hash_payload(
            "sfsa", {**base_build, "mmtm_positions": positions}, settings, data
        )
        payload["warm_start_from"] = None
        init = initialise_encoders(
            model, config=config, fold=fold, pretrain_dir=pretrain_dir, spec=spec
        )
        payload["init"] = init.identity()
        if source is not None:  # the streams go on from the previous candidate's
            warm_start(model, source.result.state)
            payload["warm_start_from"] = hashes[folder_of(source)]
        hashes[folder] = config_hash(payload)
        meta = {"name": "sfsa", "build": {**base_build, "mmtm_positions": list(positions)}}
        trainer = Trainer(
            model,
            settings=settings,
            out_dir=out_dir / "candidates" / folder,
            run_hash=hashes[folder],
            model_meta=meta,
            pretrained_encoders=init.pretrained_modules,
        )
        fit = trainer.fit(data.train, data.val)
        log.info("sfsa %s: val loss %.4f", folder, fit.best_val_loss)
        return CandidateResult(fit.best_val_loss, fit.epochs_run, fit.best_state)

    search = sequential_forward_search(train_candidate, positions=MMTM_POSITIONS)
    write_table(search.table(), out_dir / "search.tsv", float_format=None)  # exact losses
    best = search.best
    chosen_dir = out_dir / "candidates" / folder_of(best)
    summary = score_chosen(
        build(best.positions),
        best=best,
        chosen_dir=chosen_dir,
        train_dir=train_dir,
        settings=settings,
        data=data,
        fold=fold,
        run_hash=hashes[folder_of(best)],
    )
    summary["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    best_record = {
        "fold": fold,
        "positions": list(best.positions),
        "label": position_label(best.positions),
        "val_loss": best.result.val_loss,
        "epochs": best.result.epochs,
        "warm_start_from": None if best.warm_start_from is None else list(best.warm_start_from),
        "n_candidates": len(search.candidates),
        "baseline_val_loss": search.candidates[0].result.val_loss,
        "checkpoint": str(train_dir / "model.pt"),
    }
    if config["train"].get("sfsa_exhaustive"):
        table = exhaustive_search(
            train_candidate, positions=MMTM_POSITIONS, baseline=search.candidates[0]
        )
        write_table(table, out_dir / "exhaustive.tsv", float_format=None)  # exact losses
        best_record["exhaustive"] = exhaustive_record(table, best.positions)
    write_json_atomic(out_dir / "best.json", best_record)
    summary["sfsa"] = best_record
    write_json_atomic(train_dir / "summary.json", summary)  # the tracked output, last


def folder_of(candidate: Candidate) -> str:
    """The folder of a candidate the search trained (see :func:`candidate_folder`)."""
    return candidate_folder(candidate.positions, candidate.warm_start_from)


def score_chosen(
    model,
    *,
    best: Candidate,
    chosen_dir: Path,
    train_dir: Path,
    settings: TrainSettings,
    data,
    fold: int,
    run_hash: str,
) -> dict:
    """Copy the chosen candidate's checkpoint and history into ``train_dir`` and score it."""
    started = time.perf_counter()
    train_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "history.tsv"):
        shutil.copyfile(chosen_dir / name, train_dir / name)
    model.load_state_dict(torch.load(train_dir / "model.pt", map_location="cpu")["state_dict"])
    trainer = Trainer(
        model, settings=replace(settings, progress=False), out_dir=train_dir, run_hash=run_hash
    )
    calibration = write_fold_predictions(trainer, data.val, data.test, fold, train_dir)
    return {
        "status": "ok",
        "model": "sfsa",
        "fold": fold,
        "task": settings.task,
        "n_patients": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "excluded_missing_modality": excluded_summary(data.excluded),
        "modalities": ["ct", "pet"],
        "best_epoch": int(torch.load(train_dir / "model.pt", map_location="cpu")["epoch"]),
        "selection_metric": "loss",
        "best_metric": -best.result.val_loss,
        "best_val_loss": best.result.val_loss,
        "epochs_run": best.result.epochs,
        "device": trainer.device.type,
        "config_hash": run_hash,
        "settings": settings.identity(),
        "calibration": calibration,
        "timings_s": {"predict": round(time.perf_counter() - started, 3)},
        "software": software_versions(),
    }
