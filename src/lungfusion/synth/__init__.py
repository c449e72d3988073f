"""The synthetic PET/CT cohort: DICOM a scanner could have written, with known ground truth.

No pipeline stage imports this package; ``lungfusion synth`` runs it and tests and benchmarks
read its ground truth. The heavy modules load lazily so that ``lungfusion.synth.ids`` (imported
by the Snakefile at parse time) stays cheap.
"""

from __future__ import annotations

__all__ = ["generate_cohort", "patient_ids"]


def __getattr__(name: str):
    if name == "generate_cohort":
        from lungfusion.synth.cohort import generate_cohort

        return generate_cohort
    if name == "patient_ids":
        from lungfusion.synth.ids import patient_ids

        return patient_ids
    raise AttributeError(f"module 'lungfusion.synth' has no attribute {name!r}")
