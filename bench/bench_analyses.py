"""The optional analyses at the main job's size: what each costs and what it found.

The repository's config.yaml (60 synthetic patients, 5 folds) with the robustness sweep, saliency
and the fusion-depth grid turned on by an overlay, in one workdir (``--workdir``, kept, so a
second call reuses what the first trained). Each analysis's cost comes from its rules'
``benchmark:`` files (the grid: its cells' training jobs); its findings from its outputs:
AUROC against each perturbation level, the saliency shares per network, the grid's AUROC and
the cell chosen on validation.

    python bench/bench_analyses.py [--workdir bench/_work/analyses] [--cores 2]
        [--stages 1 2 3] [--blocks 1 2] [--quick]

``--quick``: 16 patients, 2 folds, 1 epoch, to check that it runs. Writes
bench/results/analyses.md.
"""

from __future__ import annotations

import argparse
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


def overlay(stages: list[int], blocks: list[int], quick: bool) -> dict:
    config = {
        "robustness": {
            "misalignment_mm": [0, 2, 5, 10],
            "rotation_deg": [0, 5, 10],
            "drop_pet_fraction": [0, 0.25, 0.5, 1.0],
        },
        "saliency": {"enabled": True},
        "train": {"multistage": {"grid": {"stages": stages, "blocks": blocks}}},
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
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "_work" / "analyses")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    extra = write_yaml(
        args.workdir / "analyses_overlay.yaml", overlay(args.stages, args.blocks, args.quick)
    )
    seconds, _ = snakemake(args.workdir, [CONFIG, extra], cores=args.cores)
    results = args.workdir / "results"
    benchmarks = read_benchmarks(results)
    lines = [
        "# Optional analyses at the main job's size" + (" (quick)" if args.quick else ""),
        "",
        machine_line(),
        "",
        f"config.yaml plus `{extra.name}` (robustness, saliency, grid {args.stages} x {args.blocks}); "
        f"this call's wall time {seconds:.0f} s on {args.cores} cores (a second call reuses "
        "what the first trained).",
        "",
        "## Cost",
        "",
        *cost_table(benchmarks),
        "",
        *grid_cost(results),
        "",
        *findings(results),
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
