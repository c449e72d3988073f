"""Shared test fixtures: where the real DICOM fixtures are, and the tiny workflow config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
TINY_CONFIG = REPO / "tests" / "tiny_config.yaml"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"real DICOM fixtures not found at {FIXTURES} (../shared/fixtures)")
    return FIXTURES


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


def dcm2niix_path() -> str | None:
    """dcm2niix from the PyPI package: beside this Python (venv not activated) or on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).with_name("dcm2niix")
    return str(beside) if beside.exists() else shutil.which("dcm2niix")
