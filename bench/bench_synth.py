"""Time the synthetic cohort's generation per preset and measure its size on disk.

Writes bench/results/synth.md. The realistic preset is timed on a few patients and the per
patient figure is extrapolated to 60 (said so in the table).

    python bench/bench_synth.py [--realistic-patients 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from lungfusion.synth import generate_cohort

RESULTS = Path(__file__).resolve().parent / "results" / "synth.md"


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(preset: str, n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        summary = generate_cohort(
            Path(tmp) / preset, preset=preset, n_patients=n, seed=20261123, workers=workers
        )
        seconds = time.perf_counter() - start
        return {
            "preset": preset,
            "n": n,
            "workers": workers,
            "seconds": seconds,
            "cpu": _cpu_seconds() - cpu_start,
            "load": load,
            "dicom_mb": _size_mb(Path(tmp) / preset / "dicom"),
            "truth_mb": _size_mb(Path(tmp) / preset / "ground_truth"),
            "auc": summary["oracle_auc"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-patients", type=int, default=60)
    parser.add_argument("--realistic-patients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="default-preset runs (median)")
    args = parser.parse_args()
    runs = [_run("default", args.default_patients, args.workers) for _ in range(args.repeats)]
    runs.sort(key=lambda r: r["seconds"])
    rows = [runs[len(runs) // 2]]  # the median run
    if args.realistic_patients > 0:
        rows.append(_run("realistic", args.realistic_patients, 1))
    lines = [
        "# Synthetic cohort generation",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs (shared); seed 20261123.",
        "",
        "| preset | patients | workers | seconds | CPU seconds | load avg (1 min) at start "
        "| s/patient (x workers) | DICOM MB | ground truth MB "
        "| est. 60 patients (s, MB) | oracle AUC full / image / clinical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = r["seconds"] * r["workers"] / r["n"]
        est_s = r["seconds"] * 60 / r["n"]
        est_mb = (r["dicom_mb"] + r["truth_mb"]) * 60 / r["n"]
        auc = " / ".join("n/a" if v is None else f"{v:.3f}" for v in r["auc"].values())
        lines.append(
            f"| {r['preset']} | {r['n']} | {r['workers']} | {r['seconds']:.1f} | {r['cpu']:.1f} "
            f"| {r['load']:.1f} | {per:.2f} "
            f"| {r['dicom_mb']:.1f} | {r['truth_mb']:.1f} | {est_s:.0f}, {est_mb:.0f} | {auc} |"
        )
    all_seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    lines += [
        "",
        f"Default preset: the median of {len(runs)} runs, seconds {all_seconds}. CPU seconds "
        "include the "
        "worker processes; a CPU total well under workers x seconds means the machine was busy.",
        "The realistic row is measured on the patients listed and extrapolated linearly to 60 "
        "(same number of workers). Oracle AUCs of a few patients mean little.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
