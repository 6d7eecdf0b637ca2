"""Shared fixtures of the node tests: small synthetic CT series, node configs, a real `totalreg serve` subprocess,
and per-test PostgreSQL schemas.

* ``ct_series(tmp_path)``-style factory :func:`make_series` → files of a tiny CT series (dicom_io's writer).
* ``node_config(tmp_path, **overrides)`` → (NodeConfig, path to node.yaml) on free ports, SQLite under tmp.
* ``node_proc`` factory fixture: ``start(config_path) -> NodeProcess`` runs ``totalreg serve --config X`` in a
  subprocess and waits until it answers C-ECHO; every started node is killed at teardown.
* ``pg_schema_url`` fixture: a PostgreSQL URL whose search_path is a fresh schema (dropped afterwards); skips when
  PostgreSQL is not reachable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tools import dcmtk, free_port, require  # noqa: F401  (tests/ is on sys.path, see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------- data

def make_series(folder: Path, *, patient_id: str = "NODE0001", patient_name: str = "Test^Patient",
                study_uid: str | None = None, study_date: str = "20240310", n_slices: int = 4, size: int = 12,
                series_uid: str | None = None, seed: int = 0, prefix: str = "CT", **kw) -> list[Path]:
    """A tiny CT series (size x size x n_slices voxels, 2 mm) written with dicom_io's synthetic writer."""
    from dicom_io.synthetic_series import make_test_volume, write_ct_series
    img = make_test_volume(size=(size, size, n_slices), spacing=(2.0, 2.0, 2.0), seed=seed)
    return write_ct_series(img, folder, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid,
                           study_date=study_date, series_uid=series_uid, file_prefix=prefix, **kw)


# -------------------------------------------------------------------------------------------------- config

def write_node_config(tmp: Path, **sections) -> tuple[object, Path]:
    """A node.yaml in ``tmp`` (free DICOM/web ports, SQLite + spool under tmp/var, fast completion), merged with
    ``sections`` (top-level keys → dicts, merged one level deep).  Returns (NodeConfig, path)."""
    from node.config import load_config
    data_dir = tmp / "var"
    base = {
        "node": {"ae_title": "TOTALREG", "host": "127.0.0.1", "port": free_port(), "data_dir": str(data_dir),
                 "min_free_disk_mb": 1, "acse_timeout_s": 10, "dimse_timeout_s": 20, "network_timeout_s": 20},
        "completion": {"quiet_seconds": 1.0, "max_wait_seconds": 60},
        "jobs": {"workers": 1, "lease_s": 30, "retry": {"max_attempts": 3, "backoff_s": 0.2}},
        "send_retry": {"max_attempts": 3, "backoff_s": 0.2},
        "destinations": [{"name": "local", "kind": "folder", "path": str(tmp / "out")}],
        "rules": [{"name": "ct-followup", "send_to": ["local"]}],
        "web": {"enabled": False, "port": free_port()},
    }
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **val}
        else:
            base[key] = val
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return load_config(path), path


@pytest.fixture
def node_config(tmp_path):
    """Factory: ``node_config(**sections) -> (NodeConfig, path)`` in this test's tmp folder."""
    def make(**sections):
        return write_node_config(tmp_path, **sections)
    return make


# ------------------------------------------------------------------------------------------- node process

def echo_ok(port: int, ae_title: str = "TOTALREG", calling: str = "ECHOSCU", timeout: float = 5.0) -> bool:
    """True when a DICOM node on 127.0.0.1:port answers C-ECHO with success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    try:
        st = assoc.send_c_echo()
        return bool(st) and st.Status == 0
    finally:
        assoc.release()


@dataclass
class NodeProcess:
    """A running `totalreg serve` subprocess."""

    proc: subprocess.Popen
    cfg: object
    config_path: Path
    log_path: Path

    @property
    def port(self) -> int:
        return self.cfg.node.port

    @property
    def ae_title(self) -> str:
        return self.cfg.node.ae_title

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.node.data_dir)

    def log(self) -> str:
        """The node's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (graceful)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_node(config_path: Path, *args: str, wait_s: float = 60.0) -> NodeProcess:
    """Start ``totalreg serve --config config_path`` and wait until it answers C-ECHO."""
    from node.config import load_config
    cfg = load_config(config_path)
    log_path = config_path.parent / f"node-{uuid.uuid4().hex[:6]}.log"
    fh = open(log_path, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config_path), *args],
                            stdout=fh, stderr=subprocess.STDOUT, cwd=str(config_path.parent), env=env)
    fh.close()
    node = NodeProcess(proc, cfg, config_path, log_path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"totalreg serve exited with {proc.returncode}:\n{node.log()[-3000:]}")
        try:
            if echo_ok(cfg.node.port, cfg.node.ae_title, timeout=2):
                return node
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    node.kill()
    raise RuntimeError(f"totalreg serve did not answer C-ECHO within {wait_s} s:\n{node.log()[-3000:]}")


@pytest.fixture
def node_proc():
    """Factory fixture: ``node_proc(config_path, *extra_args) -> NodeProcess``; all are killed at teardown."""
    started: list[NodeProcess] = []

    def start(config_path: Path, *args: str, wait_s: float = 60.0) -> NodeProcess:
        n = start_node(config_path, *args, wait_s=wait_s)
        started.append(n)
        return n
    yield start
    for n in started:
        n.kill()


def storescu(port: int, files: list[Path], ae_title: str = "TOTALREG", calling: str = "STORESCU",
             timeout: float = 120) -> subprocess.CompletedProcess:
    """dcmtk storescu of ``files`` to 127.0.0.1:port (one association)."""
    cmd = [dcmtk("storescu"), "-aet", calling, "-aec", ae_title, "-ta", "10", "-td", "20", "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- PostgreSQL

def _pg_reachable(url: str) -> bool:
    import sqlalchemy as sa
    from node.store.db import make_engine
    try:
        eng = make_engine(url)
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def pg_schema_url(pg_url):
    """A PostgreSQL URL bound (search_path) to a fresh schema, dropped after the test."""
    from node.store.db import make_engine
    if not _pg_reachable(pg_url):
        require(f"PostgreSQL not reachable at {pg_url}")
    schema = f"tr_test_{uuid.uuid4().hex[:10]}"
    eng = make_engine(pg_url)
    with eng.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    eng.dispose()
