"""The dispatcher: delivers each job's result files to each destination (table ``sends``).

One ``sends`` row per (job, destination): ``queued`` → claimed as ``sending`` (with a lease, so a crashed node's
half-done send is retried) → ``done`` when :func:`node.dispatch.senders.send` reports every instance acknowledged, or back to
``queued`` with back-off per ``send_retry`` after a failed attempt, and ``dead`` after ``send_retry.max_attempts``.
:func:`resend` puts dead (or done) sends back in the queue; the console calls it.  A job's results are delivered
only when all its sends are ``done`` (:func:`job_delivery`).
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node.dispatch import senders
from node.ops import metrics
from node.store.db import SEND_DEAD, SEND_DONE, SEND_QUEUED, SEND_SENDING, Database, Job, Send, add_event, utcnow
from node.store.queries import result_files
from node.store.queue import owner_is_dead_here

log = logging.getLogger(__name__)

SEND_LEASE_S = 900.0


def claim_send(session: Session, owner: str, now: _dt.datetime | None = None) -> int | None:
    """Claim the next due send (commits); its id or None."""
    now = now or utcnow()
    # a send whose dispatcher died mid-way is due again
    session.execute(update(Send).where(Send.state == SEND_SENDING, Send.lease_expires_at < now)
                    .values(state=SEND_QUEUED, lease_owner="", error="interrupted; retrying")
                    .execution_options(synchronize_session=False))
    q = select(Send.id).where(Send.state == SEND_QUEUED, Send.not_before <= now).order_by(Send.not_before,
                                                                                        Send.id).limit(1)
    if session.bind.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    sid = session.scalar(q)
    if sid is None:
        session.commit()
        return None
    res = session.execute(update(Send).where(Send.id == sid, Send.state == SEND_QUEUED)
                          .values(state=SEND_SENDING, lease_owner=owner, attempts=Send.attempts + 1,
                                  lease_expires_at=now + _dt.timedelta(seconds=SEND_LEASE_S))
                          .execution_options(synchronize_session=False))
    session.commit()
    return sid if res.rowcount == 1 else None


def requeue_orphan_sends(session: Session) -> int:
    """Re-queue sends left 'sending' by a dispatcher process of this host that no longer exists. Commits."""
    n = 0
    for snd in session.scalars(select(Send).where(Send.state == SEND_SENDING)).all():
        if owner_is_dead_here(snd.lease_owner):
            snd.state, snd.lease_owner, snd.lease_expires_at = SEND_QUEUED, "", None
            snd.error = "interrupted by a node restart; retrying"
            snd.not_before = utcnow()
            n += 1
    session.commit()
    return n


def attempt(cfg, db: Database, send_id: int) -> str:
    """Make one attempt of a claimed send; records the result and returns the send's new state."""
    with db.session() as s:
        snd = s.get(Send, send_id)
        job = s.get(Job, snd.job_id)
        files = result_files(job)
        dest_name, job_id, study_uid, attempts, max_attempts = (snd.destination, job.id, job.study_uid,
                                                                snd.attempts, snd.max_attempts)
    error = ""
    acked = 0
    try:
        dest = cfg.destination(dest_name)
    except KeyError:
        dest = None
        error = f"destination '{dest_name}' is not in the configuration"
    if dest is not None:
        if not files:
            error = f"job {job_id} has no result files to send"
        else:
            try:
                report = senders.send(dest, files, calling_ae=cfg.node.ae_title)
                acked = report.n_acked
            except Exception as exc:  # noqa: BLE001 - SendError and anything unexpected: plain message
                error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    with db.session() as s:
        snd = s.get(Send, send_id)
        if not error:
            snd.state, snd.n_files, snd.n_acknowledged = SEND_DONE, len(files), acked
            snd.finished_at, snd.error, snd.lease_owner, snd.lease_expires_at = utcnow(), "", "", None
            add_event(s, f"results of job {job_id} delivered to '{dest_name}' ({acked} instances acknowledged)",
                      kind="send", study_uid=study_uid, job_id=job_id, send_id=send_id)
            log.info("send %d: job %d delivered to %s (%d instances)", send_id, job_id, dest_name, acked)
        else:
            metrics.SEND_FAILURES.labels(destination=dest_name).inc()
            snd.error, snd.lease_owner, snd.lease_expires_at = error, "", None
            if attempts >= max_attempts or dest is None:
                snd.state, snd.finished_at = SEND_DEAD, utcnow()
                add_event(s, f"sending job {job_id} to '{dest_name}' gave up after {attempts} attempts: {error}",
                          kind="send", level="ERROR", study_uid=study_uid, job_id=job_id, send_id=send_id)
            else:
                delay = cfg.send_retry.delay(attempts)
                snd.state, snd.not_before = SEND_QUEUED, utcnow() + _dt.timedelta(seconds=delay)
                add_event(s, f"sending job {job_id} to '{dest_name}' failed (attempt {attempts}), retry in "
                          f"{delay:.0f} s: {error}", kind="send", level="WARNING", study_uid=study_uid,
                          job_id=job_id, send_id=send_id)
            log.warning("send %d (job %d → %s) attempt %d failed: %s", send_id, job_id, dest_name, attempts, error)
        return snd.state


def resend(session: Session, job_id: int | None = None, *, send_id: int | None = None,
           destination: str | None = None, by: str = "admin") -> list[int]:
    """Queue sends again (fresh attempts): one send, or every send of a job (optionally one destination).

    Runs in the caller's transaction (the caller commits); returns the send ids re-queued."""
    q = select(Send)
    if send_id is not None:
        q = q.where(Send.id == send_id)
    elif job_id is not None:
        q = q.where(Send.job_id == job_id)
        if destination:
            q = q.where(Send.destination == destination)
    else:
        raise ValueError("resend needs a job id or a send id")
    out = []
    for snd in session.scalars(q).all():
        if snd.state == SEND_SENDING:
            continue
        snd.state, snd.attempts, snd.not_before, snd.error = SEND_QUEUED, 0, utcnow(), ""
        snd.n_acknowledged, snd.finished_at, snd.lease_owner, snd.lease_expires_at = 0, None, "", None
        job = session.get(Job, snd.job_id)
        add_event(session, f"results of job {snd.job_id} queued again for '{snd.destination}' by {by}",
                  kind="send", study_uid=job.study_uid if job else "", job_id=snd.job_id, send_id=snd.id)
        out.append(snd.id)
    return out


def job_delivery(session: Session, job_id: int) -> str:
    """'none' (no sends), 'delivered' (all done), 'dead' (some gave up) or 'pending'."""
    states = [s for (s,) in session.execute(select(Send.state).where(Send.job_id == job_id)).all()]
    if not states:
        return "none"
    if all(s == SEND_DONE for s in states):
        return "delivered"
    if any(s == SEND_DEAD for s in states):
        return "dead"
    return "pending"


class Dispatcher:
    """Loop that delivers due sends one at a time; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, cfg, db: Database, owner: str = "dispatcher", poll_s: float = 1.0):
        self.cfg, self.db, self.owner, self.poll_s = cfg, db, owner, poll_s

    def run_once(self) -> str | None:
        """One due send attempt; its new state, or None when nothing was due."""
        with self.db.session() as s:
            sid = claim_send(s, self.owner)
        if sid is None:
            return None
        return attempt(self.cfg, self.db, sid)

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set."""
        while not stop.is_set():
            try:
                if self.run_once() is None:
                    stop.wait(self.poll_s)
            except Exception:  # noqa: BLE001
                log.exception("dispatcher pass failed")
                stop.wait(self.poll_s)
