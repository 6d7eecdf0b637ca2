"""The notification outbox tables and the hook that fills it from job outcomes.

``notify_events``: one row per node event (``kind`` one of :data:`node.config.NOTIFY_EVENTS`), its PHI-free
``payload`` (job id, rule, outcome, error in plain words, QC numbers, UIDs). A job's event is added by a SQLAlchemy
``before_flush`` hook in the very transaction that makes the job ``done`` / ``failed`` / ``dead`` (node.store.queue
changes job rows through the ORM), so an outcome is never committed without its event, nor an event without it.
``fanned_out`` becomes true once the delivery loop made the event's ``notify_deliveries`` rows for the targets
configured at that moment (none: nothing is sent).

``notify_deliveries``: one row per (event, target name): ``pending`` → ``delivered`` | ``failed`` (after the
target's ``retry.max_attempts``), ``attempts``, ``next_attempt_at`` (naive UTC), ``last_error``, ``last_status``
(HTTP status, or None).
"""
from __future__ import annotations

import datetime as _dt
import weakref
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, event, inspect
from sqlalchemy.orm import Mapped, Session, mapped_column

from node.store.base import Base, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)
#: QC report keys copied into a job event (numbers only)
QC_KEYS = ("folding_percent", "sdlogj", "similarity_before", "similarity_after", "checks")


class NotifyEvent(Base):
    """One node event waiting to be (or already) fanned out to the configured notification targets."""

    __tablename__ = "notify_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48))
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class NotifyDelivery(Base):
    """Delivery of one event to one target, with its retry state."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "target", name="uq_notify_deliveries_event_target"),
                      Index("ix_notify_deliveries_due", "state", "next_attempt_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("notify_events.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)


def job_event_kind(job) -> str | None:
    """The notification event of a job's current state, or None (queued/running, skipped, cancelled by a person).

    done: ``job.suspicious`` when QC flagged it (instead of ``job.registered``, so that one job gives one event),
    ``job.registered`` or ``job.no_prior``; failed: ``job.failed``; dead: ``job.dead``."""
    state = str(getattr(job.state, "value", job.state))
    if state == "done":
        if job.suspicious:
            return "job.suspicious"
        return {"registered": "job.registered", "no_prior": "job.no_prior"}.get(
            str(getattr(job.outcome, "value", job.outcome)))
    if state == "failed":
        return None if (job.error or "").startswith("cancelled by") else "job.failed"
    if state == "dead":
        return "job.dead"
    return None


def job_payload(job) -> dict[str, Any]:
    """The PHI-free facts of a job for its event: ids, UIDs, rule, state, outcome, error (plain words, already
    scrubbed of patient data by the worker), attempts, QC numbers and flags, finish time (ISO 8601, UTC)."""
    qc = job.qc or {}
    return {"job_id": job.id, "kind": job.kind, "rule": job.rule_name, "round": job.round,
            "state": str(getattr(job.state, "value", job.state)),
            "outcome": str(getattr(job.outcome, "value", job.outcome or "")),
            "reason": job.outcome_reason or "", "error": job.error or "", "attempts": job.attempts,
            "suspicious": bool(job.suspicious), "qc": {k: qc[k] for k in QC_KEYS if k in qc},
            "study_uid": job.study_uid, "current_series_uid": job.current_series_uid,
            "prior_series_uid": job.prior_series_uid,
            "finished_at": job.finished_at.isoformat() + "Z" if job.finished_at else None}


_HAS_OUTBOX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # engine -> notify_events exists


def _has_outbox(session: Session) -> bool:
    """True when the session's database has the outbox (every node database does once upgraded; a bare test
    database made from a subset of the tables does not, and then no event is written)."""
    engine = session.get_bind().engine
    if engine not in _HAS_OUTBOX:
        _HAS_OUTBOX[engine] = inspect(session.connection()).has_table(NotifyEvent.__tablename__)
    return _HAS_OUTBOX[engine]


@event.listens_for(Session, "before_flush")
def _job_outcome_events(session: Session, _flush_context, _instances) -> None:
    """Add a :class:`NotifyEvent` for every job whose state changes to an outcome in this flush."""
    for obj in list(session.dirty):
        if getattr(obj, "__tablename__", None) != "jobs" or obj.id is None:
            continue
        if not _has_outbox(session):
            return
        hist = inspect(obj).attrs.state.history
        if not hist.added or [str(v) for v in hist.added] == [str(v) for v in hist.deleted]:
            continue
        kind = job_event_kind(obj)
        if kind is not None:
            session.add(NotifyEvent(kind=kind, job_id=obj.id, study_uid=obj.study_uid or "", payload=job_payload(obj)))


def add_node_event(session: Session, kind: str, message: str, **facts: Any) -> NotifyEvent:
    """Queue a node health event (``node.*`` of :data:`node.config.NOTIFY_EVENTS`) in the caller's transaction;
    ``message`` in plain words, ``facts`` JSON-serialisable (no patient data)."""
    ev = NotifyEvent(kind=kind, payload={"message": message, **facts})
    session.add(ev)
    return ev
