"""Reading LUNG1-001's CT (512x512x134) in process vs dcm2niix converting it as a whole process.

Writes bench/results/ingest.md. Run: ``python bench/bench_ingest.py [--repeats N]``.
The issue asks that the in-process read take no longer than dcm2niix's whole process.
"""

from __future__ import annotations

import argparse
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


def _time(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not CT.is_dir():
        print(f"fixture not found: {CT}", file=sys.stderr)
        return 1
    from lungfusion.ingest.series import read_ct_series  # noqa: PLC0415

    files = sorted(CT.glob("*.dcm"))
    dcm2niix = shutil.which("dcm2niix")
    rows = []
    read_ct_series(files)  # warm the file cache for everyone alike
    ours = _time(lambda: read_ct_series(files), args.repeats)
    rows.append(("lungfusion read_ct_series (in process)", ours))

    def simpleitk_reader():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT)))
        reader.Execute()

    rows.append(("SimpleITK ImageSeriesReader (in process)", _time(simpleitk_reader, args.repeats)))
    if dcm2niix:
        with tempfile.TemporaryDirectory() as tmp:
            command = [dcm2niix, "-z", "n", "-b", "n", "-f", "ct", "-o", tmp, str(CT)]
            run = lambda: subprocess.run(command, check=True, capture_output=True)  # noqa: E731
            rows.append(("dcm2niix (whole process, uncompressed NIfTI)", _time(run, args.repeats)))
    reference = statistics.median(rows[-1][1]) if dcm2niix else None
    lines = [
        "# Ingest: reading LUNG1-001 CT (512x512x134)",
        "",
        f"{args.repeats} repeats, warm file cache; median and min in seconds; ratio = median / "
        "dcm2niix median (at most 1 is the goal).",
        "",
        "| method | median s | min s | ratio to dcm2niix |",
        "|---|---|---|---|",
    ]
    for name, seconds in rows:
        median = statistics.median(seconds)
        ratio = f"{median / reference:.2f}" if reference else "n/a"
        lines.append(f"| {name} | {median:.3f} | {min(seconds):.3f} | {ratio} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
