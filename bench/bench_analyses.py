"""The optional analyses at the main job's size: what each costs and what it found.

The repository's config.yaml (60 synthetic patients) with the robustness sweep, saliency, the
fusion-depth grid, SFSA's exhaustive search (``train.sfsa_exhaustive``) and external validation
(``evaluate.external``: a second synthetic cohort of another seed and preset, generated in the
workdir) turned on by an overlay, in one workdir (``--workdir``, kept, so a second call reuses
what the first trained). Each analysis's cost comes from its rules' ``benchmark:`` files (the
grid: its cells' training jobs; the exhaustive search: each sfsa job's time beyond the greedy
search's own, which its train summary records; external validation: every job under
``results/external/benchmarks``); its findings from its outputs: AUROC against each
perturbation level (the late-fusion integrator at the withheld-PET levels), the saliency
shares per network, the grid's AUROC, the greedy SFSA choice's rank and validation-loss gap
among every position subset, and each model's internal against external AUROC.

    python bench/bench_analyses.py [--workdir bench/_work/analyses] [--cores 2]
        [--stages 1 2 3] [--blocks 1 2] [--external-patients 20]
        [--external-preset realistic] [--saliency-mask-size 16] [--quick]

``--quick``: 16 patients, 2 folds, 1 epoch, an external cohort of 6 default-preset patients,
to check that it runs. Writes bench/results/analyses.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from bench_pipeline import CONFIG, machine_line, read_benchmarks, snakemake, write_yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "analyses.md"
QUICK = {
    "synthetic": {"n_patients": 16, "class_prior": {"ADC": 0.5, "SQC": 0.5}},
    "splits": {"n_folds": 2},
}
EXTERNAL_DIR = "external"  # in the workdir: the second cohort's DICOM and sheet


def external_cohort(workdir: Path, *, n_patients: int, preset: str) -> None:
    """The second synthetic collection (its own seed and preset, a different share without
    PET) under ``workdir/external``, written once: a later call reuses it."""
    if (workdir / EXTERNAL_DIR / "clinical.tsv").is_file():
        return
    params = {"synthetic": {"preset": preset, "n_patients": n_patients, "seed": 5,
                            "class_prior": {"ADC": 0.5, "SQC": 0.5},
                            "fraction_without_pet": 0.2}}  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "lungfusion", "--params", json.dumps(params), "synth",
         "--out-dir", EXTERNAL_DIR],
        cwd=workdir, check=True, capture_output=True, text=True,
    )  # fmt: skip


def overlay(stages: list[int], blocks: list[int], quick: bool, mask_size: int | None) -> dict:
    config = {
        "robustness": {
            "misalignment_mm": [0, 2, 5, 10],
            "rotation_deg": [0, 5, 10],
            "drop_pet_fraction": [0, 0.25, 0.5, 1.0],
        },
        "saliency": {"enabled": True} | ({"mask_size": mask_size} if mask_size else {}),
        "train": {
            "multistage": {"grid": {"stages": stages, "blocks": blocks}},
            "sfsa_exhaustive": True,
        },
        "evaluate": {
            "external": {
                "dicom_root": f"{EXTERNAL_DIR}/dicom",
                "sample_sheet": f"{EXTERNAL_DIR}/clinical.tsv",
            }
        },
    }
    if quick:
        config.update(QUICK)
        config["train"]["epochs"] = 1
    return config


def cost_table(benchmarks: dict) -> list[str]:
    rows = [
        "| analysis | jobs | seconds (sum of jobs) | peak memory (MB) |",
        "|---|---:|---:|---:|",
    ]
    grid = [row for rule, rs in benchmarks.items() if rule == "train" for row in rs]
    for name, jobs in (("robustness", benchmarks.get("robustness", [])),
                       ("saliency", benchmarks.get("saliency", []))):  # fmt: skip
        if jobs:
            rows.append(f"| {name} | {len(jobs)} | {sum(j['s'] for j in jobs):.0f} | "
                        f"{max(j['max_rss'] for j in jobs):.0f} |")  # fmt: skip
    rows.append(f"| every training job (the grid's cells among them) | {len(grid)} | "
                f"{sum(j['s'] for j in grid):.0f} | {max((j['max_rss'] for j in grid), default=0):.0f} |")  # fmt: skip
    return rows


def sfsa_cost(results: Path) -> list[str]:
    """Per fold: the sfsa job's seconds (its benchmark file), the greedy search's and the
    chosen network's scoring (its train summary's total, taken before the exhaustive search
    starts) and the rest, the exhaustive search's trainings from scratch."""
    rows = ["| fold | sfsa job s | greedy search + scoring s | exhaustive search s | "
            "greedy candidates | subsets ranked |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for path in sorted((results / "benchmarks" / "sfsa").glob("fold*.tsv")):
        job = float(pd.read_csv(path, sep="\t")["s"].sum())
        summary = json.loads((results / "train" / "sfsa" / path.stem / "summary.json").read_text())
        greedy = float(summary["timings_s"]["total"])
        record = summary["sfsa"]
        subsets = record.get("exhaustive", {}).get("n_subsets", 0)
        rows.append(f"| {path.stem} | {job:.0f} | {greedy:.0f} | {job - greedy:.0f} | "
                    f"{record['n_candidates']} | {subsets} |")  # fmt: skip
    return rows


def external_cost(results: Path) -> list[str]:
    """The external collection's jobs per rule (its imaging stages and the scoring)."""
    rows = ["| external rule | jobs | seconds (sum) | peak memory (MB) |", "|---|---:|---:|---:|"]
    for rule, jobs in read_benchmarks(results / "external").items():
        rows.append(f"| {rule} | {len(jobs)} | {sum(j['s'] for j in jobs):.0f} | "
                    f"{max(j['max_rss'] for j in jobs):.0f} |")  # fmt: skip
    return rows


def grid_cost(results: Path) -> list[str]:
    """Training seconds per grid cell, from its folds' benchmark files."""
    rows = ["| cell | folds | training seconds |", "|---|---:|---:|"]
    for folder in sorted((results / "benchmarks" / "train").glob("multistage_L*")):
        seconds = [pd.read_csv(p, sep="\t")["s"].sum() for p in folder.glob("*.tsv")]
        rows.append(f"| {folder.name} | {len(seconds)} | {sum(seconds):.0f} |")
    return rows


def markdown(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return ["(none)"]
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]  # fmt: skip
    return [header, rule, *body]


def findings(results: Path) -> list[str]:
    lines = ["## Robustness (pooled test AUROC)", ""]
    summary = pd.read_csv(results / "robustness" / "summary.tsv", sep="\t")
    summary["auroc"] = [f"{v:.3f} ({lo:.3f}-{hi:.3f})" for v, lo, hi in
                        zip(summary.auroc, summary.ci_low, summary.ci_high, strict=True)]  # fmt: skip
    wide = summary.pivot_table(index=["perturbation", "level"], columns="model", values="auroc",
                               aggfunc="first", sort=False).reset_index()  # fmt: skip
    lines += markdown(wide) + ["", "## Saliency (medians over the test patients)", ""]
    lines += markdown(pd.read_csv(results / "saliency" / "summary.tsv", sep="\t"))
    metrics = pd.read_csv(results / "metrics" / "all.tsv", sep="\t")
    auroc = metrics[(metrics.metric == "auroc") & metrics.model.str.startswith("multistage")]
    lines += ["", "## Fusion-depth grid (pooled test AUROC)", ""]
    lines += markdown(auroc[["model", "value", "ci_low", "ci_high"]].reset_index(drop=True))
    lines += ["", "## SFSA against exhaustive search (validation loss, per fold)", ""]
    lines += markdown(sfsa_ranks(results))
    lines += ["", "## External validation (AUROC: internal pooled test, external mean of folds)",
              ""]  # fmt: skip
    lines += markdown(internal_external(results))
    return lines


def sfsa_ranks(results: Path) -> pd.DataFrame:
    """The greedy choice's rank among every position subset and its validation-loss gap."""
    rows = []
    for path in sorted(results.glob("sfsa/fold*/best.json")):
        best = json.loads(path.read_text())
        if record := best.get("exhaustive"):
            rows.append({"fold": best["fold"], "greedy": record["greedy_label"],
                         "rank": f"{record['rank']} of {record['n_subsets']}",
                         "gap": record["val_loss_gap"], "best subset": record["best_label"],
                         "greedy loss": record["greedy_val_loss"],
                         "best loss": record["best_val_loss"]})  # fmt: skip
    return pd.DataFrame(rows)


def internal_external(results: Path) -> pd.DataFrame:
    """Each model's AUROC with its interval on the internal folds and on the external cohort."""

    def auroc(path: Path) -> pd.DataFrame:
        table = pd.read_csv(path, sep="\t")
        return table[table.metric == "auroc"].set_index("model")[["value", "ci_low", "ci_high"]]

    internal = auroc(results / "metrics" / "all.tsv").add_prefix("internal ")
    external = auroc(results / "external" / "metrics" / "all.tsv").add_prefix("external ")
    return internal.join(external, how="inner").reset_index()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "_work" / "analyses")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--external-patients", type=int, default=20)
    parser.add_argument("--external-preset", default="realistic")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--saliency-mask-size",
        type=int,
        default=None,
        help="occluded box side in voxels (default: the schema's)",
    )
    args = parser.parse_args()
    if args.quick:
        args.external_patients, args.external_preset = 6, "default"
    args.workdir.mkdir(parents=True, exist_ok=True)
    external_cohort(args.workdir, n_patients=args.external_patients, preset=args.external_preset)
    extra = write_yaml(
        args.workdir / "analyses_overlay.yaml",
        overlay(args.stages, args.blocks, args.quick, args.saliency_mask_size),
    )
    seconds, _ = snakemake(args.workdir, [CONFIG, extra], cores=args.cores)
    results = args.workdir / "results"
    benchmarks = read_benchmarks(results)
    lines = [
        "# Optional analyses at the main job's size" + (" (quick)" if args.quick else ""),
        "",
        machine_line(),
        "",
        f"config.yaml plus `{extra.name}` (robustness, saliency, grid {args.stages} x {args.blocks}, "
        f"exhaustive SFSA, "
        f"saliency boxes of {args.saliency_mask_size or 'the default'} voxels, external validation on {args.external_patients} "
        f"`{args.external_preset}`-preset patients of another seed); this call's wall time "
        f"{seconds:.0f} s on {args.cores} cores (a second call reuses what the first trained).",
        "",
        "## Cost",
        "",
        *cost_table(benchmarks),
        "",
        *grid_cost(results),
        "",
        *sfsa_cost(results),
        "",
        *external_cost(results),
        "",
        *findings(results),
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
