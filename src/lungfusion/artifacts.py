"""Atomic artifact writes and the JSON sidecars every per-patient stage leaves.

A killed job must not leave a file that looks complete, so everything is written to a
temporary name in the same folder and renamed into place. A stage's JSON sidecar is written
last and marks the stage done for that patient; ``status`` is ``ok`` or ``failed``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("lungfusion", "SimpleITK", "pydicom", "numpy", "torch", "monai", "scikit-learn")


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` keeps the extension writers look at (e.g. ``.nii.gz`` for SimpleITK).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | Path, payload: dict) -> None:
    write_text_atomic(
        path, json.dumps(payload, indent=2, default=_jsonable, sort_keys=False) + "\n"
    )


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Timer:
    """Collects named wall-clock timings for a sidecar: ``with timer("read"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def sidecar(
    *,
    stage: str,
    patient: str,
    status: str = "ok",
    inputs: dict | None = None,
    outputs: dict | None = None,
    parameters: dict | None = None,
    warnings: list[str] | None = None,
    timings: dict | None = None,
    error: dict | None = None,
    **extra: Any,
) -> dict:
    """The common shape of a per-patient stage's JSON record."""
    record = {
        "stage": stage,
        "patient": patient,
        "status": status,
        "inputs": inputs or {},
        "outputs": outputs or {},
        "parameters": parameters or {},
        "warnings": warnings or [],
        "timings_s": timings or {},
        "software": software_versions(),
    }
    if error is not None:
        record["error"] = error
    record.update(extra)
    return record
