"""Fixtures for dicom_io tests (helpers live in dicomio_helpers.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicomio_helpers import FEET_FIRST, ROT_Z20, Pair, make_pair  # noqa: E402


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def rotated_pair(tmp_path_factory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair_rot"), direction=ROT_Z20)


@pytest.fixture(scope="session")
def feet_first_pair(tmp_path_factory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair_ff"), direction=FEET_FIRST)
