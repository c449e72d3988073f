"""The `lungfusion` command: one subcommand per pipeline stage.

Rules call it as ``python -m lungfusion <stage> --params '<json>' ...`` where the JSON holds
the config sections the stage reads (so Snakemake reruns a stage when they change). By hand,
``--config config.yaml`` supplies them instead. Only the chosen stage's module is imported, so
``lungfusion ingest`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from lungfusion.config import load_config

# subcommand -> (module under lungfusion.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "generate the synthetic PET/CT cohort as DICOM"),
    "index": ("index", "index a DICOM tree and choose each patient's CT and PET series"),
    "ingest": ("ingest", "read one patient's CT (HU) and PET (SUVbw) into NIfTI"),
    "register": ("register", "register PET to CT and resample both to the target grid"),
    "segment": ("segment", "segment the lungs and the tumour-inclusive region"),
    "roi": ("roi", "crop, window and normalise the model-input tensors"),
    "radiomics": ("radiomics", "IBSI radiomics features of each patient's lesion in CT and PET"),
    "splits": ("splits", "make stratified cross-validation folds"),
    "pretrain": ("pretrain", "self-supervised pretraining of one modality's encoder on one fold"),
    "train": ("train", "train one model on one fold"),
    "sfsa": ("sfsa", "sequential forward search of MMTM fusion positions on one fold"),
    "integrate": ("integrate", "late-fusion logistic / Cox integration of submodel scores"),
    "evaluate": ("evaluate", "metrics with bootstrap confidence intervals"),
    "external": ("external", "score and evaluate an external collection with the trained models"),
    "robustness": ("robustness", "CT+PET networks scored with the PET misaligned or withheld"),
    "saliency": ("saliency", "occlusion saliency of the CT+PET networks per modality"),
    "report": ("report", "HTML, Markdown, CSV and LaTeX report"),
    "predict": ("predict", "predict one new patient with trained models"),
}


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungfusion", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="config.yaml", help="config file (default: %(default)s)"
    )
    parser.add_argument(
        "--params",
        default=None,
        help="JSON object of config sections; overrides those sections of --config",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (module, help_text) in COMMANDS.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(f"lungfusion.commands.{module}").add_arguments(stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = _parser(chosen).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = json.loads(args.params) if args.params else None
    config = load_config(args.config, overrides=overrides, require_file=overrides is None)
    module = importlib.import_module(f"lungfusion.commands.{COMMANDS[args.command][0]}")
    return module.run(args, config) or 0


if __name__ == "__main__":
    sys.exit(main())
