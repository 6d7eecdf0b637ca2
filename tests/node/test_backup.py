"""Backup and restore (node.ops.backup, `totalreg backup` / `totalreg restore`): a node with a job and its files is
backed up while its database is open, restored into another data_dir, and the job, its send, its study and all
their files are found there with the paths rewritten; index and disk agree."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import make_series, write_node_config

from node.cli import main
from node.ops.backup import BackupError, backup, restore
from node.receive.ingest import STATUS_OK, ingest
from node.retention.check import check
from node.service import make_spool
from node.store.db import Event, Instance, Job, Send, Study, add_event, open_database


def _config(tmp: Path, **sections):
    tmp.mkdir(parents=True, exist_ok=True)
    return write_node_config(tmp, **sections)


def _node_with_a_job(tmp: Path):
    cfg, path = _config(tmp)
    db = open_database(cfg)
    spool = make_spool(cfg)
    files = make_series(tmp / "src", patient_id="BK1", n_slices=4)
    for f in files:
        assert ingest(db, spool, f.read_bytes(), calling_ae="TEST")[0] == STATUS_OK
    with db.session() as s:
        st = s.scalar(select(Study))
        job = Job(study_uid=st.study_uid, current_series_uid=st.series[0].series_uid, rule_name="r", state="done",
                  outcome="registered")
        s.add(job)
        s.flush()
        rd = Path(cfg.node.data_dir).resolve() / "results" / str(job.id)
        make_series(rd / "dicom", patient_id="BK1", n_slices=2, size=8, prefix="REG")
        (rd / "qc.png").write_bytes(b"\x89PNG fake")
        job.result_dir, job.qc_png = str(rd), str(rd / "qc.png")
        s.add(Send(job_id=job.id, destination="local", state="queued", n_files=2))
        add_event(s, "job made by the backup test", kind="job", job_id=job.id)
        study_uid, job_id = st.study_uid, job.id
    return cfg, path, db, study_uid, job_id


def test_backup_of_a_running_node_restores_elsewhere_with_its_job_and_files(tmp_path):
    src = tmp_path / "a"
    cfg, _, db, study_uid, job_id = _node_with_a_job(src)
    # the database stays open (a running node): sqlite3's online backup copies a consistent state
    m = backup(cfg, tmp_path / "bk")
    assert m["database"] == "sqlite" and m["missing"] == []
    assert m["counts"]["jobs"] == 1 and m["counts"]["instances"] == 4
    assert m["files"] == 4 + 2 + 1  # 4 instances, 2 result objects, the QC picture
    with pytest.raises(BackupError):
        backup(cfg, tmp_path / "bk")  # never into a folder that holds something

    dst = tmp_path / "b"
    cfg2, path2 = _config(dst)
    assert main(["restore", str(tmp_path / "bk"), "--config", str(path2)]) == 0
    db2 = open_database(cfg2)
    new_root = Path(cfg2.node.data_dir).resolve()
    with db2.session() as s:
        job = s.get(Job, job_id)
        assert job.study_uid == study_uid and job.state == "done"
        assert Path(job.result_dir) == new_root / "results" / str(job_id)
        assert sorted(p.name for p in (Path(job.result_dir) / "dicom").glob("*.dcm")) and Path(job.qc_png).is_file()
        assert len(list((Path(job.result_dir) / "dicom").glob("*.dcm"))) == 2
        assert s.scalar(select(Send).where(Send.job_id == job_id)).state == "queued"
        paths = [Path(p) for p in s.scalars(select(Instance.path))]
        assert len(paths) == 4 and all(p.is_file() and new_root / "spool" in p.parents for p in paths)
        assert s.scalar(select(Event).where(Event.job_id == job_id)).message == "job made by the backup test"
    assert check(db2, cfg2).ok
    # restoring again over data is refused
    with pytest.raises(BackupError):
        restore(cfg2, tmp_path / "bk")
    db.dispose()
    db2.dispose()


def test_backup_and_restore_on_postgresql(tmp_path, pg_schema_url):
    """pg_dump of the node's schema; the database is lost (schema dropped) and restored with pg_restore for a node
    with another data_dir."""
    import shutil
    if not shutil.which("pg_dump"):
        pytest.skip("pg_dump not installed")
    cfg, _ = _config(tmp_path / "a", node={"database": pg_schema_url})
    db = open_database(cfg)
    spool = make_spool(cfg)
    for f in make_series(tmp_path / "src", patient_id="BKPG", n_slices=3):
        assert ingest(db, spool, f.read_bytes(), calling_ae="TEST")[0] == STATUS_OK
    with db.session() as s:
        study_uid = s.scalar(select(Study.study_uid))
        s.add(Job(study_uid=study_uid, rule_name="r", state="done"))
    m = backup(cfg, tmp_path / "bk")
    assert m["database"] == "postgresql" and (tmp_path / "bk" / "node.pgdump").stat().st_size > 0
    assert m["files"] == 3 and m["counts"]["jobs"] == 1
    schema = pg_schema_url.rsplit("%3D", 1)[1]
    with db.engine.begin() as c:  # the database is lost
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    db.dispose()
    cfg2, _ = _config(tmp_path / "b", node={"database": pg_schema_url})
    assert restore(cfg2, tmp_path / "bk")["rewritten"] == 3
    db2 = open_database(cfg2)
    with db2.session() as s:
        assert s.scalar(select(Job)).study_uid == study_uid
    assert check(db2, cfg2).ok
    db2.dispose()
