"""Shared helpers for tests: real external tools (dcmtk, dicom3tools) and free loopback ports.

dcmtk's binaries are taken from /usr/bin explicitly: pynetdicom installs Python apps with the same names
(storescu, findscu, ...) that would otherwise shadow them on PATH.
"""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

DCMTK_DIR = Path("/usr/bin")


def dcmtk(name: str) -> str:
    """Absolute path of a dcmtk tool (storescu, findscu, movescu, echoscu, storescp)."""
    path = DCMTK_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"dcmtk tool {name} not found at {path}; run scripts/install.sh")
    return str(path)


def require(reason: str) -> None:
    """A tool the suite needs (Orthanc, PostgreSQL, Chromium, Playwright) is missing: skip when pytest runs
    ad hoc, but FAIL under the project's test command (``scripts/test.sh`` sets TOTALREG_TEST_STRICT=1), so CI
    can never go green by skipping the tests an issue depends on."""
    if os.environ.get("TOTALREG_TEST_STRICT") == "1":
        pytest.fail(f"required for the test suite: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dciodvfy(path: str | Path) -> tuple[list[str], str]:
    """Run dicom3tools' dciodvfy on one file; return (error lines, full output).

    dciodvfy writes its findings to stderr; lines starting with 'Error' are failures.
    """
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    return errors, out


def dcentvfy(paths: list[str | Path]) -> tuple[list[str], str]:
    """Run dicom3tools' dcentvfy over a set of files; return (error/inconsistency lines, full output)."""
    proc = subprocess.run(["/usr/bin/dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    return errors, out
