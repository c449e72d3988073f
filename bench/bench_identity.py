"""Did a change alter what the pipeline computes? Digests of a whole run on the tiny cohort.

    python bench/bench_identity.py digest --out bench/results/identity_before.json
    (change the code)
    python bench/bench_identity.py digest --out bench/results/identity_after.json
    python bench/bench_identity.py compare bench/results/identity_before.json \
        bench/results/identity_after.json

``digest`` runs the Snakefile on ``tests/tiny_config.yaml`` in a temporary folder (``--keep``
keeps it, ``--results DIR`` digests an existing run instead) and writes one hash per artifact:
every per-patient NIfTI (voxels and geometry, not the gzip bytes, which hold no meaning), every
ROI tensor file (each array), each model's fold predictions and the metrics table. ``compare``
lists what differs and writes ``bench/results/identity.md``; it exits 1 on any difference.
Sidecars are left out: they hold timings and paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "results" / "identity.md"


# ITK's multi-threaded metric sums in a varying order, so a registration on two threads differs
# between runs in the last bits, and one epoch of training turns that into different scores:
# one registration thread makes a run repeatable.
REPEATABLE = {"register": {"max_iterations": 30, "threads": 1}}


def run_tiny(workdir: Path) -> Path:
    overlay = workdir / "identity_overlay.yaml"
    overlay.write_text(json.dumps(REPEATABLE))
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(REPO / "tests" / "tiny_config.yaml"), str(overlay),
        "--cores", "2", "--quiet",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=workdir)
    return workdir / "results"


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


def nifti_digest(path: Path) -> str:
    image = sitk.ReadImage(str(path))
    geometry = repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()))
    voxels = sitk.GetArrayViewFromImage(image)
    return _hash(
        geometry.encode(), str(voxels.dtype).encode(), np.ascontiguousarray(voxels).tobytes()
    )


def npz_digest(path: Path) -> str:
    with np.load(path) as arrays:
        return _hash(*(name.encode() + np.ascontiguousarray(arrays[name]).tobytes()
                       for name in sorted(arrays.files)))  # fmt: skip


def table_digest(path: Path) -> str:
    """A TSV's values to 6 significant digits, so a float's last printed bit does not count."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return _hash(table.to_csv(sep="\t", index=False).encode())


def digest_results(results: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(results.glob("*/*/*.nii.gz")):
        digests[str(path.relative_to(results))] = nifti_digest(path)
    for path in sorted(results.glob("roi/*.npz")):
        digests[str(path.relative_to(results))] = npz_digest(path)
    tables = [
        "ingest/series.tsv", "splits/folds.tsv", "splits/cohort.tsv", "radiomics/features.tsv",
        "metrics/all.tsv",
    ]  # fmt: skip
    tables += [
        str(p.relative_to(results)) for p in sorted(results.glob("train/*/fold*/predictions.tsv"))
    ]
    tables += [
        str(p.relative_to(results)) for p in sorted(results.glob("integrate/*/predictions.tsv"))
    ]
    for name in tables:
        if (results / name).is_file():
            table = (results / name).read_text() if name.endswith("series.tsv") else None
            digests[name] = _hash(table.encode()) if table else table_digest(results / name)
    return digests


def compare(before: dict, after: dict) -> list[str]:
    lines = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"| {name} | only before |")
        elif name not in before:
            lines.append(f"| {name} | only after |")
        elif before[name] != after[name]:
            lines.append(f"| {name} | differs |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    digest = commands.add_parser("digest")
    digest.add_argument("--out", required=True, type=Path)
    digest.add_argument("--results", type=Path, default=None, help="digest this run instead")
    digest.add_argument("--keep", type=Path, default=None, help="run the tiny cohort here")
    check = commands.add_parser("compare")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "digest":
        if args.results is not None:
            results = args.results
        else:
            workdir = args.keep or Path(tempfile.mkdtemp(prefix="lungfusion-identity-"))
            workdir.mkdir(parents=True, exist_ok=True)
            results = run_tiny(workdir)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(digest_results(results), indent=1, sort_keys=True))
        return 0
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    differences = compare(before, after)
    RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text(
        "# Identity of a run before and after a change (tiny cohort)\n\n"
        f"{len(before)} artifacts before, {len(after)} after, {len(differences)} differ.\n\n"
        + ("| artifact | |\n|---|---|\n" + "\n".join(differences) + "\n" if differences else "")
    )
    print(RESULTS_MD.read_text())
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
