"""Out-of-fold quality of every model on a synthetic cohort, beside the generator's oracle.

Generates (or reuses) a synthetic cohort, runs the real pipeline through Snakemake up to
``results/metrics/all.tsv`` (synth -> index -> ingest -> register -> segment -> roi -> splits ->
train -> integrate -> evaluate), then sets each model's pooled out-of-fold AUROC (95% bootstrap
CI, from the evaluate stage) beside the oracle AUCs of the ground truth
(``resources/synthetic/ground_truth/oracle.tsv``), computed on the same patients the model
scored: the image-only oracle for every model, and the full oracle too for models that read
the clinical table. Criterion (issue 4): with at least 300 patients the best CT+PET model
reaches 0.9 of the image-only oracle AUC.

    python bench/bench_quality.py [--n 300] [--preset tiny] [--seed S] [--folds 3] [--epochs 8]
        [--models ct pet early late multistage mmtm clinical] [--submodels ct pet clinical]
        [--roi-shape 32 32 16]
        [--widths 16 32 64] [--ideal-models early] [--cores 2] [--workdir bench/_work/quality]
        [--report-only]

After the pipeline, the ``--ideal-models`` are also trained on ideal ROIs (``ideal_rois.py``:
the generator's anatomy drawn straight onto each pipeline ROI's grid) with the same folds and
settings, and the ROI measurements are repeated on them, to tell what the imaging stages cost
from what the learners miss.

Settings come from config.yaml, then bench/quality_config.yaml, then the command line (written
to ``WORKDIR/bench_overlay.yaml``). Snakemake reruns only what the changed settings touch, so a
second run with more epochs reuses the cohort and the ROIs. Writes bench/results/quality.md.
"""

from __future__ import annotations

import argparse
import csv
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
from ideal_rois import merged_config, write_ideal_rois  # bench/ is the script's folder
from roi_measurements import information_ladder
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "config.yaml"
OVERLAY = REPO / "bench" / "quality_config.yaml"
OUTPUT = REPO / "bench" / "results" / "quality.md"
DEFAULT_WORKDIR = REPO / "bench" / "_work" / "quality"
FUSION_MODELS = ("early", "late", "single_stage", "multistage", "mmtm", "sfsa")
TABLE_MODELS = ("clinical", "clinical_net", "mmcaf", "clinical_logistic", "clinical_cox")
CRITERION = 0.9
PER_PATIENT_RULES = ("ingest", "register", "segment", "roi")
IDEAL_RESULTS = "ideal_results"  # the models trained on ideal ROIs, laid out as results/train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="patients (default: overlay, 300)")
    parser.add_argument("--preset", choices=["tiny", "default", "realistic"], default=None)
    parser.add_argument("--seed", type=int, default=None, help="cohort seed (default: overlay)")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument(
        "--submodels", nargs="+", default=None,
        help="the late-fusion integrator's submodels (default: overlay, ct pet clinical)",
    )  # fmt: skip
    parser.add_argument("--roi-shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"))
    parser.add_argument("--widths", type=int, nargs=3, default=None)
    parser.add_argument(
        "--ideal-models", nargs="*", default=["early"],
        help="models also trained on ideal ROIs (bench/ideal_rois.py); none: skip (default: early)",
    )  # fmt: skip
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--mtime-only", action="store_true",
        help="rerun a stage only for newer inputs, not for changed code or params: keeps a "
        "workdir's preprocessing across an upgrade that changes the per-patient stages' params",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--report-only", action="store_true", help="do not run Snakemake; report what is there"
    )
    return parser.parse_args()


# --- configuration ------------------------------------------------------------------------------


def command_line_overlay(args: argparse.Namespace) -> dict:
    """The settings given on the command line, as a config overlay."""
    overlay: dict = {}
    for section, key, value in (
        ("synthetic", "n_patients", args.n),
        ("synthetic", "preset", args.preset),
        ("synthetic", "seed", args.seed),
        ("splits", "n_folds", args.folds),
        ("train", "epochs", args.epochs),
        ("train", "models", args.models),
        ("roi", "shape", args.roi_shape),
        ("train", "widths", args.widths),
        ("integrate", "submodels", args.submodels),
    ):
        if value is not None:
            overlay.setdefault(section, {})[key] = value
    return overlay


# --- the run ------------------------------------------------------------------------------------


def run_pipeline(
    workdir: Path, configs: list[Path], config: dict, cores: int, *, mtime_only: bool = False
) -> float:
    """Run Snakemake up to the metrics table; wall seconds. Its output goes to a log file.

    The cohort comes first, in a Snakemake run of its own: the workflow reads the patient list
    from the sample sheet when it builds the job graph, so a sheet about to be regenerated (a
    new --n) would otherwise leave the graph with the old cohort's patients.
    """
    start = time.perf_counter()
    if config["cohort"]["source"] == "synthetic":
        sheet = Path(config["synthetic"]["out_dir"]) / "clinical.tsv"
        snakemake(workdir, configs, str(sheet), cores=cores, log_name="snakemake_synth.log",
                  mtime_only=mtime_only)  # fmt: skip
    target = f"{config['results']}/metrics/all.tsv"
    snakemake(workdir, configs, target, cores=cores, mtime_only=mtime_only)
    return time.perf_counter() - start


def snakemake(
    workdir: Path, configs: list[Path], target: str, *, cores: int, log_name: str = "snakemake.log",
    mtime_only: bool = False,
) -> None:  # fmt: skip
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", *map(str, configs),
        "--cores", str(cores),
        "--rerun-incomplete",
        target,
        *(["--rerun-triggers", "mtime"] if mtime_only else []),  # after the target: nargs +
    ]  # fmt: skip
    log_path = workdir / log_name
    print("running:", " ".join(cmd), f"> {log_path}", flush=True)
    with log_path.open("w") as log:
        status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if status.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"snakemake failed (exit {status.returncode}); end of {log_path}:\n{tail}")


def train_on_ideal_rois(workdir: Path, config_path: Path, config: dict, models: list[str]) -> None:
    """Write the ideal ROIs, then train ``models`` on them with the pipeline's folds and
    settings through `lungfusion train`; a fold with predictions already there is skipped."""
    ideal = workdir / "ideal_roi"
    print(f"ideal ROIs: {write_ideal_rois(workdir, config, ideal)} written to {ideal}", flush=True)
    results = workdir / config["results"]
    sheet = workdir / config["synthetic"]["out_dir"] / "clinical.tsv"
    for model in models:
        for fold in range(int(config["splits"]["n_folds"])):
            out = workdir / IDEAL_RESULTS / "train" / model / f"fold{fold}"
            if (out / "predictions.tsv").is_file():
                continue
            cmd = [
                sys.executable, "-m", "lungfusion", "--config", str(config_path), "train",
                "--model", model, "--fold", str(fold), "--folds", str(results / "splits" / "folds.tsv"),
                "--roi-dir", str(ideal), "--sample-sheet", str(sheet), "--out-dir", str(out),
                "--no-progress",
            ]  # fmt: skip
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=workdir)


def ideal_rows(workdir: Path, synthetic_dir: Path, config: dict, rows: list[dict]) -> list[dict]:
    """Each model trained on ideal ROIs: pooled out-of-fold AUROC beside the pipeline's."""
    oracle = read_oracle(synthetic_dir)
    positive = config["cohort"]["classes"][-1]
    pipeline = {r["model"]: r for r in rows}
    found = []
    for folder in sorted((workdir / IDEAL_RESULTS / "train").glob("*")):
        table = pooled_predictions(workdir / IDEAL_RESULTS, folder.name)
        if table is None or table.fold.nunique() < int(config["splits"]["n_folds"]):
            continue
        auc = roc_auc_score(table.label == positive, table[f"prob_{positive}"])
        image_oracle = oracle_auc(
            oracle, sorted(set(table.patient_id)), f"p_image_{positive}", positive
        )
        found.append(
            {
                "model": folder.name,
                "n": len(table),
                "auc": float(auc),
                "pipeline_auc": pipeline.get(folder.name, {}).get("auc"),
                "image_oracle": image_oracle,
                "ratio_image": auc / image_oracle,
            }
        )
    return found


# --- reading the results ------------------------------------------------------------------------


def benchmark_seconds(results: Path, patients: set[str]) -> dict[str, float]:
    """Summed job seconds per rule, and per model for the training rules ('train/<model>').

    Per-patient files of patients outside the cohort (left by an earlier, larger run in the
    same workdir) are not counted.
    """
    totals: dict[str, float] = {}
    root = results / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        parts = path.relative_to(root).parts
        key = parts[0].removesuffix(".tsv")
        if key in PER_PATIENT_RULES and path.stem not in patients:
            continue
        if key in ("train", "sfsa"):
            key = f"train/{parts[1]}" if key == "train" else "train/sfsa"
        with path.open() as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                totals[key] = totals.get(key, 0.0) + float(row["s"])
    return totals


def training_summaries(results: Path, model: str) -> list[dict]:
    paths = sorted((results / "train" / model).glob("fold*/summary.json"))
    return [json.loads(p.read_text()) for p in paths]


def pooled_predictions(results: Path, model: str) -> pd.DataFrame | None:
    """The held-out predictions of every fold of a model (or the integrator's table)."""
    direct = results / "integrate" / model / "predictions.tsv"
    paths = (
        [direct]
        if direct.is_file()
        else sorted((results / "train" / model).glob("fold*/predictions.tsv"))
    )
    if not paths:
        paths = sorted((results / "integrate").glob(f"*/submodels/{model}/fold*/predictions.tsv"))
    if not paths:
        return None
    tables = [pd.read_csv(p, sep="\t", dtype={"patient_id": str}) for p in paths]
    return pd.concat(tables, ignore_index=True)


def read_oracle(synthetic_dir: Path) -> pd.DataFrame:
    """oracle.tsv: patient, label, then the oracle probabilities as floats."""
    oracle = pd.read_csv(synthetic_dir / "ground_truth" / "oracle.tsv", sep="\t", dtype=str)
    for column in oracle.columns[2:]:
        oracle[column] = oracle[column].astype(float)
    return oracle


def oracle_auc(oracle: pd.DataFrame, patients: list[str], column: str, positive: str) -> float:
    rows = oracle[oracle.patient_id.isin(patients)]
    y = (rows.label == positive).astype(int)
    if y.nunique() < 2:
        return float("nan")
    return float(roc_auc_score(y, rows[column]))


def model_reads(model: str, submodels: list[str]) -> set[str]:
    """The modalities a model reads: the registry's for networks, by name for the rest."""
    if model in ("clinical", "clinical_logistic", "clinical_cox"):
        return {"tab"}
    if model in ("radiomics", "semantic"):  # the classical baselines on the lesion's features
        return {"ct", "pet"}
    if model.startswith("late_"):  # the late-fusion integrator of the submodels
        reads: set[str] = set()
        for sub in submodels:
            reads |= model_reads(sub, [])
        return reads
    from lungfusion.models import required_modalities

    return set(required_modalities(model))


def roi_coverage(results: Path, synthetic_dir: Path, patients: set[str]) -> dict:
    """How often the ROI box holds the true tumour (ground-truth latents vs the roi sidecars).

    Points checked per patient: the tumour centre, the centres of the dense CT component and of
    the PET hot spot (0.45 R from the centre, see docs/synthetic_cohort.md), and the whole
    tumour (its bounding sphere). Split by class and by whether the patient has a PET (no PET:
    the box is centred on the region's bounding box).
    """
    counts: dict = {}
    for sidecar in sorted((results / "roi").glob("*.json")):
        roi = json.loads(sidecar.read_text())
        truth_path = synthetic_dir / "ground_truth" / roi.get("patient", "") / "latents.json"
        if roi.get("patient") not in patients or roi.get("status", "ok") != "ok":
            continue
        if not truth_path.is_file():
            continue
        truth = json.loads(truth_path.read_text())
        tumour, label = truth["tumour"], truth["latents"]["label"]
        low = np.array(roi["box"]["physical_first_mm"])
        high = np.array(roi["box"]["physical_last_mm"])
        low, high = np.minimum(low, high), np.maximum(low, high)
        centre, radius = np.array(tumour["centre_mm"]), float(tumour["radius_mm"])

        pet = "with PET" if roi.get("has_pet") else "without PET"
        group = counts.setdefault(f"{label}, {pet}", {})
        checks = {
            "centre": _inside(centre, low, high),
            "dense": _inside(
                centre + 0.45 * radius * np.array(tumour["dense_direction"]), low, high
            ),
            "hot": _inside(centre + 0.45 * radius * np.array(tumour["hot_direction"]), low, high),
            "whole": _inside(centre, low, high, margin=radius),
        }
        group["n"] = group.get("n", 0) + 1
        for name, ok in checks.items():
            group[name] = group.get(name, 0) + int(ok)
        group.setdefault("radius", []).append(radius)
    return counts


def _inside(point: np.ndarray, low: np.ndarray, high: np.ndarray, margin: float = 0.0) -> bool:
    return bool(np.all(point - margin >= low) and np.all(point + margin <= high))


def quality_rows(results: Path, synthetic_dir: Path, config: dict) -> tuple[list[dict], dict]:
    metrics = pd.read_csv(results / "metrics" / "all.tsv", sep="\t")
    oracle = read_oracle(synthetic_dir)
    oracle_json = json.loads((synthetic_dir / "ground_truth" / "oracle.json").read_text())
    positive = config["cohort"]["classes"][-1]
    seconds = benchmark_seconds(results, set(oracle.patient_id))
    submodels = list(config.get("integrate", {}).get("submodels", ["ct", "pet", "clinical"]))
    rows = []
    for model in dict.fromkeys(metrics.model):
        table = metrics[metrics.model == model].set_index("metric")
        if "auroc" not in table.index:
            continue
        predictions = pooled_predictions(results, model)
        patients = [] if predictions is None else sorted(set(predictions.patient_id))
        reads = model_reads(model, submodels)
        image_oracle = oracle_auc(oracle, patients, f"p_image_{positive}", positive)
        full_oracle = oracle_auc(oracle, patients, f"p_{positive}", positive)
        auc = float(table.loc["auroc", "value"])
        summaries = training_summaries(results, model)
        rows.append(
            {
                "model": model,
                "reads": "+".join(m for m in ("ct", "pet", "tab") if m in reads),
                "n": int(table.loc["n", "value"]) if "n" in table.index else len(patients),
                "auc": auc,
                "ci": (float(table.loc["auroc", "ci_low"]), float(table.loc["auroc", "ci_high"])),
                "image_oracle": image_oracle,
                "full_oracle": full_oracle,
                "ratio_image": auc / image_oracle,
                "ratio_full": auc / full_oracle if "tab" in reads else None,
                "fusion": {"ct", "pet"} <= reads,
                "seconds": seconds.get(f"train/{model}"),
                "best_epochs": [s.get("best_epoch") for s in summaries],
                "epochs_run": [s.get("epochs_run") for s in summaries],
            }
        )
    extra = {"oracle_json": oracle_json, "seconds": seconds}
    extra["ladder"] = information_ladder(results, synthetic_dir, config)
    extra["coverage"] = roi_coverage(results, synthetic_dir, set(oracle.patient_id))
    return rows, extra


def as_run_settings(results: Path, config: dict) -> dict:
    """The ROI and training settings recorded by the run itself, over the config's.

    With --report-only the config may have changed since the run; the sidecars say what ran.
    """
    config = {**config, "roi": dict(config["roi"]), "train": dict(config["train"])}
    for sidecar in sorted((results / "roi").glob("*.json"))[:1]:
        config["roi"].update(json.loads(sidecar.read_text()).get("parameters") or {})
    for summary in sorted((results / "train").glob("*/fold*/summary.json")):
        settings = json.loads(summary.read_text()).get("settings")
        if settings:
            config["train"].update({k: v for k, v in settings.items() if k in config["train"]})
            break
    return config


# --- the report ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def verdict(rows: list[dict], n_cohort: int) -> str:
    fusion = [r for r in rows if r["fusion"] and "tab" not in r["reads"]]
    if not fusion:
        return "No CT+PET model was evaluated: the criterion cannot be checked."
    best = max(fusion, key=lambda r: r["auc"])
    reached = best["ratio_image"] >= CRITERION
    size = (
        ""
        if n_cohort >= 300
        else f" (the cohort has {n_cohort} patients, fewer than the 300 the criterion asks for)"
    )
    return (
        f"**Best CT+PET model: `{best['model']}`, AUROC {fmt(best['auc'])} = "
        f"{fmt(best['ratio_image'], 2)} x the image-only oracle ({fmt(best['image_oracle'])} on "
        f"the same {best['n']} patients): the {CRITERION:g} criterion is "
        f"{'REACHED' if reached else 'NOT reached'}{size}.**"
    )


def ladder_lines(ladder: dict | None) -> list[str]:
    """What the ROI shows of the latents (roi_measurements.py): a diagnostic, not a model."""
    if not ladder:
        return []
    lines = [
        f"Diagnostic, not a model of the pipeline, on the {ladder['n']} patients with PET and "
        "the same folds: logistic regressions fit on each fold's training and validation "
        "patients, pooled out-of-fold AUROC.",
        "",
        f"- on the **true image latents** a tumour-centred ROI can show (ground-glass fraction, "
        f"concordance, SUVmax, diameter, cavitation, necrosis): **{fmt(ladder['auc_true_latents'])}**"
        " (the finite-sample ceiling of a simple model on perfect features);",
        f"- on **hand measurements of those latents from the ROI tensors**: "
        f"**{fmt(ladder['auc_measured'])}**.",
        "",
        "How well each latent is measured (Spearman rank correlation with the latent, or AUROC "
        "for a yes/no latent):",
        "",
        "| measurement | latent | agreement |",
        "|---|---|---:|",
    ]
    for name, a in ladder["agreement"].items():
        lines.append(f"| {name} | {a['latent']} | {a['kind']} {fmt(a['value'])} |")
    return [*lines, ""]


def ideal_lines(ideal: list[dict], ladder: dict | None) -> list[str]:
    """The same patients, folds and settings on ROIs drawn straight from the generator."""
    if not ideal and not ladder:
        return []
    lines = [
        "**Ideal ROIs** (`bench/ideal_rois.py`): each patient's anatomy rendered by the generator "
        "straight onto its pipeline ROI's grid, with the scanner blur, PSF and noise of the "
        "preset but no DICOM, registration, resampling or segmentation. Same folds and training "
        "settings.",
        "",
    ]
    if ladder:
        lines += [
            f"- hand measurements from the ideal ROIs: **{fmt(ladder['auc_measured'])}** "
            f"(true latents {fmt(ladder['auc_true_latents'])}, {ladder['n']} patients); "
            "agreement: "
            + ", ".join(
                f"{name} {a['kind']} {fmt(a['value'])}" for name, a in ladder["agreement"].items()
            )
            + ".",
            "",
        ]
    if ideal:
        lines += [
            "| model | patients | AUROC on pipeline ROIs | AUROC on ideal ROIs | image oracle "
            "| ratio (ideal) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in ideal:
            lines.append(
                f"| {r['model']} | {r['n']} | {fmt(r['pipeline_auc'])} | {fmt(r['auc'])} | "
                f"{fmt(r['image_oracle'])} | {fmt(r['ratio_image'], 2)} |"
            )
        lines.append("")
    return lines


def coverage_lines(coverage: dict, roi: dict) -> list[str]:
    if not coverage:
        return []
    lines = [
        f"ROI placement against the ground truth (box {roi['shape']} voxels): patients whose box "
        "holds the tumour centre, the dense CT component's centre, the PET hot spot's centre, "
        "and the whole tumour (its bounding sphere); tumour radius median (max).",
        "",
        "| patients | n | centre | dense component | hot spot | whole tumour | radius mm |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for group, c in sorted(coverage.items()):
        n = c["n"]
        share = {k: f"{c[k]} ({c[k] / n:.0%})" for k in ("centre", "dense", "hot", "whole")}
        lines.append(
            f"| {group} | {n} | {share['centre']} | {share['dense']} | {share['hot']} | "
            f"{share['whole']} | {np.median(c['radius']):.1f} ({max(c['radius']):.1f}) |"
        )
    return [*lines, ""]


def write_report(
    rows: list[dict], extra: dict, config: dict, wall: float | None, workdir: Path, command: str
) -> str:
    config = as_run_settings(Path(workdir) / config["results"], config)
    syn, train, roi = config["synthetic"], config["train"], config["roi"]
    oracle = extra["oracle_json"]
    n_cohort = int(oracle["n_patients"])
    seconds = extra["seconds"]
    preprocess = sum(seconds.get(k, 0.0) for k in ("synth", "index", "ingest", "register",
                                                     "segment", "roi"))  # fmt: skip
    training = sum(v for k, v in seconds.items() if k.startswith("train/"))
    lines = [
        "# Quality on the synthetic cohort: out-of-fold AUROC against the oracle",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs (shared with other work), no GPU; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end. "
        "Pipeline wall time of this invocation: "
        + (f"{wall:.0f} s." if wall else "none (--report-only: the results were reused)."),
        "",
        "Settings (config.yaml + bench/quality_config.yaml + the command line): "
        f"synthetic preset **{syn['preset']}**, **{n_cohort} patients** (seed {syn['seed']}, "
        f"prior {syn['class_prior']}, {syn.get('fraction_without_pet', 0.1):g} without PET); "
        f"ROI **{roi['shape']}** voxels ({roi['crop']}) on the "
        f"{config['register']['target_spacing_mm']} mm grid; "
        f"**{config['splits']['n_folds']} folds** (validation fraction "
        f"{config['splits']['validation_fraction']}); **{train['epochs']} epochs** at most, "
        f"batch {train['batch_size']}, lr {train.get('lr', 0.001)}, widths {train['widths']}, "
        f"optimizer {train.get('optimizer', 'adam')} (weight decay "
        f"{train.get('weight_decay', 0)}), weight average {train.get('ema_decay')}, "
        f"rotate90 {train.get('augment', {}).get('rotate90', False)}, tta "
        f"{train.get('tta', False)}, "
        f"imbalance {train.get('imbalance', 'class_weight')}, selection on validation "
        f"{train.get('selection_metric', 'gmean')}, early-stopping patience "
        f"{train.get('early_stopping_patience', 10)}; "
        f"integrator submodels {config.get('integrate', {}).get('submodels')}.",
        "",
        f"Oracle AUCs of the whole cohort (oracle.json, positive class "
        f"{oracle.get('positive_class')}): full {fmt(oracle['auc']['full'])}, image "
        f"{fmt(oracle['auc']['image'])}, clinical {fmt(oracle['auc']['clinical'])}. Each row "
        "below recomputes them on the patients that model scored (a model that needs PET does "
        "not score the patients without it).",
        "",
        "AUROC: the evaluate stage's pooled out-of-fold AUROC (every patient tested once) with "
        "its 95% stratified bootstrap interval. Ratio / image oracle: AUROC over the image-only "
        "oracle AUC on the same patients; ratio / full oracle only for models that read the "
        "clinical table. Train s: the summed job time of the model's folds (benchmark files); "
        "best epoch: per fold.",
        "",
        "| model | reads | patients | AUROC | 95% CI | image oracle | ratio / image oracle "
        "| full oracle | ratio / full oracle | train s | best epoch (of run) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        epochs = ", ".join(
            f"{b}/{e}"
            for b, e in zip(r["best_epochs"], r["epochs_run"], strict=True)
            if b is not None
        )
        lines.append(
            f"| {r['model']} | {r['reads']} | {r['n']} | {fmt(r['auc'])} | "
            f"{fmt(r['ci'][0])}-{fmt(r['ci'][1])} | {fmt(r['image_oracle'])} | "
            f"{fmt(r['ratio_image'], 2)} | {fmt(r['full_oracle'])} | "
            f"{fmt(r['ratio_full'], 2)} | {fmt(r['seconds'], 0)} | {epochs or 'n/a'} |"
        )
    lines += ["", verdict(rows, n_cohort), "", *ladder_lines(extra["ladder"])]
    lines += ideal_lines(extra.get("ideal", []), extra.get("ladder_ideal"))
    lines += [
        f"Job seconds summed over the rules' benchmark files: preprocessing (synth to roi) "
        f"{preprocess:.0f} s, training {training:.0f} s. Workdir: `{workdir}`.",
        "",
        *coverage_lines(extra["coverage"], roi),
        "Reproduce:",
        "",
        f"    {command}",
        "",
    ]
    text = "\n".join(lines)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return text


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    overlay_path = workdir / "bench_overlay.yaml"
    if not args.report_only or not overlay_path.exists():
        overlay_path.write_text(yaml.safe_dump(command_line_overlay(args)))
    configs = [CONFIG, OVERLAY, overlay_path]
    config = merged_config(configs)
    from lungfusion.config import load_config  # fills every default the schema knows

    merged_path = workdir / "bench_merged_config.yaml"
    merged_path.write_text(yaml.safe_dump(config))
    config = load_config(str(merged_path))
    wall = None
    if not args.report_only:
        wall = run_pipeline(workdir, configs, config, args.cores, mtime_only=args.mtime_only)
        if args.ideal_models:
            train_on_ideal_rois(workdir, merged_path, config, args.ideal_models)
    results = workdir / config["results"]
    synthetic_dir = workdir / config["synthetic"]["out_dir"]
    rows, extra = quality_rows(results, synthetic_dir, config)
    extra["ideal"] = ideal_rows(workdir, synthetic_dir, config, rows)
    if (workdir / "ideal_roi").is_dir():
        extra["ladder_ideal"] = information_ladder(
            results, synthetic_dir, config, workdir / "ideal_roi"
        )
    command = "python bench/bench_quality.py " + " ".join(sys.argv[1:])
    print(write_report(rows, extra, config, wall, workdir, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
