"""The job queue on SQLite and on the real PostgreSQL: dedupe, claims, retry/back-off, dead, lease expiry."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from node.store import queue as jobs
from node.config import RetrySettings
from node.store.db import JOB_DEAD, JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, Database, Job, JobRun, utcnow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def qdb(request, tmp_path):
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    else:
        db = Database(request.getfixturevalue("pg_schema_url"))
    yield db
    db.dispose()


def _add(db, n=1, **kw):
    ids = []
    with db.session() as s:
        for i in range(n):
            job, created = jobs.enqueue(s, current_series_uid=f"1.2.{i}", rule_name="r", kind="sleep", **kw)
            assert created
            ids.append(job.id)
    return ids


def test_enqueue_is_deduplicated(qdb):
    with qdb.session() as s:
        a, ca = jobs.enqueue(s, current_series_uid="1.2.3", prior_series_uid="", rule_name="r")
        b, cb = jobs.enqueue(s, current_series_uid="1.2.3", prior_series_uid="", rule_name="r")
        c, cc = jobs.enqueue(s, current_series_uid="1.2.3", prior_series_uid="", rule_name="r", round=1)
        d, cd = jobs.enqueue(s, current_series_uid="1.2.3", prior_series_uid="9.9", rule_name="r")
        e, ce = jobs.enqueue(s, current_series_uid="1.2.3", prior_series_uid="", rule_name="other")
    assert (ca, cb, cc, cd, ce) == (True, False, True, True, True)
    assert a.id == b.id and len({a.id, c.id, d.id, e.id}) == 4
    with qdb.session() as s:
        assert len(s.scalars(select(Job)).all()) == 4


def test_claim_complete_and_execution_log(qdb):
    (jid,) = _add(qdb)
    with qdb.session() as s:
        c = jobs.claim(s, "w1", lease_s=60)
    assert c.job_id == jid and c.attempt == 1
    with qdb.session() as s:
        assert jobs.claim(s, "w2", lease_s=60) is None  # nothing else to run
    with qdb.session() as s:
        jobs.complete(s, c, outcome="registered", reason="ok", timings={"total": 1.5})
    with qdb.session() as s:
        job = s.get(Job, jid)
        assert (job.state, job.outcome, job.timings["total"], job.lease_token) == (JOB_DONE, "registered", 1.5, "")
        runs = s.scalars(select(JobRun).where(JobRun.job_id == jid)).all()
        assert [(r.worker, r.result) for r in runs] == [("w1", "done")]
    with qdb.session() as s, pytest.raises(jobs.LeaseLost):
        jobs.complete(s, c)  # a job completes exactly once


def test_retry_with_backoff_then_dead(qdb):
    (jid,) = _add(qdb, max_attempts=3)
    retry = RetrySettings(max_attempts=3, backoff_s=10.0, backoff_factor=2.0)
    t = utcnow()
    for attempt, expect_delay in ((1, 10.0), (2, 20.0)):
        with qdb.session() as s:
            c = jobs.claim(s, "w", lease_s=60, now=t)
        assert c.attempt == attempt
        with qdb.session() as s:
            job = jobs.fail(s, c, "PACS unreachable", retryable=True, backoff=retry)
            assert job.state == JOB_QUEUED
            delay = (job.not_before - utcnow()).total_seconds()
            assert expect_delay - 2 < delay <= expect_delay + 0.5
        with qdb.session() as s:
            assert jobs.claim(s, "w", lease_s=60) is None  # backing off
        t = utcnow() + dt.timedelta(seconds=expect_delay + 1)
    with qdb.session() as s:
        c = jobs.claim(s, "w", lease_s=60, now=t)
    with qdb.session() as s:
        job = jobs.fail(s, c, "PACS unreachable", retryable=True, backoff=retry)
        assert job.state == JOB_DEAD and job.attempts == 3 and job.error == "PACS unreachable"
    with qdb.session() as s:
        results = [r.result for r in s.scalars(select(JobRun).where(JobRun.job_id == jid).order_by(JobRun.id))]
        assert results == ["retry", "retry", "dead"]
    # the console puts it back with fresh attempts
    with qdb.session() as s:
        jobs.retry(s, jid, by="tester")
    with qdb.session() as s:
        assert (s.get(Job, jid).state, s.get(Job, jid).attempts) == (JOB_QUEUED, 0)


def test_permanent_error_fails_at_once_and_cancel(qdb):
    a, b = _add(qdb, n=2)
    with qdb.session() as s:
        c = jobs.claim(s, "w", lease_s=60)
    with qdb.session() as s:
        jobs.fail(s, c, "prior series 1.2: slice missing", retryable=False)
    with qdb.session() as s:
        job = s.get(Job, c.job_id)
        assert (job.state, job.attempts, job.error) == (JOB_FAILED, 1, "prior series 1.2: slice missing")
        other = b if c.job_id == a else a
        jobs.cancel(s, other, by="tester")
    with qdb.session() as s:
        assert s.get(Job, other).state == JOB_FAILED and "cancelled" in s.get(Job, other).error
        assert jobs.claim(s, "w", lease_s=60) is None


def test_lease_expiry_requeues_and_old_owner_cannot_complete(qdb):
    (jid,) = _add(qdb)
    with qdb.session() as s:
        old = jobs.claim(s, "dying", lease_s=5)
    with qdb.session() as s:
        assert jobs.heartbeat(s, old, lease_s=5)
        assert jobs.requeue_expired(s) == []  # lease still valid
    with qdb.session() as s:
        assert jobs.requeue_expired(s, now=utcnow() + dt.timedelta(seconds=10)) == [jid]
    with qdb.session() as s:
        job = s.get(Job, jid)
        assert job.state == JOB_QUEUED and "stopped renewing its lease" in job.error
        assert not jobs.heartbeat(s, old, lease_s=5)
    with qdb.session() as s:
        new = jobs.claim(s, "healthy", lease_s=60)
    assert new.job_id == jid and new.attempt == 2
    with qdb.session() as s, pytest.raises(jobs.LeaseLost):
        jobs.complete(s, old)
    with qdb.session() as s:
        jobs.complete(s, new)
    with qdb.session() as s:
        runs = s.scalars(select(JobRun).where(JobRun.job_id == jid).order_by(JobRun.id)).all()
        assert [(r.worker, r.result) for r in runs] == [("dying", "lost"), ("healthy", "done")]


def test_lease_expiry_on_last_attempt_is_dead(qdb):
    (jid,) = _add(qdb, max_attempts=1)
    with qdb.session() as s:
        jobs.claim(s, "w", lease_s=1)
    with qdb.session() as s:
        jobs.requeue_expired(s, now=utcnow() + dt.timedelta(seconds=5))
    with qdb.session() as s:
        assert s.get(Job, jid).state == JOB_DEAD


def test_concurrent_claims_never_share_a_job(qdb):
    ids = _add(qdb, n=20)
    got: dict[str, list[int]] = {}
    errors = []

    def work(name):
        mine = got.setdefault(name, [])
        try:
            while True:
                with qdb.session() as s:
                    c = jobs.claim(s, name, lease_s=60)
                if c is None:
                    return
                mine.append(c.job_id)
                with qdb.session() as s:
                    jobs.complete(s, c)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    claimed = [j for v in got.values() for j in v]
    assert sorted(claimed) == sorted(ids)  # each job exactly once
    with qdb.session() as s:
        assert {j.state for j in s.scalars(select(Job))} == {JOB_DONE}
        assert jobs.counts_by_state(s) == {JOB_DONE: 20}
        assert not s.scalars(select(Job).where(Job.state == JOB_RUNNING)).all()


def test_stopping_process_gives_its_jobs_back(qdb):
    a, b = _add(qdb, n=2)
    with qdb.session() as s:
        mine = jobs.claim(s, "host:123:w0", lease_s=600)
    with qdb.session() as s:
        other = jobs.claim(s, "host:456:w0", lease_s=600)
    with qdb.session() as s:
        assert jobs.release_owned(s, "host:123:") == [mine.job_id]
    with qdb.session() as s:
        assert s.get(Job, mine.job_id).state == JOB_QUEUED
        assert s.get(Job, other.job_id).state == JOB_RUNNING
        assert s.scalar(select(JobRun.result).where(JobRun.lease_token == mine.token)) == "lost"
