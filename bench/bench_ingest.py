"""Reading LUNG1-001's CT (512x512x134) in process vs dcm2niix converting it as a whole process.

Writes bench/results/ingest.md. Run: ``python bench/bench_ingest.py [--repeats N]``.
The issue asks that the in-process read take no longer than dcm2niix's whole process.

The machine is shared, so the methods take turns within each repeat (a change of load hits them
alike), and the table gives, beside each method's median, the median of the per-repeat ratios,
of wall time and of CPU time (the reader's threads, or dcm2niix's process as a child): on a busy
machine the CPU ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "fixtures" / "dicom" / "nsclc-radiomics-LUNG1-001" / "ct"
OUT = REPO / "bench" / "results" / "ingest.md"


def _cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) plus its finished child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(function) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process's threads, or the child's for dcm2niix)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    function()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _median_ratio(values: list[float], references: list[float]) -> str:
    return f"{statistics.median(v / r for v, r in zip(values, references, strict=True)):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if not CT.is_dir():
        print(f"fixture not found: {CT}", file=sys.stderr)
        return 1
    from lungfusion.ingest.series import read_ct_series  # noqa: PLC0415

    files = sorted(CT.glob("*.dcm"))
    beside = Path(sys.executable).with_name("dcm2niix")  # the venv's, when not activated
    dcm2niix = str(beside) if beside.exists() else shutil.which("dcm2niix")

    def simpleitk_reader():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT)))
        reader.Execute()

    methods = {
        "lungfusion read_ct_series (in process)": lambda: read_ct_series(files),
        "SimpleITK ImageSeriesReader (in process)": simpleitk_reader,
    }
    tmp = tempfile.TemporaryDirectory()
    if dcm2niix:

        def convert():  # a fresh output folder each time: no name clashes with earlier runs
            out = tempfile.mkdtemp(dir=tmp.name)
            command = [dcm2niix, "-z", "n", "-b", "n", "-f", "ct", "-o", out, str(CT)]
            subprocess.run(command, check=True, capture_output=True)

        methods["dcm2niix (whole process, uncompressed NIfTI)"] = convert
    read_ct_series(files)  # warm the file cache (and the reader threads) for everyone alike
    loads = [os.getloadavg()[0]]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, function in methods.items():
            times[name].append(_timed(function))
        # drop dcm2niix's 70 MB outputs outside the timing: piling up, their writeback slows
        # whatever runs next
        for out in Path(tmp.name).iterdir():
            shutil.rmtree(out)
    loads.append(os.getloadavg()[0])
    tmp.cleanup()

    reference = times.get("dcm2niix (whole process, uncompressed NIfTI)")
    lines = [
        "# Ingest: reading LUNG1-001 CT (512x512x134)",
        "",
        f"{args.repeats} repeats taking turns, warm file cache, {os.cpu_count()} CPUs (shared); "
        f"1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end. "
        "Seconds; ratio = median over repeats of (this method / dcm2niix in the same repeat); "
        "at most 1 is the goal.",
        "",
        "| method | median s | min s | median CPU s | wall ratio to dcm2niix "
        "| CPU ratio to dcm2niix |",
        "|---|---|---|---|---|---|",
    ]
    for name, pairs in times.items():
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        wall_ratio = cpu_ratio = "n/a"
        if reference:
            wall_ratio = _median_ratio(wall, [r for r, _ in reference])
            cpu_ratio = _median_ratio(cpu, [c for _, c in reference])
        lines.append(
            f"| {name} | {statistics.median(wall):.3f} | {min(wall):.3f} "
            f"| {statistics.median(cpu):.3f} | {wall_ratio} | {cpu_ratio} |"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
