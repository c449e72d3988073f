"""Index and ingest on a collection-sized DICOM tree: files per second, peak memory, and how the
index's time grows with the number of files (it must stay linear).

Run: ``python bench/bench_collection.py [--patients 350] [--files 250000] [--ingest 3]``.
Writes ``bench/results/collection.md``; the tree goes to ``bench/_work/collection/`` (kept, so a
second run measures without rewriting it; ``--rewrite`` forces it).

The tree is laid out like TCIA Lung-PET-CT-Dx (``patient/date-study/number-series/1-NNN.dcm``):
per patient an earlier CT-only study, a PET/CT study with its CT, PET and a fused RGB secondary
capture, and a non-DICOM file. Every file is a header-realistic copy of a real scanner file of
``../shared/fixtures`` (LUNG1-001's CT slice, STS_001's PET slice) with new UIDs, positions and
instance numbers; the pixel data is cut to a few bytes, because indexing reads headers only and
250,000 real slices would be 125 GB. Ingest, which needs real pixels, is measured on synthetic
default-preset patients (``lungfusion.synth``) written as real DICOM.

Each index run is a separate process (its peak RSS is its own) on a subset of patients, linked
into a folder of its own; the page cache is warm after the first pass (``--repeats`` runs per
size, median). The growth exponent is the slope of log(time) against log(files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "dicom"
CT_SLICE = FIXTURES / "nsclc-radiomics-LUNG1-001" / "ct" / "1-001.dcm"
PET_SLICE = FIXTURES / "sts-001" / "pet-raw-bqml"
WORK = REPO / "bench" / "_work" / "collection"
OUT = REPO / "bench" / "results" / "collection.md"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _template(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    ds.PixelData = b"\0" * 8  # headers are what the index reads
    return ds


# (study, role, share of the patient's image files) of each series
SERIES_PLAN = (("prior", "ct", 0.22), ("petct", "ct", 0.36), ("petct", "pet", 0.41),
               ("petct", "fused", 0.01))  # fmt: skip


def write_patient(root: Path, number: int, files_per_patient: int, templates: dict) -> int:
    """One patient's studies; returns the number of files written."""
    rng = np.random.default_rng(number)
    pid = f"Lung_Dx-A{number:04d}"
    studies = {
        name: (generate_uid(), generate_uid(), f"{2007 + number % 10}{month:02d}15")
        for name, month in (("prior", 2), ("petct", 9))
    }
    written = 0
    images = files_per_patient - 1
    for number_in_study, (study, role, share) in enumerate(SERIES_PLAN, 2):
        study_uid, frame_uid, date = studies[study]
        ds = templates[role]
        series_uid = generate_uid()
        folder = (
            root
            / pid
            / f"{date[4:6]}-15-{date[:4]}-NA-{study.upper()}-{rng.integers(10**4, 10**5)}"
            / f"{number_in_study}.000000-{role.upper()}-{rng.integers(10**4, 10**5)}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        ds.PatientID, ds.PatientName = pid, pid
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = (
            study_uid, frame_uid, series_uid,
        )  # fmt: skip
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        for index in range(max(1, round(share * images))):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = index + 1
            ds.ImagePositionPatient = [-250.0, -250.0, -100.0 - 3.0 * index]
            ds.save_as(folder / f"1-{index + 1:03d}.dcm", enforce_file_format=False)
            written += 1
    (root / pid / "LICENSE.txt").write_text("CC BY 4.0\n")
    return written + 1


def write_tree(root: Path, n_patients: int, n_files: int) -> int:
    """The whole tree (skipped when a complete one of this size is there); its file count."""
    stamp = root / "complete.json"
    wanted = {"patients": n_patients, "files": n_files}
    if stamp.is_file() and json.loads(stamp.read_text()).get("wanted") == wanted:
        return json.loads(stamp.read_text())["written"]
    shutil.rmtree(root, ignore_errors=True)
    (root / "dicom").mkdir(parents=True)
    fused = _template(CT_SLICE)  # the scanner's fused capture: an RGB secondary capture
    fused.SOPClassUID = fused.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    fused.SamplesPerPixel, fused.PhotometricInterpretation = 3, "RGB"
    templates = {
        "ct": _template(CT_SLICE),
        "pet": _template(sorted(PET_SLICE.iterdir())[100]),
        "fused": fused,
    }
    per_patient = max(5, n_files // n_patients)
    start, written = time.perf_counter(), 0
    for number in range(1, n_patients + 1):
        written += write_patient(root / "dicom", number, per_patient, templates)
        if number % 25 == 0:
            rate = written / (time.perf_counter() - start)
            print(f"  wrote {number} patients, {written} files ({rate:.0f} files/s)", flush=True)
    stamp.write_text(json.dumps({"wanted": wanted, "written": written}))
    return written


def subset(root: Path, n: int) -> Path:
    """A folder linking the first ``n`` patients (index follows links)."""
    folder = root / f"subset_{n}"
    if not folder.is_dir():
        folder.mkdir()
        for patient in sorted((root / "dicom").iterdir())[:n]:
            (folder / patient.name).symlink_to(patient)
    return folder


INDEX_RUN = """
import json, resource, sys, time
from lungfusion.ingest.index import build_series_table
root, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = [f"Lung_Dx-A{i:04d}" for i in range(1, n + 1)]
start = time.perf_counter()
table = build_series_table(root, ids, out, ct_slice_thickness_mm=(0.5, 5.0), study_choice="paired")
seconds = time.perf_counter() - start
chosen = table[table.chosen == "CT"]
print(json.dumps({"seconds": seconds, "series": len(table), "chosen_ct": len(chosen),
                  "paired": int(chosen.reason.str.contains("paired").sum()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def time_index(folder: Path, n: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", INDEX_RUN, str(folder), str(folder / "series.tsv"), str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    files = sum(
        name.endswith(".dcm") for _, _, names in os.walk(folder, followlinks=True) for name in names
    )
    best = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_rss_mb")}
    return {**runs[-1], **best, "files": files}


INGEST_RUN = """
import json, resource, sys, time
from lungfusion.cli import main
start = time.perf_counter()
main(["ingest", "--patient", sys.argv[1], "--series", sys.argv[2], "--out-dir", sys.argv[3]])
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def time_ingest(n_patients: int, work: Path) -> list[dict]:
    """Index + ingest of synthetic default-preset patients (real pixel data)."""
    from lungfusion.ingest.index import build_series_table
    from lungfusion.synth import generate_cohort

    cohort = work / "synthetic"
    generate_cohort(cohort, preset="default", n_patients=n_patients, seed=11,
                    fraction_with_prior_study=1.0)  # fmt: skip
    ids = [line.split("\t")[0] for line in (cohort / "clinical.tsv").read_text().splitlines()[1:]]
    series = work / "ingest" / "series.tsv"
    build_series_table(cohort / "dicom", ids, series, ct_slice_thickness_mm=(0.5, 5.0),
                       study_choice="paired")  # fmt: skip
    rows = []
    for pid in ids:
        done = subprocess.run(
            [sys.executable, "-c", INGEST_RUN, pid, str(series), str(work / "ingest" / pid)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
        record = json.loads((work / "ingest" / pid / "ingest.json").read_text())
        files = sum(s["n_files"] for s in (record["ct"], record.get("pet") or {"n_files": 0}))
        rows.append({"patient": pid, "files": files, "status": record["status"],
                     **json.loads(done.stdout.strip().splitlines()[-1])})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=350)
    parser.add_argument("--files", type=int, default=250_000)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.04, 0.2, 0.5, 1.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ingest", type=int, default=3, help="synthetic patients to ingest")
    parser.add_argument("--rewrite", action="store_true")
    args = parser.parse_args()
    if not CT_SLICE.is_file():
        print(f"fixture not found: {CT_SLICE}", file=sys.stderr)
        return 1
    if args.rewrite:
        shutil.rmtree(WORK, ignore_errors=True)
    start = time.perf_counter()
    written = write_tree(WORK, args.patients, args.files)
    write_seconds = time.perf_counter() - start
    rows = []
    for fraction in args.fractions:
        n = max(1, round(fraction * args.patients))
        result = time_index(subset(WORK, n), n, args.repeats)
        rows.append({"patients": n, **result})
        print(json.dumps(rows[-1]), flush=True)
    files = np.array([r["files"] for r in rows], float)
    seconds = np.array([r["seconds"] for r in rows], float)
    slope = (
        float(np.polyfit(np.log(files), np.log(seconds), 1)[0]) if len(rows) > 1 else float("nan")
    )
    ingest = time_ingest(args.ingest, WORK / "ingest_run") if args.ingest else []
    lines = [
        "# Index and ingest on a collection-sized tree",
        "",
        f"Tree: {args.patients} patients, {written} files (Lung-PET-CT-Dx layout; header-realistic "
        f"copies of real scanner files, pixel data cut), written in {write_seconds:.0f} s "
        "(0 s: reused). Index: `build_series_table` in its own process per run, warm page cache, "
        f"median of {args.repeats}; {os.cpu_count()} CPUs, shared.",
        "",
        "| patients | files | series | CTs chosen | paired across studies | wall s | files/s | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['patients']} | {r['files']} | {r['series']} | {r['chosen_ct']} | {r['paired']} "
            f"| {r['seconds']:.1f} | {r['files'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"Growth: time ~ files^{slope:.2f} (log-log slope over the sizes above; 1 is linear).",
        "",
    ]
    if ingest:
        lines += [
            "## Ingest (synthetic default preset, real pixel data; each patient also has an "
            "earlier CT-only study)",
            "",
            "| patient | files read | status | wall s (process) | files/s | peak RSS MB |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for r in ingest:
            lines.append(
                f"| {r['patient']} | {r['files']} | {r['status']} | {r['seconds']:.2f} "
                f"| {r['files'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
