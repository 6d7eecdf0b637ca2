"""Audit trail: who read or changed what, when and from where — append-only, exportable (JSON lines).

Call :func:`record` for anything a person (or the node for them) does that must be accounted for; the web console
records every request to a job, a patient's data, rules, users, tokens and settings by itself
(:mod:`node.web.audit_middleware`). Other stages call it directly, e.g. retention (H18c)::

    from node import audit
    with db.session() as s:
        audit.record(s, "purge", actor="node", via="node", object_type="retention",
                     object_id="received", detail="12 studies, 3.1 GB older than 30 days")

The table is the store's (:mod:`node.store.audit_log`); this package sits just above the store, so any stage
above it (retention, the console, the commands) can import it.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from sqlalchemy.orm import Session

from node.store.audit_log import AuditAppendOnly, AuditRecord  # noqa: F401 - re-exported

#: outcomes of an audited action
SUCCESS, DENIED, NOT_FOUND, ERROR = "success", "denied", "not_found", "error"


def record(session: Session, action: str, *, actor: str = "", role: str = "", via: str = "", address: str = "",
           object_type: str = "", object_id: Any = "", patient_ref: str = "", outcome: str = SUCCESS,
           status: int | None = None, method: str = "", path: str = "", detail: str = "",
           commit: bool = False) -> AuditRecord:
    """Append one audit record in the caller's transaction (committed with it; ``commit=True`` commits now).

    ``action``: a dotted name (``job.view``, ``rules.change``, ``user.create``, ``token.revoke``, ``setting.change``,
    ``purge``, ``job.resend``, ...). ``actor``: user name, ``token:<name>``, ``node`` or a CLI user; ``via``:
    'session', 'token', 'cli' or 'node'; ``address``: the client IP address. ``object_id``: job id, rule version,
    user name, ... (no patient names or IDs: pass a patient as :func:`patient_ref`). ``detail``: plain words,
    at most 2000 characters are kept. Returns the (pending) row."""
    row = AuditRecord(action=action[:48], actor=actor[:160], role=role[:16], via=via[:16], address=address[:64],
                      object_type=object_type[:32], object_id=str(object_id)[:128], patient_ref=patient_ref[:32],
                      outcome=outcome[:16], status=status, method=method[:8], path=path[:255],
                      detail=detail[:2000])
    session.add(row)
    if commit:
        session.commit()
    return row


def cli_actor() -> str:
    """The ``actor`` of a command-line action: the operating-system user running it (``uid:<n>`` when that uid
    has no name, as in containers with an arbitrary uid). Use with ``via="cli"``."""
    import getpass
    import os
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - KeyError/OSError: no passwd entry
        return f"uid:{os.getuid()}"


def patient_ref(key: str | bytes, patient_id: str, issuer: str = "") -> str:
    """A keyed hash naming a patient in the audit log without their ID: the first 24 hex digits of
    HMAC-SHA256(key, issuer + '|' + patient_id); '' for an empty ID. ``key`` is the node's secret (the console's
    ``web.secret_key``), so the same patient always has the same reference on one node and a dictionary of IDs
    cannot be hashed without it."""
    if not patient_id:
        return ""
    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, f"{issuer}|{patient_id}".encode(), hashlib.sha256).hexdigest()[:24]


def search(session: Session, *, actor: str = "", action: str = "", object_id: str = "", patient: str = "",
           since=None, until=None, before_id: int | None = None, limit: int = 200) -> list[AuditRecord]:
    """Audit records, newest first, filtered: ``actor`` exact, ``action`` exact or a prefix ending in '.'
    (``job.``), ``object_id`` exact, ``patient`` a patient reference, ``since``/``until`` naive-UTC datetimes
    (inclusive / exclusive), ``before_id`` for the next page; at most ``limit`` rows."""
    from sqlalchemy import select
    q = select(AuditRecord)
    if actor:
        q = q.where(AuditRecord.actor == actor)
    if action:
        q = q.where(AuditRecord.action.startswith(action) if action.endswith(".") else AuditRecord.action == action)
    if object_id:
        q = q.where(AuditRecord.object_id == object_id)
    if patient:
        q = q.where(AuditRecord.patient_ref == patient)
    if since is not None:
        q = q.where(AuditRecord.at >= since)
    if until is not None:
        q = q.where(AuditRecord.at < until)
    if before_id is not None:
        q = q.where(AuditRecord.id < before_id)
    return list(session.scalars(q.order_by(AuditRecord.id.desc()).limit(limit)))


def export_lines(session: Session, since=None, until=None, batch: int = 1000):
    """Every record from ``since`` (naive UTC, inclusive) to ``until`` (exclusive), oldest first, as JSON lines
    (one ``str`` per record, no newline), read in batches of ``batch`` rows."""
    import json
    from sqlalchemy import select
    last = 0
    while True:
        q = select(AuditRecord).where(AuditRecord.id > last)
        if since is not None:
            q = q.where(AuditRecord.at >= since)
        if until is not None:
            q = q.where(AuditRecord.at < until)
        rows = list(session.scalars(q.order_by(AuditRecord.id).limit(batch)))
        for r in rows:
            yield json.dumps(r.as_dict(), sort_keys=True)
        if len(rows) < batch:
            return
        last = rows[-1].id
