"""``lungfusion synth``: generate the synthetic PET/CT cohort from the ``synthetic`` config section."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default=None, help="overrides synthetic.out_dir")
    parser.add_argument(
        "--workers", type=int, default=1, help="patients generated in parallel (default: 1)"
    )


def run(args: argparse.Namespace, config: dict) -> int:
    from lungfusion.synth import generate_cohort

    section = config["synthetic"]
    out_dir = args.out_dir or section["out_dir"]
    summary = generate_cohort(
        out_dir,
        preset=section["preset"],
        n_patients=section["n_patients"],
        seed=section["seed"],
        class_prior=section["class_prior"],
        fraction_without_pet=section["fraction_without_pet"],
        fraction_with_prior_study=section["fraction_with_prior_study"],
        workers=args.workers,
    )
    log.info("synthetic cohort written: %s", json.dumps(summary))
    return 0
