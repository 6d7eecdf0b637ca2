"""The DICOM listener: storescu → spool + index, duplicates, malformed data, allow-list, disk full, TLS-free path."""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage as CTCtx, Verification
from sqlalchemy import func, select

from conftest import echo_ok, make_series, storescu
from node.store.db import Database, Instance, Series, Study
from node.receive.receiver import Receiver
from node.service import make_spool
from node.receive.spool import Spool


@pytest.fixture
def receiver(node_config):
    """An in-process receiver on a free port (SQLite + spool under tmp)."""
    made = []

    def start(**sections):
        cfg, _ = node_config(**sections)
        db = Database(cfg.node.database_url())
        rcv = Receiver(cfg, db, make_spool(cfg))
        rcv.start()
        made.append((rcv, db))
        return cfg, db, rcv
    yield start
    for rcv, db in made:
        rcv.stop()
        db.dispose()


def _scu_store(port: int, datasets_or_paths, calling: str = "TESTSCU") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTCtx, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG")
    assert assoc.is_established
    out = []
    try:
        for item in datasets_or_paths:
            st = assoc.send_c_store(item)
            out.append(int(st.Status) if st else -1)
        echo = assoc.send_c_echo()
        assert echo.Status == 0  # the association goes on after a failure
    finally:
        assoc.release()
    return out


def test_storescu_series_is_spooled_and_indexed(receiver, tmp_path):
    cfg, db, rcv = receiver()
    files = make_series(tmp_path / "in", n_slices=5)
    proc = storescu(cfg.node.port, files)
    assert proc.returncode == 0, proc.stderr
    with db.session() as s:
        rows = s.scalars(select(Instance)).all()
        study = s.scalar(select(Study))
        series = s.scalar(select(Series))
        assert len(rows) == 5 and study.n_instances == 5 and series.n_instances == 5
        assert {r.calling_ae for r in rows} == {"STORESCU"}
        assert all(r.transfer_syntax and r.size_bytes > 0 and len(r.sha256) == 64 for r in rows)
        paths = [Path(r.path) for r in rows]
    spool_root = Path(cfg.node.data_dir) / "spool"
    for src in files:
        a = dcmread(src)
        stored = [p for p in paths if p.name == f"{a.SOPInstanceUID}.dcm"]
        assert len(stored) == 1
        b = dcmread(stored[0])
        assert b.PixelData == a.PixelData and b.StudyInstanceUID == a.StudyInstanceUID
        assert stat.S_IMODE(os.stat(stored[0]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(stored[0].parent).st_mode) == 0o700
        assert stored[0].is_relative_to(spool_root)
    assert not list(spool_root.rglob("*.part"))
    assert rcv.stored == 5


def test_duplicates_are_idempotent_and_resend_with_new_content_replaces(receiver, tmp_path):
    cfg, db, rcv = receiver()
    files = make_series(tmp_path / "in", n_slices=3)
    assert storescu(cfg.node.port, files).returncode == 0
    assert storescu(cfg.node.port, files).returncode == 0  # identical re-send
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 3
        assert s.scalar(select(Study.n_instances)) == 3
        assert {v for (v,) in s.execute(select(Instance.versions))} == {1}
    # same SOP instance, different bytes: the newer copy replaces the old one atomically
    ds = dcmread(files[0])
    ds.SeriesDescription = "corrected"
    ds.save_as(tmp_path / "corrected.dcm", enforce_file_format=True)
    assert _scu_store(cfg.node.port, [tmp_path / "corrected.dcm"]) == [0]
    with db.session() as s:
        inst = s.scalar(select(Instance).where(Instance.sop_instance_uid == str(ds.SOPInstanceUID)))
        assert inst.versions == 2
        assert dcmread(inst.path).SeriesDescription == "corrected"
        assert s.scalar(select(func.count()).select_from(Instance)) == 3


def _ct_without(tmp_path: Path, drop: str) -> Dataset:
    ds = dcmread(make_series(tmp_path / f"m-{drop}", n_slices=1)[0])
    del ds[drop]
    return ds


def test_malformed_datasets_are_refused_and_node_goes_on(receiver, tmp_path, monkeypatch):
    from pynetdicom import _config
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send file bytes as they are
    cfg, db, rcv = receiver()
    no_study = _ct_without(tmp_path, "StudyInstanceUID")
    # a file whose meta is valid but whose dataset bytes are garbage (a sequence whose item tag is not an item)
    good = make_series(tmp_path / "g", n_slices=1)[0]
    meta_ds = dcmread(good)
    bad = tmp_path / "garbage.dcm"
    raw = good.read_bytes()
    start = raw.index(b"\x08\x00\x05\x00")  # first dataset element (SpecificCharacterSet)
    bad.write_bytes(raw[:start] + b"\x08\x00\x15\x11SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
                    + b"\x12\x34\x56\x78" + b"\x00" * 8)
    statuses = _scu_store(cfg.node.port, [no_study, bad, meta_ds])
    assert statuses[0] == 0xC212
    assert statuses[1] == 0xC210
    assert statuses[2] == 0x0000
    assert echo_ok(cfg.node.port)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 1


def test_allow_list_rejects_unknown_caller(receiver, tmp_path):
    cfg, db, rcv = receiver(node={"allowed_callers": ["GOODAE"]})
    files = make_series(tmp_path / "in", n_slices=2)
    bad = storescu(cfg.node.port, files, calling="BADAE")
    assert bad.returncode != 0
    assert echo_ok(cfg.node.port, calling="GOODAE")
    assert not echo_ok(cfg.node.port, calling="BADAE")
    good = storescu(cfg.node.port, files, calling="GOODAE")
    assert good.returncode == 0, good.stderr
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2


def test_disk_below_minimum_answers_out_of_resources_then_recovers(receiver, tmp_path):
    cfg, db, rcv = receiver()
    files = make_series(tmp_path / "in", n_slices=2)
    rcv.spool.min_free_mb = rcv.spool.free_mb() + 10_000  # the threshold is above the free space
    assert _scu_store(cfg.node.port, files) == [0xA700, 0xA700]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert not list((Path(cfg.node.data_dir) / "spool").rglob("*.dcm"))
    rcv.spool.min_free_mb = 1  # space is back
    assert _scu_store(cfg.node.port, files) == [0, 0]


def test_spool_write_is_durable_and_atomic(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    p = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    spool.write(p, b"abc")
    assert p.read_bytes() == b"abc"
    assert any(s.endswith(".part") for s in synced)  # the file before the rename
    assert str(p.parent) in synced  # the folder after the rename
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    # hostile UIDs cannot steer paths
    q = spool.path_for("../../etc", "x/y", "1.2")
    assert q.resolve().is_relative_to(spool.root) and ".." not in q.parts


def test_dicom_tls_listener(receiver, tmp_path):
    import ssl
    import subprocess
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    cfg, db, rcv = receiver(node={"tls": {"cert_file": str(cert), "key_file": str(key)}})
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ctx.check_hostname = False
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(CTCtx)
    ae.acse_timeout = ae.network_timeout = 5
    files = make_series(tmp_path / "in", n_slices=1)
    assoc = ae.associate("127.0.0.1", cfg.node.port, ae_title="TOTALREG", tls_args=(ctx, None))
    assert assoc.is_established
    assert assoc.send_c_store(dcmread(files[0])).Status == 0
    assoc.release()
    assert not echo_ok(cfg.node.port, timeout=3)  # plain TCP is not accepted
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 1


@pytest.mark.slow
def test_real_disk_full_answers_out_of_resources_and_recovers(receiver, tmp_path):
    """The spool on a 1 MiB tmpfs (needs root to mount): ENOSPC → 0xA700, nothing half-written, then recovery."""
    import subprocess
    spool_dir = tmp_path / "var" / "spool"
    spool_dir.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool_dir)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cfg, db, rcv = receiver(node={"min_free_disk_mb": 0})
        files = make_series(tmp_path / "in", n_slices=40, size=128)  # ~32 KiB each, 1.3 MiB in all
        statuses = _scu_store(cfg.node.port, files)
        assert statuses[0] == 0 and statuses[-1] == 0xA700 and set(statuses) == {0, 0xA700}
        ok = [f for f, st in zip(files, statuses) if st == 0]
        refused = [f for f, st in zip(files, statuses) if st != 0]
        assert not list(spool_dir.rglob("*.part"))
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == len(ok)
        subprocess.run(["mount", "-o", "remount,size=8m", str(spool_dir)], check=True)  # space is back
        assert _scu_store(cfg.node.port, refused) == [0] * len(refused)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == len(files)
    finally:
        subprocess.run(["umount", "-l", str(spool_dir)], capture_output=True)


def test_startup_indexes_spool_files_whose_rows_were_lost(receiver, tmp_path):
    """The index writer commits without a WAL fsync (the spool file is fsynced before the acknowledgement): after
    a power loss the newest rows can be gone. Start-up recovery indexes those files again and removes a file that
    was cut short (never acknowledged)."""
    from node.receive.ingest import reindex_spool
    cfg, db, rcv = receiver()
    files = make_series(tmp_path / "in", n_slices=3)
    assert _scu_store(cfg.node.port, files) == [0, 0, 0]
    rcv.stop()
    db.dispose()
    db_path = Path(cfg.node.database_url().split("///", 1)[1])
    for p in db_path.parent.glob(db_path.name + "*"):  # every row lost
        p.unlink()
    spooled = sorted((Path(cfg.node.data_dir) / "spool").rglob("*.dcm"))
    assert len(spooled) == 3
    cut, header_only = spooled[0], spooled[1].with_name("1.2.3.4.5.dcm")
    header_only.write_bytes(spooled[1].read_bytes()[:300])
    cut.write_bytes(cut.read_bytes()[:-1000])  # renamed, then the crash came before its fsync
    fresh = Database(cfg.node.database_url())
    try:
        assert reindex_spool(fresh, make_spool(cfg)) == 2
        assert not cut.exists() and not header_only.exists()
        with fresh.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 2
            (study,) = s.scalars(select(Study)).all()
            assert study.n_instances == 2 and study.state == "receiving"
        assert reindex_spool(fresh, make_spool(cfg)) == 0  # idempotent
    finally:
        fresh.dispose()
