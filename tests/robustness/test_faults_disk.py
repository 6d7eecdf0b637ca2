"""Spool disk full: the listener answers C-STORE with out-of-resources (0xA7xx), leaves nothing half-written, keeps
answering C-ECHO, and accepts again once space returns.

The spool lives on a real, small tmpfs (``mount -t tmpfs -o size=...``, root only) so the kernel's ENOSPC is what
the node meets; where mounting is not permitted the test falls back to the configured threshold
(``node.min_free_disk_mb`` above the free space), which the node treats the same way.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from .conftest import nodefx
from .support import send_all, write_figures

TMPFS_KB = 384  # about 40 instances of 64 x 64 pixels
RECOVERY_S = 15.0  # space returned -> instances accepted again


def _mount_tmpfs(where: Path, size_kb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, text=True)


@pytest.fixture
def small_spool(tmp_path):
    """(spool folder, mounted?) — a tmpfs of TMPFS_KB when mounting works here."""
    spool = tmp_path / "var" / "spool"
    mounted = _mount_tmpfs(spool, TMPFS_KB)
    yield spool, mounted
    if mounted:
        _umount(spool)


def test_spool_disk_full_answers_out_of_resources_and_recovers(small_spool, tmp_path):
    from node.store.db import Database, Instance
    from node.receive.receiver import Receiver
    from node.service import make_spool
    spool_dir, mounted = small_spool
    cfg, _ = nodefx.write_node_config(tmp_path, node={"min_free_disk_mb": 0})
    db = Database(cfg.node.database_url())  # the database stays on the ordinary disk
    rcv = Receiver(cfg, db, make_spool(cfg))
    assert rcv.spool.root == spool_dir.resolve()
    rcv.start()
    try:
        files = nodefx.make_series(tmp_path / "in", n_slices=80, size=64)
        if not mounted:  # fallback: the configured threshold is above the free space
            rcv.spool.min_free_mb = rcv.spool.free_mb() + 10_000
        statuses = send_all(cfg.node.port, files)
        ok = [s for s in statuses if s == 0]
        refused = [s for s in statuses if s != 0]
        assert refused, "the spool never filled up"
        assert all(0xA700 <= s <= 0xA7FF for s in refused), [hex(s) for s in set(refused)]
        # once full, every later instance is refused too (no 'success' after a refusal on the full disk)
        first_refusal = statuses.index(refused[0])
        assert all(s != 0 for s in statuses[first_refusal:])
        assert nodefx.echo_ok(cfg.node.port)  # the node goes on serving
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == len(ok)
        stored = list(spool_dir.rglob("*.dcm"))
        assert len(stored) == len(ok)
        assert not list(spool_dir.rglob("*.part")), "half-written files left on the full disk"

        # space returns
        if mounted:
            r = subprocess.run(["mount", "-o", "remount,size=16m", str(spool_dir)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        else:
            rcv.spool.min_free_mb = 0
        # the modality re-sends the study until it is accepted (the node may re-measure free space only every
        # few seconds); it must be accepted well within RECOVERY_S
        t_back = time.monotonic()
        while True:
            again = send_all(cfg.node.port, files)
            if again == [0] * len(files) or time.monotonic() - t_back > RECOVERY_S:
                break
            time.sleep(0.5)
        recovery_s = time.monotonic() - t_back
        assert again == [0] * len(files), [hex(x) for x in sorted(set(again))]
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == len(files)
        assert len(list(spool_dir.rglob("*.dcm"))) == len(files)
        write_figures("disk_full", {"tmpfs_kb": TMPFS_KB if mounted else None, "mounted_tmpfs": mounted,
                                    "sent": len(files), "accepted_while_filling": len(ok),
                                    "refused": len(refused), "refusal_statuses": sorted({hex(s) for s in refused}),
                                    "accepted_after_space_returned": again.count(0),
                                    "recovery_s": round(recovery_s, 2)})
    finally:
        rcv.stop()
        db.dispose()
