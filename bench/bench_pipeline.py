"""The Snakemake pipeline as a whole: end to end, a no-op rerun, scaling, cores, peak memory.

1. End to end: the repository's config.yaml as is (synthetic default preset, 60 patients, every
   model, 5 folds), or with --quick a trimmed copy (default preset, 10 patients with balanced
   classes, CT and PET models, 2 folds, 1 epoch). Wall time, then each stage's job count and
   time from the rules' `benchmark:` files.
2. A no-op rerun of the same run (median of 3; target under 5 s).
3. Preprocessing (index + ingest -> roi; synth excluded: each cohort is generated beforehand
   and read as `cohort.source: dicom`) on the tiny preset as the cohort grows (10, 20, 40, 80
   patients), with a least-squares line (seconds = intercept + slope x patients), and 1 versus
   2 cores on one size.
4. Peak memory per rule (the largest `max_rss` in its benchmark files, end-to-end run) against
   the `mem_mb` it declares (read from a forced dry run's job listing); imaging rules above
   their declaration are flagged.

    python bench/bench_pipeline.py [--quick] [--sizes 10 20 40 80] [--keep DIR]

Writes bench/results/pipeline.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from lungfusion.synth import generate_cohort

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "config.yaml"
RESULTS = REPO / "bench" / "results" / "pipeline.md"
IMAGING_RULES = ("ingest", "register", "segment", "roi")

QUICK_END_TO_END = {
    # Balanced classes: with few patients every training fold must hold both.
    "synthetic": {"n_patients": 10, "class_prior": {"ADC": 0.5, "SQC": 0.5}},
    "splits": {"n_folds": 2},
    "train": {"models": ["ct", "pet"], "epochs": 1},
}
# The scaling runs: the tiny preset, a smaller ROI; everything after roi is not run.
SCALING = {
    "results": "results",
    "cohort": {
        "source": "dicom",
        "dicom_root": "cohort/dicom",
        "sample_sheet": "cohort/clinical.tsv",
    },
    "roi": {"shape": [32, 32, 16]},
}


def snakemake(workdir: Path, configs: list[Path], *args: str, cores: int = 2) -> tuple[float, str]:
    """Run Snakemake in `workdir`; (wall seconds, output). Raises if it fails."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", *map(str, configs),
        "--cores", str(cores),
        "--rerun-incomplete",
        *args,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{output[-3000:]}")
    return seconds, output


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- benchmark files and declared resources ---------------------------------------------------


def read_benchmarks(results: Path) -> dict[str, list[dict[str, float]]]:
    """rule -> one row per job (s, max_rss in MB, ...) from results/benchmarks."""
    rows = defaultdict(list)
    root = results / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rule = path.relative_to(root).parts[0].removesuffix(".tsv")
        with path.open() as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows[rule].append({k: _number(v) for k, v in row.items() if k != "h:m:s"})
    return dict(rows)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def declared_resources(workdir: Path, configs: list[Path]) -> dict[str, dict[str, str]]:
    """rule -> the resources Snakemake gives its jobs, from a forced dry run's job listing."""
    _, output = snakemake(workdir, configs, "--dry-run", "--forceall")
    declared, rule = {}, None
    for line in output.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line.strip()):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            fields = dict(re.findall(r"(\w+)=([^,]+)", line.split(":", 1)[1]))
            declared.setdefault(rule, fields)
    return declared


def stage_table(benchmarks: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| rule | jobs | total s | median s per job | max s |",
        "|---|---|---|---|---|",
    ]
    for rule, rows in benchmarks.items():
        seconds = [row["s"] for row in rows]
        lines.append(
            f"| {rule} | {len(rows)} | {sum(seconds):.1f} | {statistics.median(seconds):.2f} "
            f"| {max(seconds):.2f} |"
        )
    return lines


def memory_table(benchmarks: dict, declared: dict) -> tuple[list[str], list[str]]:
    """The table, and the imaging rules whose peak exceeded their declared mem_mb."""
    lines = [
        "| rule | jobs | peak max_rss MB (max) | median MB | declared mem_mb | peak / declared | |",
        "|---|---|---|---|---|---|---|",
    ]
    over = []
    for rule in sorted(set(benchmarks) | set(declared) - {"all"}):
        mem_mb = _number(declared.get(rule, {}).get("mem_mb", "nan"))
        rss = [
            row["max_rss"] for row in benchmarks.get(rule, []) if row["max_rss"] == row["max_rss"]
        ]
        if not rss:
            lines.append(f"| {rule} | 0 | no benchmark file | | {mem_mb:.0f} | | |")
            continue
        ratio = max(rss) / mem_mb if mem_mb == mem_mb else float("nan")
        flag = ""
        if ratio > 1:
            flag = "**OVER**"
            if rule in IMAGING_RULES:
                over.append(rule)
        lines.append(
            f"| {rule} | {len(rss)} | {max(rss):.0f} | {statistics.median(rss):.0f} "
            f"| {mem_mb:.0f} | {ratio:.2f} | {flag} |"
        )
    return lines, over


# --- the measurements ---------------------------------------------------------------------------


def end_to_end(workdir: Path, quick: bool) -> dict:
    configs = [CONFIG]
    if quick:
        configs.append(write_yaml(workdir / "quick.yaml", QUICK_END_TO_END))
    seconds, output = snakemake(workdir, configs)
    noop = []
    for _ in range(3):
        noop_s, noop_out = snakemake(workdir, configs)
        assert "Nothing to be done" in noop_out, noop_out[-2000:]
        noop.append(noop_s)
    config = yaml.safe_load(CONFIG.read_text())
    for extra in configs[1:]:
        for key, value in yaml.safe_load(extra.read_text()).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "seconds": seconds,
        "jobs": _total_jobs(output),
        "noop": noop,
        "plugin_import": plugin_import_seconds(),
        "benchmarks": read_benchmarks(workdir / "results"),
        "declared": declared_resources(workdir, configs),
        "config": config,
    }


def plugin_import_seconds() -> float:
    """Seconds to import the SLURM executor plugin, which Snakemake imports at every start.

    At import it runs `scontrol show config` (10 s timeout): fast without SLURM or on a working
    cluster, up to 10 s where scontrol is installed but no controller answers.
    """
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import snakemake_executor_plugin_slurm"],
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - start


def _total_jobs(output: str) -> int:
    match = re.search(r"^total\s+(\d+)", output, flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def preprocessing(root: Path, n_patients: int, cores: int, cohort: Path) -> dict:
    """Time index + ingest -> roi on a generated cohort (generation not timed)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pre_{n_patients}_{cores}_", dir=root))
    (workdir / "cohort").symlink_to(cohort)
    configs = [CONFIG, write_yaml(workdir / "scaling.yaml", SCALING)]
    seconds, _ = snakemake(workdir, configs, "--until", "roi", cores=cores)
    benchmarks = read_benchmarks(workdir / "results")
    job_seconds = sum(row["s"] for rule in IMAGING_RULES for row in benchmarks.get(rule, []))
    shutil.rmtree(workdir)
    return {"n": n_patients, "cores": cores, "seconds": seconds, "job_seconds": job_seconds}


def make_cohort(root: Path, n_patients: int) -> Path:
    cohort = root / f"cohort_{n_patients}"
    generate_cohort(cohort, preset="tiny", n_patients=n_patients, seed=11, workers=2)
    return cohort


def scaling(root: Path, sizes: list[int], cores_size: int) -> tuple[list[dict], list[dict]]:
    by_size = []
    for n in sizes:
        cohort = make_cohort(root, n)
        by_size.append(preprocessing(root, n, 2, cohort))
        print(f"preprocessing {n} patients, 2 cores: {by_size[-1]['seconds']:.1f} s", flush=True)
        if n != cores_size:
            shutil.rmtree(cohort)
    cohort = root / f"cohort_{cores_size}"
    if not cohort.exists():
        cohort = make_cohort(root, cores_size)
    by_cores = [preprocessing(root, cores_size, c, cohort) for c in (1, 2)]
    return by_size, by_cores


# --- report -------------------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(intercept, slope, R^2) of the least-squares line."""
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = intercept + slope * np.asarray(xs)
    residual = np.sum((np.asarray(ys) - predicted) ** 2)
    total = np.sum((np.asarray(ys) - np.mean(ys)) ** 2)
    return float(intercept), float(slope), float(1 - residual / total) if total else 1.0


def machine_line() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"load average {load} (1/5/15 min) at the end; {time.strftime('%Y-%m-%d %H:%M')}."
    )


def report(e2e: dict, by_size: list[dict], by_cores: list[dict], quick: bool) -> str:
    cfg = e2e["config"]
    noop = statistics.median(e2e["noop"])
    lines = [
        "# Pipeline end to end",
        "",
        machine_line(),
        "The machine is shared with other work: times are scale, not truth.",
        "",
        "## End to end" + (" (--quick)" if quick else ""),
        "",
        f"config.yaml{' with --quick overrides' if quick else ' as is'}: "
        f"{cfg['synthetic']['preset']} preset, {cfg['synthetic']['n_patients']} patients, "
        f"models {', '.join(cfg['train']['models'])}, {cfg['splits']['n_folds']} folds, "
        f"{cfg['train']['epochs']} epoch(s); 2 cores.",
        "",
        "| jobs | wall s | no-op rerun s (median of 3) | no-op target |",
        "|---|---|---|---|",
        f"| {e2e['jobs']} | {e2e['seconds']:.0f} | {noop:.1f} "
        f"({', '.join(f'{s:.1f}' for s in e2e['noop'])}) | < 5 s: {'met' if noop < 5 else 'NOT met'} |",
        "",
        f"Of a Snakemake start, importing the SLURM executor plugin took "
        f"{e2e['plugin_import']:.1f} s here (it runs `scontrol show config` at import, with a "
        "10 s timeout: near 0 s without SLURM or on a working cluster, up to 10 s where scontrol "
        "is installed but no controller answers).",
        "",
        "Time per stage (from each rule's benchmark files; jobs overlap on 2 cores):",
        "",
        *stage_table(e2e["benchmarks"]),
        "",
    ]
    if by_size:
        intercept, slope, r2 = linear_fit(
            [r["n"] for r in by_size], [r["seconds"] for r in by_size]
        )
        lines += [
            "## Preprocessing as the cohort grows",
            "",
            "index + ingest -> register -> segment -> roi (`--until roi`), tiny preset, ROI 32x32x16,",
            "2 cores; the cohort is generated beforehand (synth not timed). Wall includes",
            "Snakemake's start and DAG; job s is the sum of the imaging jobs' own times.",
            "",
            "| patients | wall s | s per patient | sum of job s |",
            "|---|---|---|---|",
            *(
                f"| {r['n']} | {r['seconds']:.1f} | {r['seconds'] / r['n']:.2f} | {r['job_seconds']:.1f} |"
                for r in by_size
            ),
            "",
            f"Least-squares fit: wall s = {intercept:.1f} + {slope:.2f} x patients "
            f"(R^2 = {r2:.3f}); per-patient slope {slope:.2f} s.",
            "",
            "## 1 versus 2 cores",
            "",
            "| patients | cores | wall s | sum of job s |",
            "|---|---|---|---|",
            *(
                f"| {r['n']} | {r['cores']} | {r['seconds']:.1f} | {r['job_seconds']:.1f} |"
                for r in by_cores
            ),
            "",
            f"Speed-up with 2 cores: {by_cores[0]['seconds'] / by_cores[1]['seconds']:.2f}x "
            "(on a machine shared with other work, a second core gives what the others leave).",
            "",
        ]
    table, over = memory_table(e2e["benchmarks"], e2e["declared"])
    verdict = (
        f"**Imaging rules above their declared mem_mb: {', '.join(over)}.**"
        if over
        else "Every imaging job (ingest, register, segment, roi) stayed within its declared mem_mb."
    )
    lines += [
        "## Peak memory per rule (end-to-end run)",
        "",
        "max_rss is Snakemake's benchmark of the job's process tree (MB); mem_mb is what the rule",
        "declares (what a cluster job is given).",
        "",
        *table,
        "",
        verdict,
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patients, models and sizes")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--cores-size", type=int, default=None, help="patients for 1 vs 2 cores")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    sizes = (
        args.sizes if args.sizes is not None else ([4, 8, 16] if args.quick else [10, 20, 40, 80])
    )
    cores_size = args.cores_size or (8 if args.quick else 20)

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_pipeline_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        e2e_dir = root / "end_to_end"
        e2e_dir.mkdir(exist_ok=True)
        e2e = end_to_end(e2e_dir, args.quick)
        print(f"end to end: {e2e['seconds']:.0f} s, no-op {e2e['noop']}", flush=True)
        by_size, by_cores = scaling(root, sizes, cores_size) if sizes else ([], [])
        text = report(e2e, by_size, by_cores, args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
