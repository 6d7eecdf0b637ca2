"""The persistent job queue (table ``jobs`` in :mod:`node.store.db`): enqueue, claim with a lease, heartbeat, finish.

Life of a job::

    queued --claim--> running --complete--> done (outcome registered | no_prior | skipped)
       ^                 |  \\--fail(permanent)--> failed     (a retry cannot help: bad input, two patients ...)
       |                 |   \\-fail(transient)--> queued with not_before = now + back-off, or dead when
       |                 |                         attempts == max_attempts
       +--lease expired--+   (worker died: re-queued by requeue_expired; dead when attempts are used up)

Guarantees:

* De-duplication: (current_series_uid, prior_series_uid, rule_name, round) is unique; :func:`enqueue` of an
  existing key returns the existing job.
* No job runs twice concurrently: a claim is a conditional update of a ``queued`` row (PostgreSQL:
  ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: inside a ``BEGIN IMMEDIATE`` transaction) that sets a fresh
  ``lease_token``.
* A job completes exactly once: :func:`complete` / :func:`fail` only change the row while the caller's lease token
  is still the job's token and the job is ``running``.  The work's own DB side effects go in the same transaction
  (the ``session`` passed in), so a worker that lost its lease (it was presumed dead) cannot commit anything.
* Each claim is logged in ``job_runs`` (worker, token, start, end, result).

Times are naive UTC; durations in seconds.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.store.db import (JOB_DEAD, JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, Job, JobRun, add_event, utcnow)

log = logging.getLogger(__name__)


def worker_name(suffix: str = "") -> str:
    """A worker identity: host:pid[:suffix]."""
    return f"{socket.gethostname()}:{os.getpid()}" + (f":{suffix}" if suffix else "")


@dataclass
class Claim:
    """A claimed job: its id and the lease token that proves ownership."""

    job_id: int
    token: str
    worker: str
    attempt: int
    run_id: int
    kind: str = "register"
    params: dict[str, Any] = field(default_factory=dict)


class LeaseLost(RuntimeError):
    """The worker no longer owns the job (its lease expired and the job was re-queued or finished elsewhere)."""


def enqueue(session: Session, *, study_uid: str = "", current_series_uid: str = "", prior_series_uid: str = "",
            rule_name: str = "", round: int = 0, kind: str = "register", params: dict | None = None,
            max_attempts: int = 3, priority: int = 100) -> tuple[Job, bool]:
    """Add a job unless one with the same (current series, prior series, rule, round) exists.

    Returns (job, created).  Runs in the caller's transaction (a savepoint guards the unique constraint)."""
    key = dict(current_series_uid=current_series_uid, prior_series_uid=prior_series_uid, rule_name=rule_name,
               round=round)
    existing = session.scalar(select(Job).filter_by(**key))
    if existing is not None:
        return existing, False
    try:
        with session.begin_nested():
            job = Job(kind=kind, study_uid=study_uid, params=params or {}, max_attempts=max_attempts,
                      priority=priority, state=JOB_QUEUED, not_before=utcnow(), **key)
            session.add(job)
    except IntegrityError:
        return session.scalar(select(Job).filter_by(**key)), False
    session.flush()
    add_event(session, f"job {job.id} queued ({kind}, rule '{rule_name}', series {current_series_uid})",
              kind="job", study_uid=study_uid, job_id=job.id)
    return job, True


def claim(session: Session, worker: str, lease_s: float, kinds: list[str] | None = None,
          now: _dt.datetime | None = None) -> Claim | None:
    """Claim the next runnable job for ``worker`` (lease of ``lease_s`` seconds) and commit; None if none."""
    now = now or utcnow()
    q = (select(Job.id).where(Job.state == JOB_QUEUED, Job.not_before <= now)
         .order_by(Job.priority, Job.not_before, Job.id).limit(1))
    if kinds:
        q = q.where(Job.kind.in_(kinds))
    if session.bind.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    job_id = session.scalar(q)
    if job_id is None:
        session.commit()
        return None
    token = uuid.uuid4().hex
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.state == JOB_QUEUED)
        .values(state=JOB_RUNNING, lease_owner=worker, lease_token=token,
                lease_expires_at=now + _dt.timedelta(seconds=lease_s), attempts=Job.attempts + 1,
                started_at=now, finished_at=None)
        .execution_options(synchronize_session=False))
    if res.rowcount != 1:  # lost a race (cannot happen under the row lock / IMMEDIATE transaction)
        session.rollback()
        return None
    job = session.get(Job, job_id, populate_existing=True)
    run = JobRun(job_id=job_id, worker=worker, lease_token=token, attempt=job.attempts, started_at=now)
    session.add(run)
    session.flush()
    c = Claim(job_id=job_id, token=token, worker=worker, attempt=job.attempts, run_id=run.id, kind=job.kind,
              params=dict(job.params or {}))
    session.commit()
    log.info("job %d claimed by %s (attempt %d)", job_id, worker, c.attempt)
    return c


def heartbeat(session: Session, c: Claim, lease_s: float) -> bool:
    """Renew the lease; False when the worker no longer owns the job.  Commits."""
    res = session.execute(update(Job).where(Job.id == c.job_id, Job.lease_token == c.token,
                                            Job.state == JOB_RUNNING)
                          .values(lease_expires_at=utcnow() + _dt.timedelta(seconds=lease_s))
                          .execution_options(synchronize_session=False))
    session.commit()
    return res.rowcount == 1


def _own(session: Session, c: Claim) -> Job:
    """The job row locked for the owner of ``c``; raises LeaseLost otherwise."""
    q = select(Job).where(Job.id == c.job_id)
    if session.bind.dialect.name == "postgresql":
        q = q.with_for_update()
    job = session.scalar(q.execution_options(populate_existing=True))
    if job is None or job.state != JOB_RUNNING or job.lease_token != c.token:
        raise LeaseLost(f"job {c.job_id}: lease of {c.worker} was lost (the job was re-queued or finished "
                        "elsewhere); its result is discarded")
    return job


def _end_run(session: Session, c: Claim, result: str, message: str = "") -> None:
    run = session.get(JobRun, c.run_id)
    if run is not None:
        run.ended_at, run.result, run.message = utcnow(), result, message[:2000]


def complete(session: Session, c: Claim, *, outcome: str = "registered", reason: str = "",
             **fields: Any) -> Job:
    """Mark the claimed job done (in the caller's transaction, with the work's side effects; not committed).

    ``fields`` sets further Job columns (timings, qc, result_dir, prior_series_uid, ...).  Raises LeaseLost if the
    lease is no longer the caller's."""
    job = _own(session, c)
    job.state, job.outcome, job.outcome_reason = JOB_DONE, outcome, reason
    job.finished_at, job.error = utcnow(), ""
    job.lease_token, job.lease_owner, job.lease_expires_at = "", "", None
    for k, v in fields.items():
        setattr(job, k, v)
    _end_run(session, c, "done", reason)
    msg = f"job {job.id} done: {outcome}" + (f" ({reason})" if reason else "")
    add_event(session, msg, kind="job", study_uid=job.study_uid, job_id=job.id)
    return job


def fail(session: Session, c: Claim, error: str, *, retryable: bool, backoff=None, **fields: Any) -> Job:
    """Record a failed attempt (in the caller's transaction, not committed).

    ``retryable`` errors are re-queued after ``backoff.delay(attempt)`` seconds (a :class:`RetrySettings`) until
    ``max_attempts``, then the job is 'dead'; other errors make it 'failed' at once.  Raises LeaseLost."""
    job = _own(session, c)
    job.error = error
    job.lease_token, job.lease_owner, job.lease_expires_at = "", "", None
    for k, v in fields.items():
        setattr(job, k, v)
    if retryable and job.attempts < job.max_attempts:
        delay = backoff.delay(job.attempts) if backoff is not None else 0.0
        job.state, job.not_before = JOB_QUEUED, utcnow() + _dt.timedelta(seconds=delay)
        _end_run(session, c, "retry", error)
        add_event(session, f"job {job.id} attempt {job.attempts} failed, retry in {delay:.0f} s: {error}",
                  kind="job", level="WARNING", study_uid=job.study_uid, job_id=job.id)
    else:
        job.state = JOB_DEAD if retryable else JOB_FAILED
        job.finished_at = utcnow()
        _end_run(session, c, job.state, error)
        why = f" after {job.attempts} attempts" if retryable else ""
        add_event(session, f"job {job.id} {job.state}{why}: {error}", kind="job", level="ERROR",
                  study_uid=job.study_uid, job_id=job.id)
    return job


def requeue_expired(session: Session, now: _dt.datetime | None = None) -> list[int]:
    """Re-queue running jobs whose lease expired (their worker died or hung); dead if attempts are used up.

    Commits; returns the affected job ids."""
    now = now or utcnow()
    q = select(Job).where(Job.state == JOB_RUNNING, Job.lease_expires_at < now)
    if session.bind.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = []
    for job in session.scalars(q).all():
        who = job.lease_owner
        msg = f"worker {who} stopped renewing its lease during attempt {job.attempts}"
        run = session.scalar(select(JobRun).where(JobRun.job_id == job.id, JobRun.lease_token == job.lease_token))
        if run is not None:
            run.ended_at, run.result, run.message = now, "lost", msg
        job.lease_token, job.lease_owner, job.lease_expires_at = "", "", None
        job.error = msg
        if job.attempts >= job.max_attempts:
            job.state, job.finished_at = JOB_DEAD, now
            add_event(session, f"job {job.id} dead: {msg} (no attempts left)", kind="job", level="ERROR",
                      study_uid=job.study_uid, job_id=job.id)
        else:
            job.state, job.not_before = JOB_QUEUED, utcnow()
            add_event(session, f"job {job.id} re-queued: {msg}", kind="job", level="WARNING",
                      study_uid=job.study_uid, job_id=job.id)
        ids.append(job.id)
    session.commit()
    if ids:
        log.warning("re-queued jobs with expired leases: %s", ids)
    return ids


def owner_is_dead_here(owner: str) -> bool:
    """True when ``owner`` (host:pid[:x]) names a process on THIS host that no longer exists."""
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def requeue_orphans(session: Session) -> list[int]:
    """Expire at once the leases of running jobs whose worker process on this host is gone (after a crash or
    kill -9), then re-queue them like :func:`requeue_expired`.  Commits; returns the job ids."""
    now = utcnow()
    rows = session.execute(select(Job.id, Job.lease_owner).where(Job.state == JOB_RUNNING)).all()
    dead = [jid for jid, owner in rows if owner_is_dead_here(owner)]
    if dead:
        session.execute(update(Job).where(Job.id.in_(dead), Job.state == JOB_RUNNING)
                        .values(lease_expires_at=now - _dt.timedelta(seconds=1))
                        .execution_options(synchronize_session=False))
    session.commit()
    return requeue_expired(session, now) if dead else []


def release_owned(session: Session, owner_prefix: str) -> list[int]:
    """Give back the running jobs of a stopping process (lease owners starting with ``owner_prefix``, e.g.
    'host:pid:'): they are re-queued at once instead of waiting for their leases to expire.  Commits."""
    now = utcnow()
    res = session.execute(update(Job).where(Job.state == JOB_RUNNING, Job.lease_owner.startswith(owner_prefix))
                          .values(lease_expires_at=now - _dt.timedelta(seconds=1))
                          .execution_options(synchronize_session=False))
    session.commit()
    return requeue_expired(session, now) if res.rowcount else []


def retry(session: Session, job_id: int, *, by: str = "admin") -> Job:
    """Put a failed or dead job back in the queue with fresh attempts (console action; caller commits)."""
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(f"there is no job {job_id}")
    if job.state not in (JOB_FAILED, JOB_DEAD):
        raise ValueError(f"job {job_id} is {job.state}; only failed or dead jobs can be retried")
    was = job.state
    job.state, job.not_before, job.attempts = JOB_QUEUED, utcnow(), 0
    job.lease_owner, job.lease_token, job.lease_expires_at = "", "", None
    job.started_at = job.finished_at = None
    job.outcome = job.outcome_reason = job.error = ""
    add_event(session, f"job {job_id} put back in the queue by {by} (it was {was})", kind="job",
              study_uid=job.study_uid, job_id=job_id)
    return job


def cancel(session: Session, job_id: int, *, by: str = "admin") -> Job:
    """Cancel a queued job: it becomes 'failed' with the reason 'cancelled by <by>' (caller commits)."""
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(f"there is no job {job_id}")
    if job.state != JOB_QUEUED:
        raise ValueError(f"job {job_id} is {job.state}; only a queued job can be cancelled")
    job.state, job.finished_at, job.error = JOB_FAILED, utcnow(), f"cancelled by {by}"
    add_event(session, f"job {job_id} cancelled by {by}", kind="job", study_uid=job.study_uid, job_id=job_id)
    return job


def counts_by_state(session: Session) -> dict[str, int]:
    """Number of jobs per state."""
    return {s: n for s, n in session.execute(select(Job.state, func.count()).group_by(Job.state)).all()}
