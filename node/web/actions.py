"""What an admin can do to a job from the console or the API: retry, cancel, re-send its results.

Thin wrappers over the queue's own functions (``node.store.queue.retry`` / ``node.store.queue.cancel``,
``node.dispatch.dispatcher.resend``) that commit, and turn "not possible" into :class:`ActionError` with a plain message
(HTTP 409; 404 for an unknown job). Each action leaves an audit event naming who did it.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from node.dispatch import dispatcher
from node.errors import UserError

from node.store import queue as jobs
from node.store.db import JOB_DONE, OUTCOME_REGISTERED, Job


class ActionError(UserError, ValueError):
    """The action does not apply (unknown job, wrong state); the message says why in plain words."""

    def __init__(self, message: str, *, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ActionError(f"there is no job {job_id}", not_found=True)
    return job


def retry(session: Session, job_id: int, *, by: str) -> str:
    """Put a failed or dead job back in the queue (attempts reset; commits). Returns the job's new state."""
    _job(session, job_id)
    try:
        job = jobs.retry(session, job_id, by=by)
    except (KeyError, ValueError) as exc:
        session.rollback()
        raise ActionError(str(exc).strip("'\"")) from None
    session.commit()
    return job.state


def cancel(session: Session, job_id: int, *, by: str) -> str:
    """Cancel a queued job so that it never runs (commits). Returns the job's new state."""
    _job(session, job_id)
    try:
        job = jobs.cancel(session, job_id, by=by)
    except (KeyError, ValueError) as exc:
        session.rollback()
        raise ActionError(str(exc).strip("'\"")) from None
    session.commit()
    return job.state


def resend(session: Session, job_id: int, *, by: str, destination: str | None = None) -> int:
    """Send a finished job's results again, to every destination or to one (commits). Returns the number of
    sends queued (sends being transmitted right now are left alone)."""
    job = _job(session, job_id)
    if job.state != JOB_DONE or job.outcome != OUTCOME_REGISTERED:
        raise ActionError(f"job {job_id} has no results to send (state {job.state}"
                          f"{', ' + job.outcome.replace('_', ' ') if job.outcome else ''})")
    if destination is not None and all(s.destination != destination for s in job.sends):
        raise ActionError(f"job {job_id} was never sent to '{destination}'")
    if not job.sends:
        raise ActionError(f"job {job_id} has no destinations to send to")
    ids = dispatcher.resend(session, job_id, destination=destination, by=by)
    if not ids:
        session.rollback()
        raise ActionError(f"job {job_id}'s results are being sent right now; try again when that ends")
    session.commit()
    return len(ids)
