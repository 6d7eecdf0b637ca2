"""The worker pipeline and the dispatcher, in-process on SQLite with real dicom_io / registration_core / senders."""
from __future__ import annotations

import datetime as dt

import pytest
from pydicom import dcmread
from sqlalchemy import select

from conftest import make_series
from node.store import queue as jobs
from node.route.assembly import Assembler
from node.store.db import (JOB_DEAD, JOB_DONE, JOB_FAILED, SEND_DEAD, SEND_DONE, SEND_QUEUED, Database, Event, Job,
                     JobRun, Send, utcnow)
from node.dispatch.dispatcher import Dispatcher, job_delivery, resend
from node.store.queries import result_files
from node.work.worker import Worker
from node.receive.ingest import STATUS_OK, ingest
from node.service import make_spool
from tools import free_port

CUR_DATE, PRIOR_DATE = "20240310", "20230105"


def _ingest(cfg, db, files):
    spool = make_spool(cfg)
    for f in files:
        status, msg = ingest(db, spool, f.read_bytes(), calling_ae="MODALITY")
        assert status == STATUS_OK, msg


def _route(cfg, db):
    return Assembler(cfg, db).tick(now=utcnow() + dt.timedelta(seconds=5))



@pytest.fixture
def pair(node_config, tmp_path):
    """A node config + database holding a current and a prior study of the same patient (small volumes)."""
    cfg, _ = node_config(rules=[{"name": "ct-followup", "send_to": ["local"],
                                 "registration": {"device": "cpu", "iterations": 3}}])
    db = Database(cfg.node.database_url())
    yield cfg, db
    db.dispose()


def _series(tmp_path, name, study_uid, date, **kw):
    kw.setdefault("n_slices", 10)
    kw.setdefault("size", 24)
    return make_series(tmp_path / name, study_uid=study_uid, study_date=date, **kw)


def test_full_pipeline_registers_writes_and_delivers(pair, tmp_path):
    cfg, db = pair
    cur = _series(tmp_path, "cur", "1.2.826.0.1.3680043.77.1", CUR_DATE, seed=0)
    prior = _series(tmp_path, "prior", "1.2.826.0.1.3680043.77.2", PRIOR_DATE, seed=1)
    _ingest(cfg, db, prior + cur)
    ids = _route(cfg, db)
    assert len(ids) == 2  # one per study (the prior has no prior of its own)
    worker = Worker(cfg, db, make_spool(cfg), name="test-worker")
    while worker.run_once() is not None:
        pass
    with db.session() as s:
        by_study = {j.study_uid: j for j in s.scalars(select(Job))}
    old = by_study["1.2.826.0.1.3680043.77.2"]
    assert (old.state, old.outcome) == (JOB_DONE, "no_prior") and "earlier" in old.outcome_reason
    job = by_study["1.2.826.0.1.3680043.77.1"]
    assert (job.state, job.outcome) == (JOB_DONE, "registered"), job.error
    assert job.prior_study_uid == "1.2.826.0.1.3680043.77.2" and job.prior_series_uid
    assert {"load", "prior", "read", "register", "write", "total"} <= set(job.timings)
    assert job.qc["folding_percent"] is not None and "similarity_after" in job.qc
    files = result_files(job)
    mods = sorted(str(dcmread(f, stop_before_pixels=True).Modality) for f in files)
    assert mods.count("REG") == 2 and mods.count("CT") == len(cur)
    for f in files:  # every object goes into the CURRENT study
        assert dcmread(f, stop_before_pixels=True).StudyInstanceUID == "1.2.826.0.1.3680043.77.1"
    with db.session() as s:
        sends = s.scalars(select(Send).where(Send.job_id == job.id)).all()
        assert [(x.destination, x.state, x.n_files) for x in sends] == [("local", SEND_QUEUED, len(files))]
    disp = Dispatcher(cfg, db, owner="test-dispatcher")
    assert disp.run_once() == SEND_DONE
    assert disp.run_once() is None
    out = list((tmp_path / "out").rglob("*.dcm"))
    assert len(out) == len(files)
    with db.session() as s:
        assert job_delivery(s, job.id) == "delivered"
        assert s.scalars(select(Send)).one().n_acknowledged == len(files)


def test_no_prior_is_a_plain_outcome(pair, tmp_path):
    cfg, db = pair
    _ingest(cfg, db, _series(tmp_path, "cur", "1.2.826.0.1.3680043.78.1", CUR_DATE, n_slices=3, size=8))
    (jid,) = _route(cfg, db)
    assert Worker(cfg, db, make_spool(cfg)).run_once() == "done"
    with db.session() as s:
        job = s.get(Job, jid)
        assert job.outcome == "no_prior" and "no PACS is configured" in job.outcome_reason
        assert not s.scalars(select(Send)).all()


def test_two_patients_are_never_paired(pair, tmp_path, caplog):
    caplog.set_level("INFO")
    cfg, db = pair
    _ingest(cfg, db, _series(tmp_path, "prior", "1.2.826.0.1.3680043.79.2", PRIOR_DATE, n_slices=3, size=8,
                             patient_name="Other^Person"))
    _ingest(cfg, db, _series(tmp_path, "cur", "1.2.826.0.1.3680043.79.1", CUR_DATE, n_slices=3, size=8))
    ids = _route(cfg, db)
    w = Worker(cfg, db, make_spool(cfg))
    while w.run_once() is not None:
        pass
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.study_uid == "1.2.826.0.1.3680043.79.1"))
        assert job.state == JOB_FAILED and job.attempts == 1, job.error
        assert "PatientName" in job.error and not job.result_dir
        assert len(ids) == 2
    assert "job %d attempt 1 failed" % job.id in caplog.text
    assert "NODE0001" not in caplog.text and "Test^Patient" not in caplog.text  # no PHI in the logs


def test_broken_prior_series_fails_with_a_plain_reason(pair, tmp_path):
    cfg, db = pair
    prior = _series(tmp_path, "prior", "1.2.826.0.1.3680043.80.2", PRIOR_DATE, n_slices=6, size=8)
    _ingest(cfg, db, prior[:2] + prior[3:])  # slice 3 never arrived
    _ingest(cfg, db, _series(tmp_path, "cur", "1.2.826.0.1.3680043.80.1", CUR_DATE, n_slices=6, size=8))
    _route(cfg, db)
    w = Worker(cfg, db, make_spool(cfg))
    while w.run_once() is not None:
        pass
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.study_uid == "1.2.826.0.1.3680043.80.1"))
        assert job.state == JOB_FAILED, (job.state, job.outcome, job.error)
        prior_series = str(dcmread(prior[0], stop_before_pixels=True).SeriesInstanceUID)
        assert job.error.startswith(f"prior series {prior_series}: slice missing between"), job.error
        assert any(e.level == "ERROR" and e.job_id == job.id for e in s.scalars(select(Event)))


def test_transient_failures_retry_then_dead(pair):
    cfg, db = pair
    with db.session() as s:
        job, _ = jobs.enqueue(s, kind="sleep", current_series_uid="9.9", rule_name="t",
                              params={"seconds": 0, "fail": "PACS unreachable", "retryable": True}, max_attempts=2)
    w = Worker(cfg, db, make_spool(cfg))
    assert w.run_once() == "queued"  # back-off (0.2 s in the test config)
    with db.session() as s:
        assert s.get(Job, job.id).not_before > utcnow()
    deadline = utcnow() + dt.timedelta(seconds=10)
    state = None
    while state != JOB_DEAD and utcnow() < deadline:
        state = w.run_once()
    with db.session() as s:
        j = s.get(Job, job.id)
        assert (j.state, j.attempts, j.error) == (JOB_DEAD, 2, "PACS unreachable")
        assert [r.result for r in s.scalars(select(JobRun).order_by(JobRun.id))] == ["retry", "dead"]


def test_dispatcher_backoff_dead_and_resend(node_config, tmp_path):
    port = free_port()  # nothing listens there
    cfg, _ = node_config(destinations=[{"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                        "port": port}],
                         rules=[{"name": "r", "send_to": ["pacs"]}],
                         send_retry={"max_attempts": 2, "backoff_s": 0.1})
    db = Database(cfg.node.database_url())
    result = tmp_path / "res"
    files = make_series(result / "dicom", n_slices=2, size=8)
    with db.session() as s:
        job, _ = jobs.enqueue(s, kind="sleep", current_series_uid="1.1", rule_name="r")
        job.state, job.outcome, job.result_dir = JOB_DONE, "registered", str(result)
        s.add(Send(job_id=job.id, destination="pacs", n_files=len(files), max_attempts=2))
    disp = Dispatcher(cfg, db, owner="d")
    assert disp.run_once() == SEND_QUEUED
    with db.session() as s:
        snd = s.scalars(select(Send)).one()
        assert snd.attempts == 1 and "pacs" in snd.error and snd.not_before > utcnow()
    deadline = utcnow() + dt.timedelta(seconds=10)
    state = None
    while state != SEND_DEAD and utcnow() < deadline:
        state = disp.run_once()
    with db.session() as s:
        snd = s.scalars(select(Send)).one()
        assert (snd.state, snd.attempts) == (SEND_DEAD, 2)
        assert job_delivery(s, job.id) == "dead"
        assert resend(s, job.id, by="tester") == [snd.id]
    with db.session() as s:
        snd = s.scalars(select(Send)).one()
        assert (snd.state, snd.attempts, snd.error) == (SEND_QUEUED, 0, "")
    db.dispose()
