"""Fixtures of the robustness suites (faults, fuzzing, security, load).

The node-subprocess machinery is the node team's (``tests/node/conftest.py``): it is loaded here by path and its
fixtures (``node_config``, ``node_proc``) re-exported, so nothing is duplicated.  Our own helpers live in the
small modules beside this file (``support``, ``certs``, ``mutations``).

Full runs are behind ``@pytest.mark.slow``; their sizes come from :func:`scale` (CI subset vs full).  When
``TOTALREG_FAULTS_OUT`` names a folder, each suite writes its figures there as JSON (``bench/faults/run.py``
turns them into ``bench/faults/RESULTS.md``).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_NODE_CONFTEST = Path(__file__).resolve().parents[1] / "node" / "conftest.py"


def _load_node_fixtures():
    name = "totalreg_node_test_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _NODE_CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


nodefx = _load_node_fixtures()
node_config = nodefx.node_config  # noqa: F811 - re-exported fixture
node_proc = nodefx.node_proc  # re-exported fixture


@pytest.fixture(scope="session")
def robust_out():
    """Folder for the figures of full runs (``$TOTALREG_FAULTS_OUT``) or None."""
    from .support import figures_dir
    return figures_dir()
