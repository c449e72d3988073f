"""Did a change alter what the pipeline computes? Two runs of the tiny cohort, artifact by artifact.

    python bench/identity.py run /tmp/before        # on the old code
    python bench/identity.py run /tmp/after         # on the new code
    python bench/identity.py compare /tmp/before /tmp/after [--atol 1e-4]

``run`` runs the Snakefile on ``tests/tiny_config.yaml`` in the given folder. ``compare`` reads
both runs' artifacts: every per-patient NIfTI (voxels and geometry, not the gzip bytes), every
ROI tensor file (each array), the series, folds, cohort and radiomics tables, each model's fold
predictions, the integrator's predictions and the metrics table (the first run's models only); values are
compared with an absolute tolerance (text must be equal); artifacts only the second run has are
listed. It writes ``bench/results/identity.md`` (each
artifact: identical, or its largest difference) and exits 1 when one differs beyond ``--atol``
or is missing. Sidecars are left out: they hold timings and paths.

Two runs of the same code are the yardstick: ITK sums its multi-threaded registration metric
in a varying order, so the registered PET differs between runs in the last bits, and anything
trained on it inherits that much.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "results" / "identity.md"
TABLES = ("ingest/series.tsv", "splits/folds.tsv", "splits/cohort.tsv", "radiomics/features.tsv",
          "metrics/all.tsv")  # fmt: skip
# one registration thread keeps the last-bit differences of ITK's threaded metric small
OVERLAY = {"register": {"max_iterations": 30, "threads": 1}}


def run_tiny(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "identity_overlay.yaml"
    overlay.write_text(json.dumps(OVERLAY))
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(REPO / "tests" / "tiny_config.yaml"), str(overlay),
        "--cores", "2", "--quiet",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=workdir)


def artifacts(results: Path) -> list[str]:
    names = [str(p.relative_to(results)) for p in sorted(results.glob("*/*/*.nii.gz"))]
    names += [str(p.relative_to(results)) for p in sorted(results.glob("roi/*.npz"))]
    names += [name for name in TABLES if (results / name).is_file()]
    for pattern in ("train/*/fold*/predictions.tsv", "integrate/*/predictions.tsv"):
        names += [str(p.relative_to(results)) for p in sorted(results.glob(pattern))]
    return names


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.name.endswith(".nii.gz"):
        image = sitk.ReadImage(str(path))
        geometry = np.concatenate([image.GetSpacing(), image.GetOrigin(), image.GetDirection()])
        return {"voxels": sitk.GetArrayFromImage(image), "geometry": geometry}
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _array_difference(a: dict, b: dict) -> float:
    """The largest absolute difference (inf when names, shapes or dtypes differ)."""
    if a.keys() != b.keys():
        return float("inf")
    worst = 0.0
    for name in a:
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.abs(x.astype(float) - y.astype(float)).max()))
    return worst


def _table_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The largest absolute difference of the numeric cells (inf when the text or the layout
    differs)."""
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        return float("inf")
    worst = 0.0
    for column in a.columns:
        x, y = pd.to_numeric(a[column], errors="coerce"), pd.to_numeric(b[column], errors="coerce")
        text = x.isna() & a[column].ne("")
        if not a[column][text].equals(b[column][text]) or not (x.isna() == y.isna()).all():
            return float("inf")
        if x.notna().any():
            worst = max(worst, float((x - y).abs().max()))
    return worst


def difference(before: Path, after: Path, name: str) -> float:
    if not (after / name).is_file():
        return float("inf")
    if name.endswith((".nii.gz", ".npz")):
        return _array_difference(_arrays(before / name), _arrays(after / name))
    read = {"sep": "\t", "dtype": str, "keep_default_na": False}
    old, new = pd.read_csv(before / name, **read), pd.read_csv(after / name, **read)
    if "model" in old.columns and "model" in new.columns:  # models added since: not compared
        new = new[new["model"].isin(set(old["model"]))].reset_index(drop=True)
    return _table_difference(old, new)


def compare(before: Path, after: Path) -> list[tuple[str, float]]:
    """(artifact, largest difference) of every artifact of ``before``."""
    return [(name, difference(before, after, name)) for name in artifacts(before)]


def added(before: Path, after: Path) -> list[str]:
    """Artifacts only the second run has (a model the change adds, say): listed, not compared."""
    return sorted(set(artifacts(after)) - set(artifacts(before)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run").add_argument("workdir", type=Path)
    check = commands.add_parser("compare")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    check.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_tiny(args.workdir)
        return 0
    rows = compare(args.before / "results", args.after / "results")
    new = added(args.before / "results", args.after / "results")
    beyond = [(n, d) for n, d in rows if d > args.atol]
    identical = sum(d == 0 for _, d in rows)
    lines = [
        "# Identity of two runs of the tiny cohort",
        "",
        f"`{args.before}` against `{args.after}`: {len(rows)} artifacts, {identical} identical, "
        f"{len(rows) - identical - len(beyond)} within {args.atol:g}, {len(beyond)} beyond.",
        "",
        "| artifact | largest absolute difference |",
        "|---|---:|",
        *(f"| {n} | {d:.3g} |" for n, d in rows if d > 0),
        "",
        "Only in the second run (not compared): " + (", ".join(new) or "none") + ".",
    ]
    RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
