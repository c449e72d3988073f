"""``lungfusion sfsa``: search MMTM fusion positions on one fold, then score the chosen network.

Writes ``search.tsv`` and ``best.json`` in ``--out-dir`` (each candidate trains in
``--out-dir/candidates/<positions>/`` and resumes there after a kill), and the chosen network's
artifacts in ``--train-out-dir`` (default ``results/train/sfsa/fold{k}``) exactly as
``lungfusion train`` writes them, so evaluation treats ``sfsa`` as one more model. With
``train.sfsa_exhaustive`` it also writes ``exhaustive.tsv`` (every position subset, trained from
scratch in ``candidates/scratch-<positions>/``) and ``best.json``'s ``exhaustive`` record.
"""

from __future__ import annotations

import argparse

from lungfusion.training.sfsa import run_sfsa


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
    parser.add_argument(
        "--pretrain-dir", default=None, help="results/pretrain (train.init: pretrain)"
    )


def run(args: argparse.Namespace, config: dict) -> int:
    run_sfsa(
        fold=args.fold, folds_path=args.folds, roi_dir=args.roi_dir,
        sample_sheet=args.sample_sheet, out_dir=args.out_dir, train_out_dir=args.train_out_dir,
        config=config, progress=not args.no_progress, pretrain_dir=args.pretrain_dir,
    )  # fmt: skip
    return 0
