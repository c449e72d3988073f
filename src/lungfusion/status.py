"""The per-patient status protocol, in one place: how a stage records a patient and how the
stages after it read that record.

Every per-patient stage leaves a JSON sidecar, written last, with ``status``:

- ``ok``: the stage's images are in place;
- ``failed``: bad input; ``error`` holds the message and the patient, series, file and tag;
- ``skipped``: an earlier stage did not succeed; ``upstream`` names the FIRST stage that failed
  and its message (``{"stage", "status", "message", "error"}``), carried unchanged down the
  chain, so the cohort table and the report can say what went wrong and where.

A failed or skipped patient's folder holds its sidecar and no image: :func:`run_patient_stage`
has the stage write into a staging folder and moves the images into place only on success.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lungfusion.artifacts import Timer, read_json, sidecar, write_json_atomic
from lungfusion.errors import PatientInputError

log = logging.getLogger(__name__)


def failure_of(record: Mapping | None, *, stage: str, path: Path | None = None) -> dict | None:
    """None when ``record`` says ok; else the first failure behind it.

    ``record`` is a stage's sidecar (None when it is missing). A skipped sidecar passes on its
    ``upstream``; a failed one is the failure itself.
    """
    if record is None:
        where = f" {path}" if path is not None else ""
        return {"stage": stage, "status": "missing", "message": f"no {stage} sidecar{where}"}
    status = record.get("status", "missing")
    if status == "ok":
        return None
    upstream = record.get("upstream")
    if status == "skipped" and isinstance(upstream, Mapping) and upstream.get("stage"):
        return dict(upstream)
    error = record.get("error")
    if isinstance(error, Mapping):
        message = error.get("text") or _error_text(error)
    else:
        message = str(error) if error else None
    return {
        "stage": record.get("stage", stage),
        "status": status,
        "message": message or str(record.get("reason") or f"{stage} {status}"),
        "error": dict(error) if isinstance(error, Mapping) else None,
    }


def _error_text(error: Mapping) -> str | None:
    """The line a sidecar written before ``text`` existed would have had: names patient,
    series, file and tag (a workdir kept across an upgrade holds such sidecars)."""
    if not error.get("message"):
        return None
    fields = {key: error.get(key) for key in ("patient", "series", "file", "tag")}
    return str(PatientInputError(str(error["message"]), **fields))


def read_failure(path: Path, stage: str) -> dict | None:
    """:func:`failure_of` the sidecar at ``path`` (None: the stage succeeded there)."""
    path = Path(path)
    try:
        record = read_json(path) if path.is_file() else None
    except ValueError:
        record = {"stage": stage, "status": "failed", "error": {"message": f"unreadable {path}"}}
    return failure_of(record, stage=stage, path=path)


def first_upstream_failure(sidecars: Mapping[str, Path]) -> dict | None:
    """The first failure among upstream sidecars, given in pipeline order as stage -> path."""
    for stage, path in sidecars.items():
        failure = read_failure(path, stage)
        if failure is not None:
            return failure
    return None


def describe(failure: Mapping) -> str:
    """One line for tables and logs: ``ingest failed: <message>``."""
    return f"{failure.get('stage')} {failure.get('status', 'failed')}: {failure.get('message')}"


def staging_dir(image_dir: Path, stage: str, patient: str) -> Path:
    """Where ``patient``'s images wait until the stage succeeds.

    One fixed name per stage and patient: a run removes only its own leftovers. (A glob such
    as ``.roi-P1-*`` would also match the live folder of patient ``P1-2`` running beside it in
    the shared ``results/roi``.)
    """
    return image_dir / f".{stage}-{patient}.staging"


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def run_patient_stage(
    *,
    stage: str,
    patient: str,
    sidecar_path: Path,
    image_dir: Path,
    image_names: Iterable[str],
    record: dict,
    work: Callable[[Path, Timer], dict],
    upstream: Mapping[str, Path] | None = None,
) -> dict:
    """Run one patient through a stage and write its sidecar last; return the sidecar.

    ``work(staging_dir, timer)`` writes the stage's images into ``staging_dir`` and returns the
    sidecar's extra fields (``warnings`` and ``outputs`` among them); it raises
    :class:`PatientInputError` for bad input. The images are moved into ``image_dir`` only when
    it succeeds. ``image_names`` are every image the stage may write: any not written this time
    (or all, when the patient fails or is skipped) are removed, so no stale image from an
    earlier run stays beside the new sidecar. ``record`` holds the common sidecar fields
    (``inputs``, ``parameters``).
    """
    image_dir.mkdir(parents=True, exist_ok=True)
    names = list(image_names)
    failure = first_upstream_failure(upstream or {})
    if failure is not None:
        log.warning("patient %s skipped at %s: %s", patient, stage, describe(failure))
        _remove(image_dir / name for name in names)
        payload = sidecar(
            stage=stage, patient=patient, status="skipped", upstream=failure, **record
        )
        write_json_atomic(sidecar_path, payload)
        return payload
    timer = Timer()
    staging = staging_dir(image_dir, stage, patient)
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers
    staging.mkdir()
    try:
        try:
            result = work(staging, timer)
        except PatientInputError as error:
            error.patient = error.patient or patient
            log.error("%s", error)
            _remove(image_dir / name for name in names)
            payload = sidecar(
                stage=stage, patient=patient, status="failed", timings=timer.seconds,
                error=error.as_dict() | {"text": str(error)}, **record,
            )  # fmt: skip
            write_json_atomic(sidecar_path, payload)
            return payload
        written = {path.name for path in staging.iterdir() if path.is_file()}
        for name in sorted(written):
            (staging / name).replace(image_dir / name)
        _remove(image_dir / name for name in names if name not in written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    warnings = result.pop("warnings", [])
    for warning in warnings:
        log.warning("patient %s: %s", patient, warning)
    payload = sidecar(
        stage=stage, patient=patient, warnings=warnings, timings=timer.seconds, **record, **result
    )
    write_json_atomic(sidecar_path, payload)
    return payload
