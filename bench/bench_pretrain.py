"""Do the networks learn better from a pretrained start? Issue 21's table, on ideal ROIs.

For each cohort seed (the quality run's, and an untouched second one), the n-patient synthetic
cohort is rendered on ideal ROIs (bench/ideal_rois.py, as bench_learning_curve.py does: no
DICOM, registration or segmentation, every patient with a PET), split with `lungfusion splits`,
described with `lungfusion radiomics` (the auxiliary targets and the `semantic` model), and each
CT+PET network is trained with `lungfusion train` under four starts on the same folds and the
same ResNet-10 trunk (``train.encoder``):

- ``scratch``: random weights;
- ``pretrain``: the fold's self-supervised encoders (`lungfusion pretrain`, masked-volume
  restoration on the fold's training and validation ROIs, never its test ROIs);
- ``aux``: scratch plus the auxiliary regression heads on the semantic descriptors;
- ``pretrain_aux``: both;
- ``descriptors``: the fold's encoders pretrained to predict the semantic descriptors their
  modality carries (``pretrain.objective: descriptors``, label-free, same ROIs), fine-tuned;
- ``descriptors_frozen``: the same encoders kept frozen (``train.freeze_encoder_epochs: -1``),
  only the networks' fusion and head layers trained.

Pooled out-of-fold AUROC with a bootstrap CI and its ratio to the image-only oracle on the same
patients, beside the ``semantic`` logistic model. Then a learning curve (``--curve-sizes``) of one
network, scratch against pretrain, on the first seed.

    python bench/bench_pretrain.py [--seeds 20261123 11] [--n 300] [--models early late multistage]
        [--variants scratch pretrain aux pretrain_aux descriptors descriptors_frozen]
        [--epochs 15] [--pretrain-epochs 20] [--descriptor-epochs 30]
        [--curve-sizes 150 300 1000] [--curve-model early] [--workdir bench/_work/pretrain]
        [--report-only]

Runs already complete in the workdir are not repeated. Writes bench/results/pretrain.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import yaml
from bench_learning_curve import curve_row, lungfusion, run_config, write_cohort
from bench_quality import fmt

from lungfusion.estimators.radiomics import SEMANTIC_FEATURES
from lungfusion.training.pretrain import default_descriptors

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "bench" / "results" / "pretrain.md"
DEFAULT_WORKDIR = REPO / "bench" / "_work" / "pretrain"
VARIANTS = {
    "scratch": {"init": "scratch"},
    "pretrain": {"init": "pretrain"},
    "aux": {"init": "scratch", "aux": True},
    "pretrain_aux": {"init": "pretrain", "aux": True},
    "descriptors": {"init": "pretrain", "objective": "descriptors"},
    "descriptors_frozen": {"init": "pretrain", "objective": "descriptors", "freeze": -1},
}
PRETRAIN_DIRS = {"masked": "pretrain", "descriptors": "pretrain_descriptors"}
CRITERION = 0.9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[20261123, 11])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["early", "late", "multistage"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--encoder", default="resnet10")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--descriptor-epochs", type=int, default=30)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--curve-sizes", type=int, nargs="*", default=[150, 300, 1000])
    parser.add_argument("--curve-model", default="early")
    parser.add_argument("--jitter-mm", type=float, default=1.5)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args()


def base_config(args: argparse.Namespace, seed: int) -> dict:
    config = run_config(argparse.Namespace(folds=args.folds, epochs=args.epochs))
    config["synthetic"]["seed"] = seed
    config["train"]["encoder"] = args.encoder
    config["pretrain"] = {"epochs": args.pretrain_epochs, "batch_size": 8}
    return config


def objective(variant: str) -> str | None:
    """The pretrain objective a variant starts from (None: it starts from scratch)."""
    spec = VARIANTS[variant]
    return spec.get("objective", "masked") if spec["init"] == "pretrain" else None


def variant_config(config: dict, variant: str, pretrain_epochs: int | None = None) -> dict:
    """The config of one start; ``pretrain_epochs`` replaces the pretrain stage's epochs."""
    config = copy.deepcopy(config)
    spec = VARIANTS[variant]
    config["train"]["init"] = spec["init"]
    if "freeze" in spec:
        config["train"]["freeze_encoder_epochs"] = spec["freeze"]
    if objective(variant) == "descriptors":
        config["pretrain"]["objective"] = "descriptors"
    if pretrain_epochs:
        config["pretrain"]["epochs"] = pretrain_epochs
    if spec.get("aux"):
        config["train"]["aux_targets"] = {"features": list(SEMANTIC_FEATURES), "weight": 0.1}
    return config


def prepare(folder: Path, n: int, config: dict, jitter_mm: float) -> None:
    """Ideal ROIs, folds and the radiomics table of one cohort (each only once)."""
    if not (folder / "clinical.tsv").is_file():
        start = time.perf_counter()
        write_cohort(folder, n, config, jitter_mm)
        print(f"{folder.name}: ROIs written in {time.perf_counter() - start:.0f} s", flush=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    io = ["--sample-sheet", str(folder / "clinical.tsv"), "--roi-dir", str(folder / "roi")]
    if not (folder / "folds.tsv").is_file():
        lungfusion(config_path, "splits", *io, "--out", str(folder / "folds.tsv"))
    features = folder / "radiomics" / "features.tsv"
    if not features.is_file():
        lungfusion(config_path, "radiomics", *io, "--out", str(features), "--threads", "2")


def pretrain(folder: Path, config: dict, variant: str, epochs: int | None = None) -> float:
    """Each modality's encoder on each fold, for ``variant``'s objective; returns the seconds."""
    config_path = folder / f"config_{variant}.yaml"
    config_path.write_text(yaml.safe_dump(variant_config(config, variant, epochs)))
    extra = ["--radiomics-features", str(folder / "radiomics" / "features.tsv")]
    start = time.perf_counter()
    for modality in ("ct", "pet"):
        for fold in range(int(config["splits"]["n_folds"])):
            out = folder / PRETRAIN_DIRS[objective(variant)] / modality / f"fold{fold}"
            if not (out / "summary.json").is_file():
                lungfusion(config_path, "pretrain", "--modality", modality, "--fold", str(fold),
                           "--folds", str(folder / "folds.tsv"), "--roi-dir", str(folder / "roi"),
                           "--out-dir", str(out), "--no-progress", *extra)  # fmt: skip
    return time.perf_counter() - start


def train(folder: Path, config: dict, variant: str, model: str) -> float:
    """One network under one start on every fold; returns the seconds spent."""
    config_path = folder / f"config_{variant}.yaml"
    config_path.write_text(yaml.safe_dump(variant_config(config, variant)))
    start = time.perf_counter()
    for fold in range(int(config["splits"]["n_folds"])):
        out = folder / "variants" / variant / "train" / model / f"fold{fold}"
        if (out / "predictions.tsv").is_file():
            continue
        extra = ["--radiomics-features", str(folder / "radiomics" / "features.tsv")]
        if variant in VARIANTS and objective(variant):
            extra += ["--pretrain-dir", str(folder / PRETRAIN_DIRS[objective(variant)])]
        lungfusion(config_path, "train", "--model", model, "--fold", str(fold), "--folds",
                   str(folder / "folds.tsv"), "--roi-dir", str(folder / "roi"), "--sample-sheet",
                   str(folder / "clinical.tsv"), "--out-dir", str(out), "--no-progress",
                   *extra)  # fmt: skip
    return time.perf_counter() - start


def run_seed(args, seed: int, seconds: dict) -> None:
    config = base_config(args, seed)
    folder = args.workdir / f"seed{seed}" / f"n{args.n}"
    prepare(folder, args.n, config, args.jitter_mm)
    if any(objective(v) == "masked" for v in args.variants):
        seconds[(seed, args.n, "pretrain stage")] = pretrain(folder, config, "pretrain")
    if any(objective(v) == "descriptors" for v in args.variants):
        seconds[(seed, args.n, "descriptors stage")] = pretrain(
            folder, config, "descriptors", args.descriptor_epochs
        )
    seconds[(seed, args.n, "semantic")] = train(folder, config, "scratch", "semantic")
    for model in args.models:
        for variant in args.variants:
            seconds[(seed, args.n, model, variant)] = train(folder, config, variant, model)


def run_curve(args, seconds: dict) -> None:
    seed = args.seeds[0]
    config = base_config(args, seed)
    for n in args.curve_sizes:
        folder = args.workdir / f"seed{seed}" / f"n{n}"
        prepare(folder, n, config, args.jitter_mm)
        seconds[(seed, n, "pretrain stage")] = pretrain(folder, config, "pretrain")
        for variant in ("scratch", "pretrain"):
            seconds[(seed, n, args.curve_model, variant)] = train(
                folder, config, variant, args.curve_model
            )


# --- the report ------------------------------------------------------------------------------


def result(folder: Path, variant: str, model: str, n_folds: int, positive: str) -> dict | None:
    return curve_row(
        folder / "variants" / variant, model, n_folds, positive, oracle_path=folder / "oracle.tsv"
    )


def row_text(label: str, row: dict | None, secs: float | None) -> str:
    if row is None:
        return f"| {label} | not trained | | | | |"
    low, high = row["auc_ci"]
    rlow, rhigh = row["ratio_ci"]
    return (
        f"| {label} | {row['n']} | {fmt(row['auc'])} ({fmt(low)}-{fmt(high)}) | "
        f"{fmt(row['oracle'])} | **{fmt(row['ratio'], 2)}** ({fmt(rlow, 2)}-{fmt(rhigh, 2)}) | "
        f"{f'{secs:.0f}' if secs else 'reused'} |"
    )


def pretrain_losses(folder: Path, objective_name: str) -> str:
    parts = []
    for path in sorted(folder.glob(f"{PRETRAIN_DIRS[objective_name]}/*/fold*/summary.json")):
        summary = json.loads(path.read_text())
        history = pd.read_csv(path.parent / "history.tsv", sep="\t")
        first, best = history.train_loss.iloc[0], summary.get("best_val_loss")
        if best is not None:
            parts.append(f"{path.parts[-3]} {path.parts[-2]}: {first:.4f} -> {best:.4f}")
    return "; ".join(parts)


def write_report(args, seconds: dict) -> str:
    config = base_config(args, args.seeds[0])
    train_cfg, n_folds = config["train"], int(config["splits"]["n_folds"])
    positive = config["cohort"]["classes"][-1]
    lines = [
        "# Pretrained starts for the CT+PET networks (issue 21), on ideal ROIs",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs (shared), no GPU; 1-minute load "
        f"average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Synthetic cohorts of preset {config['synthetic']['preset']} (prior "
        f"{config['synthetic']['class_prior']}) rendered on a {config['roi']['shape']} ROI grid "
        f"centred on the true tumour (jitter SD {args.jitter_mm:g} mm per axis), every patient "
        f"with a PET; {n_folds} folds; every network on the {args.encoder} trunk "
        f"(train.encoder), {train_cfg['epochs']} epochs at most, batch {train_cfg['batch_size']}, "
        f"optimizer {train_cfg.get('optimizer')} (weight decay {train_cfg.get('weight_decay')}), "
        f"weight average {train_cfg.get('ema_decay')}, selection on validation "
        f"{train_cfg.get('selection_metric')}; pretraining {args.pretrain_epochs} epochs of "
        "masked-volume restoration, or "
        f"{args.descriptor_epochs} epochs of descriptor regression (CT: "
        f"{', '.join(default_descriptors('ct'))}; PET: {', '.join(default_descriptors('pet'))}), "
        "per modality and fold (training and validation ROIs only); "
        f"auxiliary targets: {', '.join(SEMANTIC_FEATURES)} (weight 0.1); pretrained encoders "
        f"fine-tuned from the start at {train_cfg.get('encoder_lr_factor', 0.1)} x lr.",
        "",
    ]
    for seed in args.seeds:
        folder = args.workdir / f"seed{seed}" / f"n{args.n}"
        lines += [
            f"## Seed {seed}, {args.n} patients",
            "",
            "| model / start | patients scored | AUROC (95% CI) | image oracle | x oracle (95% CI) "
            "| training s |",
            "|---|---:|---|---:|---|---:|",
        ]
        semantic = result(folder, "scratch", "semantic", n_folds, positive)
        lines.append(row_text("semantic (7 descriptors, logistic)", semantic,
                              seconds.get((seed, args.n, "semantic"))))  # fmt: skip
        best = None
        for model in args.models:
            for variant in args.variants:
                row = result(folder, variant, model, n_folds, positive)
                secs = seconds.get((seed, args.n, model, variant))
                lines.append(row_text(f"{model} / {variant}", row, secs))
                if row is not None and (best is None or row["auc"] > best[1]["auc"]):
                    best = (f"{model} / {variant}", row)
        lines += [""]
        for variant, name in (("pretrain", "masked"), ("descriptors", "descriptors")):
            stage = seconds.get((seed, args.n, f"{variant} stage"))
            if stage and stage >= 1:  # under a second: every encoder was reused
                lines.append(f"Pretrain stage ({name}): {stage:.0f} s (2 modalities x "
                             f"{n_folds} folds).")  # fmt: skip
            losses = pretrain_losses(folder, name)
            if losses:
                lines.append(f"Pretraining loss, {name} (first epoch -> best validation): "
                             f"{losses}.")  # fmt: skip
        if best is not None:
            verdict = best[1]["ratio"] >= CRITERION
            above = semantic is not None and best[1]["auc"] >= semantic["auc"]
            lines.append(
                f"Best CT+PET network: {best[0]}, {fmt(best[1]['ratio'], 2)} x oracle "
                f"({'meets' if verdict else 'misses'} the {CRITERION:g} target), "
                f"{'not below' if above else 'below'} the semantic model."
            )
        lines.append("")
    if args.curve_sizes:
        seed = args.seeds[0]
        lines += [
            f"## Learning curve, {args.curve_model}, seed {seed}: scratch against pretrain",
            "",
            "| n / start | patients scored | AUROC (95% CI) | image oracle | x oracle (95% CI) "
            "| training s |",
            "|---|---:|---|---:|---|---:|",
        ]
        for n in args.curve_sizes:
            folder = args.workdir / f"seed{seed}" / f"n{n}"
            for variant in ("scratch", "pretrain"):
                row = result(folder, variant, args.curve_model, n_folds, positive)
                secs = seconds.get((seed, n, args.curve_model, variant))
                lines.append(row_text(f"{n} / {variant}", row, secs))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    seconds: dict = {}
    if not args.report_only:
        for seed in args.seeds:
            run_seed(args, seed, seconds)
        if args.curve_sizes:
            run_curve(args, seconds)
    report = write_report(args, seconds)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
