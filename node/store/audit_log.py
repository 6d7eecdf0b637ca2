"""The append-only audit table ``audit_log``: who did what to which object, when, from where, with what outcome.

Nothing in the code updates or deletes a row: a flush that would is refused (:class:`AuditAppendOnly`), and the
database refuses it too — a trigger on SQLite and PostgreSQL made with the table (``create_all``) and by its
Alembic migration. Times are naive UTC like every node column.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import DDL, DateTime, Integer, String, Text, event
from sqlalchemy.orm import Mapped, Session, mapped_column

from node.store.base import Base, utcnow


class AuditAppendOnly(RuntimeError):
    """Raised when code tries to change or delete an audit record."""


class AuditRecord(Base):
    """One audited action.

    ``actor``: the console user name or ``token:<name>`` ('' when nobody was signed in), ``role``, ``via``
    ('session', 'token', 'cli', 'node'); ``address``: the client's IP address ('' for the node itself);
    ``action``: e.g. ``job.view``, ``rules.change``, ``purge``; ``object_type``/``object_id``: what it was done to
    (job id, rule version, user name, token id, setting name, ...); ``patient_ref``: a keyed hash of the patient
    (never the ID itself, see :func:`node.audit.patient_ref`); ``outcome``: ``success``, ``denied``,
    ``not_found``, ``error``; ``status``: the HTTP status when a request did it; ``detail``: plain words.
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(160), default="", index=True)
    role: Mapped[str] = mapped_column(String(16), default="")
    via: Mapped[str] = mapped_column(String(16), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(48), index=True)
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(128), default="")
    patient_ref: Mapped[str] = mapped_column(String(32), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(8), default="")
    path: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(Text, default="")

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-serialisable dict (``at`` ISO 8601 with Z: UTC)."""
        return {"id": self.id, "at": self.at.isoformat() + "Z", "actor": self.actor, "role": self.role,
                "via": self.via, "address": self.address, "action": self.action, "object_type": self.object_type,
                "object_id": self.object_id, "patient_ref": self.patient_ref, "outcome": self.outcome,
                "status": self.status, "method": self.method, "path": self.path, "detail": self.detail}


@event.listens_for(Session, "before_flush")
def _refuse_changes(session: Session, _flush_context, _instances) -> None:
    """Refuse any flush that changes or deletes an audit record (append-only)."""
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, AuditRecord) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditAppendOnly("the audit log is append-only: records cannot be changed or deleted")


#: the database side of append-only: triggers refusing UPDATE and DELETE (also run by the Alembic migration)
SQLITE_TRIGGERS = (
    ("CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
     "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"),
    ("CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
     "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"),
)
POSTGRES_TRIGGERS = (
    ("CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
     "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"),
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    ("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
     "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"),
)
for _sql in SQLITE_TRIGGERS:
    event.listen(AuditRecord.__table__, "after_create", DDL(_sql).execute_if(dialect="sqlite"))
for _sql in POSTGRES_TRIGGERS:
    event.listen(AuditRecord.__table__, "after_create", DDL(_sql).execute_if(dialect="postgresql"))
