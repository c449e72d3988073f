"""``lungfusion sfsa``: search MMTM fusion positions on one fold, then score the chosen network.

Writes ``search.tsv`` and ``best.json`` in ``--out-dir`` (each candidate trains in
``--out-dir/candidates/<positions>/`` and resumes there after a kill), and the chosen network's
artifacts in ``--train-out-dir`` (default ``results/train/sfsa/fold{k}``) exactly as
``lungfusion train`` writes them, so evaluation treats ``sfsa`` as one more model.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from lungfusion.artifacts import software_versions, write_json_atomic
from lungfusion.commands.train import prepare_fold, run_hash_payload, settings_from_config
from lungfusion.samplesheet import read_sheet
from lungfusion.training.engine import (
    Trainer,
    TrainSettings,
    config_hash,
    write_fold_predictions,
    write_table,
)
from lungfusion.training.sfsa import (
    Candidate,
    CandidateResult,
    position_label,
    sequential_forward_search,
)
from lungfusion.training.splits import read_folds

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--folds", required=True, help="folds.tsv from `lungfusion splits`")
    parser.add_argument("--roi-dir", required=True)
    parser.add_argument("--sample-sheet", required=True)
    parser.add_argument("--out-dir", required=True, help="e.g. results/sfsa/fold0")
    parser.add_argument(
        "--train-out-dir", default=None, help="default: <results>/train/sfsa/<fold folder>"
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace, config: dict) -> int:
    from lungfusion.models import MMTM_POSITIONS, build_model, required_modalities, warm_start

    started = time.perf_counter()
    out_dir = Path(args.out_dir)
    train_dir = Path(args.train_out_dir or out_dir.parent.parent / "train" / "sfsa" / out_dir.name)
    for stale in (out_dir / "best.json", train_dir / "summary.json"):
        stale.unlink(missing_ok=True)
    # candidates are compared on validation loss, as in seed 002
    sfsa_epochs = config["train"].get("sfsa_epochs")
    overrides = {"epochs": sfsa_epochs} if sfsa_epochs else {}
    settings = settings_from_config(
        config, progress=not args.no_progress, selection_metric="loss", **overrides
    )
    sheet = read_sheet(args.sample_sheet, config["cohort"])
    sheet["patient_id"] = sheet.patient_id.astype(str)
    data = prepare_fold(
        folds=read_folds(args.folds),
        fold=args.fold,
        roi_dir=args.roi_dir,
        sheet=sheet,
        modalities=required_modalities("mmtm"),
        task=settings.task,
        classes=settings.classes,
    )
    base_build = {
        "n_classes": settings.n_outputs,
        "in_shape": list(data.in_shape),
        "widths": list(config["train"]["widths"]),
        "blocks_per_stage": config["train"]["blocks_per_stage"],
        "n_tabular": 0,
    }

    def build(positions: tuple[int, ...]):
        return build_model("mmtm", **base_build, mmtm_positions=positions)

    hashes: dict[tuple[int, ...], str] = {}

    def train_candidate(positions: tuple[int, ...], source: Candidate | None) -> CandidateResult:
        model = build(positions)
        if source is not None:
            warm_start(model, source.result.state)
        payload = run_hash_payload(
            "sfsa", {**base_build, "mmtm_positions": positions}, settings, data
        )
        payload["warm_start_from"] = None if source is None else hashes[source.positions]
        hashes[positions] = config_hash(payload)
        meta = {"name": "sfsa", "build": {**base_build, "mmtm_positions": list(positions)}}
        trainer = Trainer(
            model,
            settings=settings,
            out_dir=out_dir / "candidates" / position_label(positions),
            run_hash=hashes[positions],
            model_meta=meta,
        )
        fit = trainer.fit(data.train, data.val)
        log.info("sfsa %s: val loss %.4f", position_label(positions), fit.best_val_loss)
        return CandidateResult(fit.best_val_loss, fit.epochs_run, fit.best_state)

    search = sequential_forward_search(train_candidate, positions=MMTM_POSITIONS)
    write_table(search.table(), out_dir / "search.tsv", float_format=None)  # exact losses
    best = search.best
    chosen_dir = out_dir / "candidates" / position_label(best.positions)
    summary = score_chosen(
        build(best.positions),
        best=best,
        chosen_dir=chosen_dir,
        train_dir=train_dir,
        settings=settings,
        data=data,
        fold=args.fold,
        run_hash=hashes[best.positions],
    )
    summary["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    best_record = {
        "fold": args.fold,
        "positions": list(best.positions),
        "label": position_label(best.positions),
        "val_loss": best.result.val_loss,
        "epochs": best.result.epochs,
        "warm_start_from": None if best.warm_start_from is None else list(best.warm_start_from),
        "n_candidates": len(search.candidates),
        "baseline_val_loss": search.candidates[0].result.val_loss,
        "checkpoint": str(train_dir / "model.pt"),
    }
    write_json_atomic(out_dir / "best.json", best_record)
    summary["sfsa"] = best_record
    write_json_atomic(train_dir / "summary.json", summary)  # the tracked output, last
    return 0


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
    n_excluded = sum(len(v) for v in data.excluded.values())
    return {
        "status": "ok",
        "model": "sfsa",
        "fold": fold,
        "task": settings.task,
        "n_patients": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "excluded_missing_modality": {
            "count": n_excluded,
            "by_role": {k: len(v) for k, v in data.excluded.items()},
            "patients": data.excluded,
        },
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
