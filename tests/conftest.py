"""Project-wide pytest fixtures. Sub-folders add their own conftest.py for their area."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("TOTALREG_SHARED_CT", ROOT.parent / "shared" / "data" / "ct"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The real CT data folder beside the checkout (../shared/data/ct); skips if absent."""
    if not SHARED_CT.exists():
        pytest.skip(f"real CT data not found at {SHARED_CT}")
    return SHARED_CT


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the real PostgreSQL used by scale-out tests (scripts/test.sh starts it)."""
    return os.environ.get("TOTALREG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
