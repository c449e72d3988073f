"""Patient IDs of the synthetic cohort.

Imported by the Snakefile at parse time, so this module imports nothing heavy.

>>> patient_ids(3)
['SYN0001', 'SYN0002', 'SYN0003']
"""

from __future__ import annotations

PREFIX = "SYN"


def patient_ids(n_patients: int) -> list[str]:
    """The IDs ``SYN0001 .. SYNnnnn`` of a cohort of ``n_patients``."""
    if not isinstance(n_patients, int) or isinstance(n_patients, bool) or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    width = max(4, len(str(n_patients)))
    return [f"{PREFIX}{i:0{width}d}" for i in range(1, n_patients + 1)]
