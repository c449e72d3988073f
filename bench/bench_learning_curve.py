"""How the networks' out-of-fold AUROC grows with the cohort, on ideal ROIs: issue 4's question
of whether the 0.9 x image-oracle target is a matter of patients or of learners.

For each cohort size n, the n-patient cohort `lungfusion synth` would write with the quality
run's seed and preset (labels, latents and anatomy exactly as it draws them) is rendered
straight onto a ROI grid centred on the true tumour, with the pipeline's placement error as
Gaussian jitter (``--jitter-mm``), the preset's CT blur and noise and its PET PSF and noise
(bench/ideal_rois.py).
There is no DICOM, registration or segmentation, so a cohort of thousands costs seconds and
only training costs time. Every patient gets a PET. Each model is then trained with
`lungfusion splits` and `lungfusion train`, exactly as the pipeline runs them, with the quality
run's settings (config.yaml + bench/quality_config.yaml + the command line), and its pooled
out-of-fold AUROC is set beside the image-only oracle AUROC on the same patients.

    python bench/bench_learning_curve.py [--sizes 300 1000 3000] [--models early] [--folds 3]
        [--epochs N] [--jitter-mm 1.5] [--workdir bench/_work/learning_curve] [--report-only]

Writes bench/results/learning_curve.md. A size whose folds all have predictions is not
retrained, so a second call with one more size trains only that one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from bench_quality import CONFIG, OVERLAY, fmt  # bench/ is the script's folder
from ideal_rois import merged_config, render_roi
from sklearn.metrics import roc_auc_score

from lungfusion.evaluation.bootstrap import bootstrap_ci
from lungfusion.imaging.roi import _scale as scale_to_window
from lungfusion.samplesheet import OUR_COLUMNS
from lungfusion.synth.cohort import cohort_labels, patient_latents_and_anatomy
from lungfusion.synth.ids import patient_ids
from lungfusion.synth.phenotype import IMAGE_LATENTS, oracle_probabilities
from lungfusion.synth.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "bench" / "results" / "learning_curve.md"
DEFAULT_WORKDIR = REPO / "bench" / "_work" / "learning_curve"
CRITERION = 0.9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--models", nargs="+", default=["early"])
    parser.add_argument("--folds", type=int, default=None, help="default: the overlay's (3)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the overlay's (30)")
    parser.add_argument(
        "--jitter-mm", type=float, default=1.5,
        help="SD per axis of the box centre around the true tumour centre (pipeline: ~1.7 mm median)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    return parser.parse_args()


def run_config(args: argparse.Namespace) -> dict:
    config = merged_config([CONFIG, OVERLAY])
    if args.folds is not None:
        config["splits"]["n_folds"] = args.folds
    if args.epochs is not None:
        config["train"]["epochs"] = args.epochs
    return config


# --- the cohorts ---------------------------------------------------------------------------------


def write_cohort(folder: Path, n: int, config: dict, jitter_mm: float) -> None:
    """ROIs, sample sheet and image-oracle probabilities of the n-patient synthetic cohort."""
    syn, roi = config["synthetic"], config["roi"]
    preset, seed = get_preset(syn["preset"]), int(syn["seed"])
    spacing = np.asarray(config["register"]["target_spacing_mm"], dtype=float)
    shape = np.asarray(roi["shape"])
    labels = cohort_labels(n, syn["class_prior"], seed)
    total = sum(syn["class_prior"].values())
    prior = {c: v / total for c, v in syn["class_prior"].items()}  # as the generator's oracle
    positive = config["cohort"]["classes"][-1]
    (folder / "roi").mkdir(parents=True, exist_ok=True)
    sheet, oracle = [], []
    for number, (pid, label) in enumerate(zip(patient_ids(n), labels, strict=True), start=1):
        latents, anatomy = patient_latents_and_anatomy(
            number=number, label=label, preset=preset, seed=seed
        )
        rng = np.random.default_rng([seed, number, 98])
        centre = anatomy.centre + anatomy.scale * anatomy.tumour.centre
        origin = centre + rng.normal(0.0, jitter_mm, 3) - (shape - 1) / 2 * spacing
        arrays = render_roi(
            anatomy, preset, origin=origin, spacing=spacing, shape=tuple(shape), has_pet=True,
            rng=rng,
        )  # fmt: skip
        np.savez(
            folder / "roi" / f"{pid}.npz",
            ct=scale_to_window(arrays["hu"], roi["ct_window"]),
            pet=scale_to_window(arrays["suv"], roi["suv_window"]),
            lungs=arrays["lungs"].astype(np.uint8),
            has_pet=np.bool_(True),
            spacing=spacing,
            origin=origin,
        )
        (folder / "roi" / f"{pid}.json").write_text(json.dumps({"status": "ok", "has_pet": True}))
        values = {**latents, "patient_id": pid, "label": label}
        sheet.append({c: values[c] for c in OUR_COLUMNS})
        p_image = oracle_probabilities(values, prior, IMAGE_LATENTS).get(positive, 0.0)
        oracle.append({"patient_id": pid, "label": label, "p_image": p_image})
    pd.DataFrame(oracle).to_csv(folder / "oracle.tsv", sep="\t", index=False)
    pd.DataFrame(sheet).to_csv(folder / "clinical.tsv", sep="\t", index=False)  # marks it done


def lungfusion(config_path: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "lungfusion", "--config", str(config_path), *args]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_size(folder: Path, config: dict, models: list[str]) -> dict[str, float]:
    """Splits, then every model on every fold; the training seconds per model."""
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sheet, rois, folds = folder / "clinical.tsv", folder / "roi", folder / "folds.tsv"
    if not folds.is_file():
        lungfusion(config_path, "splits", "--sample-sheet", str(sheet), "--roi-dir", str(rois),
                   "--out", str(folds))  # fmt: skip
    seconds, features = {}, folder / "radiomics" / "features.tsv"
    for model in models:
        start = time.perf_counter()
        extra = []
        # the lesion features first, as the pipeline's radiomics rule; the ideal ROIs have no
        # lung labels, so the location features are NaN (imputed and dropped)
        if model in ("radiomics", "semantic"):
            if not features.is_file():
                lungfusion(config_path, "radiomics", "--sample-sheet", str(sheet), "--roi-dir",
                           str(rois), "--out", str(features), "--threads", "2")  # fmt: skip
            extra = ["--radiomics-features", str(features)]
        for fold in range(int(config["splits"]["n_folds"])):
            out = folder / "train" / model / f"fold{fold}"
            if not (out / "predictions.tsv").is_file():
                lungfusion(config_path, "train", "--model", model, "--fold", str(fold),
                           "--folds", str(folds), "--roi-dir", str(rois), "--sample-sheet",
                           str(sheet), "--out-dir", str(out), "--no-progress", *extra)  # fmt: skip
        seconds[model] = time.perf_counter() - start
    return seconds


# --- the report ----------------------------------------------------------------------------------


def curve_row(
    folder: Path, model: str, n_folds: int, positive: str, *, oracle_path: Path | None = None
) -> dict | None:
    """Pooled out-of-fold AUROC of ``folder/train/model`` beside the image oracle (default:
    ``folder/oracle.tsv``), with bootstrap intervals."""
    paths = sorted((folder / "train" / model).glob("fold*/predictions.tsv"))
    if len(paths) < n_folds:
        return None
    table = pd.concat([pd.read_csv(p, sep="\t", dtype={"patient_id": str}) for p in paths])
    oracle = pd.read_csv(oracle_path or folder / "oracle.tsv", sep="\t", dtype={"patient_id": str})
    merged = table.merge(oracle[["patient_id", "p_image"]], on="patient_id")
    y = (merged.label == positive).to_numpy()
    score, best = merged[f"prob_{positive}"].to_numpy(), merged.p_image.to_numpy()

    def aucs(i: np.ndarray) -> dict[str, float]:
        model_auc, oracle_auc = roc_auc_score(y[i], score[i]), roc_auc_score(y[i], best[i])
        return {"auc": model_auc, "ratio": model_auc / oracle_auc}

    point = aucs(np.arange(len(y)))
    ci = bootstrap_ci(aucs, y, n_resamples=500, seed=0)
    return {
        "n": len(merged),
        "auc": point["auc"],
        "auc_ci": (ci["auc"]["ci_low"], ci["auc"]["ci_high"]),
        "oracle": roc_auc_score(y, best),
        "ratio": point["ratio"],
        "ratio_ci": (ci["ratio"]["ci_low"], ci["ratio"]["ci_high"]),
    }


def write_report(args: argparse.Namespace, config: dict, seconds: dict) -> str:
    train, syn = config["train"], config["synthetic"]
    n_folds, positive = int(config["splits"]["n_folds"]), config["cohort"]["classes"][-1]
    lines = [
        "# Learning curve on ideal ROIs: out-of-fold AUROC against the image-only oracle",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs (shared), no GPU; 1-minute load "
        f"average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"The n-patient synthetic cohort of the quality run's seed ({syn['seed']}, preset "
        f"{syn['preset']}, prior {syn['class_prior']}), every one with a PET, rendered on a "
        f"{config['roi']['shape']} ROI grid centred on the true tumour with a jitter of SD "
        f"{args.jitter_mm:g} mm per axis (no DICOM, registration or segmentation). "
        f"{n_folds} folds; {train['epochs']} epochs at most, batch {train['batch_size']}, "
        f"optimizer {train.get('optimizer')} (weight decay {train.get('weight_decay')}), "
        f"weight average {train.get('ema_decay')}, selection on validation "
        f"{train.get('selection_metric')}.",
        "",
        "| n | model | patients scored | AUROC (95% CI) | image oracle | x oracle (95% CI) "
        "| training s |",
        "|---:|---|---:|---|---:|---|---:|",
    ]
    for n in args.sizes:
        for model in args.models:
            row = curve_row(args.workdir / f"n{n}", model, n_folds, positive)
            if row is None:
                lines.append(f"| {n} | {model} | not trained | | | | |")
                continue
            low, high = row["auc_ci"]
            rlow, rhigh = row["ratio_ci"]
            secs = seconds.get((n, model))
            lines.append(
                f"| {n} | {model} | {row['n']} | {fmt(row['auc'])} ({fmt(low)}-{fmt(high)}) | "
                f"{fmt(row['oracle'])} | **{fmt(row['ratio'], 2)}** ({fmt(rlow, 2)}-"
                f"{fmt(rhigh, 2)}) | {f'{secs:.0f}' if secs else 'reused'} |"
            )
    lines += [
        "",
        f"Issue 4 asks the best CT+PET model for {CRITERION:g} x the image-only oracle on the "
        "pipeline's ROIs. These ROIs carry no imaging-stage losses, so the size at which a "
        "model crosses that line here is a lower bound on the cohort the pipeline would need.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    config = run_config(args)
    seconds = {}
    for n in args.sizes:
        folder = args.workdir / f"n{n}"
        if args.report_only:
            continue
        if not (folder / "clinical.tsv").is_file():
            start = time.perf_counter()
            write_cohort(folder, n, config, args.jitter_mm)
            print(f"n={n}: ROIs written in {time.perf_counter() - start:.0f} s", flush=True)
        for model, secs in train_size(folder, config, args.models).items():
            seconds[(n, model)] = secs
    report = write_report(args, config, seconds)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
