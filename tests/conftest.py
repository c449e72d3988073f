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
