"""Deliver node events to the configured notification targets; watch the node's health and raise events for it.

Webhook request (one per event and target)::

    POST <url>
    Content-Type: application/json
    X-TotalReg-Event: job.failed
    X-TotalReg-Delivery: <delivery id>          (the same on every retry: receivers de-duplicate on it)
    X-TotalReg-Timestamp: <unix seconds>        (when this attempt was signed)
    X-TotalReg-Signature: sha256=<hex>          HMAC-SHA256(secret, "<timestamp>." + raw body)

    {"event": "job.failed", "event_id": 7, "delivery_id": 9, "at": "2026-12-04T15:00:00Z", "node": "TOTALREG",
     "data": {"job_id": 12, "rule": "ct-followup", "state": "failed", "error": "...", "qc": {...}, ...},
     "patient": {...}}                           ("patient" only for a target with include_phi: true)

A receiver checks the signature with :func:`verify` (constant-time compare, and a timestamp within 5 minutes of its
clock so a captured request cannot be replayed later). Any 2xx answer counts as delivered; anything else (an error
status, a refused connection, a timeout) is retried after ``retry.delay(attempt)`` seconds (exponential back-off,
per target) until ``retry.max_attempts``, then the delivery is ``failed`` (an admin may retry it in the console).

A delivery is claimed by a conditional UPDATE (state still pending, due) that moves its next attempt one lease
ahead, so several node processes sharing a database never send one twice at the same time, and no database
transaction stays open while a request is in flight. E-mail targets get the same JSON as a plain-text message
through the configured SMTP relay (smtplib).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import logging
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from typing import ClassVar
from email.message import EmailMessage
from pathlib import Path

import httpx
from sqlalchemy import delete, select, update

from node.store.notify_outbox import DELIVERED, FAILED, PENDING, NotifyDelivery, NotifyEvent, add_node_event
from node.ops.disk import disk
from node.store.base import utcnow
from node.store.db import Job, Study

log = logging.getLogger(__name__)
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-TotalReg-Signature", "X-TotalReg-Timestamp"
EVENT_HEADER, DELIVERY_HEADER = "X-TotalReg-Event", "X-TotalReg-Delivery"
MAX_SKEW_S = 300.0  # verify(): a signature older or newer than this is refused (replay)
BATCH = 50  # events fanned out / deliveries attempted per pass
KEEP_DAYS = 30.0  # delivered / failed notifications are kept this long (console), then pruned


# ------------------------------------------------------------------------------------------------------ signing

def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-TotalReg-Signature`` value: ``sha256=`` + hex HMAC-SHA256(secret, b"<timestamp>." + body).
    ``timestamp``: Unix seconds (the ``X-TotalReg-Timestamp`` header); ``body``: the raw request body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, timestamp: str | None, body: bytes, signature: str | None,
           max_skew_s: float = MAX_SKEW_S, now: float | None = None) -> bool:
    """True when ``signature`` is :func:`sign` of ``timestamp`` and ``body`` and the timestamp (Unix seconds) is
    within ``max_skew_s`` of ``now`` (default: this clock). For webhook receivers and the tests."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > max_skew_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# ------------------------------------------------------------------------------------------------------- bodies

def _patient(session, study_uid: str) -> dict:
    """Patient and study attributes of a study (for targets with include_phi only)."""
    st = session.scalar(select(Study).where(Study.study_uid == study_uid)) if study_uid else None
    if st is None:
        return {}
    return {"patient_name": st.patient_name, "patient_id": st.patient_id, "issuer": st.issuer,
            "birth_date": st.birth_date.isoformat() if st.birth_date else None, "sex": st.sex,
            "accession_number": st.accession_number, "study_description": st.description,
            "study_date": st.study_date.isoformat() if st.study_date else None}


def scrub_payload(session, ev: NotifyEvent) -> dict:
    """``ev.payload`` with the patient IDs, names (whole, with spaces for '^', and each name part of 3 or more
    characters), birth dates and accession numbers of the job's current and prior studies replaced by
    ``<patient>`` in every text value — a job's error and reason are kept verbatim in the database and may quote
    them (e.g. "two different patients")."""
    payload = dict(ev.payload or {})
    uids = {ev.study_uid}
    if ev.job_id is not None:
        job = session.get(Job, ev.job_id)
        if job is not None:
            uids |= {job.study_uid, job.prior_study_uid}
    uids.discard("")
    secrets: set[str] = set()
    for st in session.scalars(select(Study).where(Study.study_uid.in_(uids))) if uids else ():
        for v in (st.patient_id, st.accession_number, st.birth_date.isoformat() if st.birth_date else ""):
            secrets.add(v)
        name = st.patient_name or ""
        secrets |= {name, name.replace("^", " ").strip(), *(p for p in name.replace("^", " ").split() if len(p) >= 3)}
    secrets = sorted((v for v in secrets if v and len(v) >= 2), key=len, reverse=True)
    if not secrets:
        return payload

    def clean(v):
        if isinstance(v, str):
            for sec in secrets:
                v = v.replace(sec, "<patient>")
            return v
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return {k: (clean(v) if k not in ("study_uid", "current_series_uid", "prior_series_uid") else v)
            for k, v in payload.items()}


def body_of(ev: NotifyEvent, delivery_id: int, node_ae: str, phi: dict | None = None,
            payload: dict | None = None) -> bytes:
    """The JSON body (UTF-8, keys sorted) of one delivery of ``ev``; ``phi``: patient facts, included as
    ``patient`` only when given (targets with include_phi)."""
    doc = {"event": ev.kind, "event_id": ev.id, "delivery_id": delivery_id, "at": ev.at.isoformat() + "Z",
           "node": node_ae, "host": socket.gethostname(), "data": (ev.payload or {}) if payload is None else payload}
    if phi is not None:
        doc["patient"] = phi
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


# ------------------------------------------------------------------------------------------------------ sending

class DeliveryError(Exception):
    """A delivery attempt failed; ``status`` is the HTTP status when the target answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def post_webhook(target, body: bytes, event: str, delivery_id: int, now: float | None = None) -> int:
    """POST ``body`` to a webhook target, signed when it has a secret; returns the 2xx status, else raises
    :class:`DeliveryError` (plain words)."""
    ts = str(int(time.time() if now is None else now))
    headers = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: str(delivery_id),
               TIMESTAMP_HEADER: ts, "User-Agent": "TotalRegistrator-Node"}
    if target.secret:
        headers[SIGNATURE_HEADER] = sign(target.secret, ts, body)
    try:
        r = httpx.post(target.url, content=body, headers=headers, timeout=target.timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"cannot reach {target.url}: {exc.__class__.__name__}: {str(exc)[:300]}") from None
    if not 200 <= r.status_code < 300:
        raise DeliveryError(f"{target.url} answered HTTP {r.status_code}", r.status_code)
    return r.status_code


def send_email(target, body: bytes, event: str, node_ae: str) -> None:
    """Send the event as a plain-text e-mail through the target's SMTP relay; raises :class:`DeliveryError`."""
    doc = json.loads(body)
    msg = EmailMessage()
    what = doc.get("data", {}).get("job_id")
    msg["Subject"] = f"[TotalReg {node_ae}] {event}" + (f": job {what}" if what is not None else "")
    msg["From"], msg["To"] = target.mail_from, ", ".join(target.mail_to)
    msg.set_content(json.dumps(doc, indent=2, sort_keys=True))
    try:
        with smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=target.timeout_s) as smtp:
            if target.smtp_starttls:
                smtp.starttls()
            if target.smtp_user:
                smtp.login(target.smtp_user, target.smtp_password or "")
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {target.smtp_host}:{target.smtp_port}: {exc.__class__.__name__}: "
                            f"{str(exc)[:300]}") from None


class Notifier:
    """The delivery loop: fan new events out to the configured targets, then attempt the due deliveries.

    ``clock``: returns the current naive-UTC datetime (tests move it forward instead of waiting)."""

    def __init__(self, cfg, db, *, poll_s: float = 1.0, clock: Callable[[], _dt.datetime] = utcnow):
        self.cfg, self.db, self.poll_s, self.clock = cfg, db, poll_s, clock
        self.targets = {t.name: t for t in cfg.notifications}

    def fan_out(self) -> int:
        """Make the delivery rows of events not fanned out yet (one per subscribed target); returns how many."""
        made = 0
        with self.db.session() as s:
            events = s.scalars(select(NotifyEvent).where(NotifyEvent.fanned_out.is_(False))
                               .order_by(NotifyEvent.id).limit(BATCH)).all()
            now = self.clock()
            for ev in events:
                res = s.execute(update(NotifyEvent).where(NotifyEvent.id == ev.id, NotifyEvent.fanned_out.is_(False))
                                .values(fanned_out=True).execution_options(synchronize_session=False))
                if res.rowcount != 1:  # another process did it
                    continue
                for t in self.targets.values():
                    if t.wants(ev.kind):
                        s.add(NotifyDelivery(event_id=ev.id, target=t.name, state=PENDING, next_attempt_at=now,
                                             created_at=now))
                        made += 1
        return made

    def _claim(self, delivery_id: int, now: _dt.datetime, lease_s: float) -> bool:
        with self.db.session() as s:
            res = s.execute(update(NotifyDelivery)
                            .where(NotifyDelivery.id == delivery_id, NotifyDelivery.state == PENDING,
                                   NotifyDelivery.next_attempt_at <= now)
                            .values(next_attempt_at=now + _dt.timedelta(seconds=lease_s),
                                    attempts=NotifyDelivery.attempts + 1)
                            .execution_options(synchronize_session=False))
            return res.rowcount == 1

    def deliver_due(self) -> int:
        """Attempt every pending delivery whose next attempt is due; returns how many were delivered now."""
        now = self.clock()
        with self.db.session() as s:
            due = s.scalars(select(NotifyDelivery.id).where(NotifyDelivery.state == PENDING,
                                                            NotifyDelivery.next_attempt_at <= now)
                            .order_by(NotifyDelivery.next_attempt_at, NotifyDelivery.id).limit(BATCH)).all()
        return sum(self.deliver(i, now) for i in due)

    def deliver(self, delivery_id: int, now: _dt.datetime | None = None) -> bool:
        """One attempt of one delivery (if it is still pending and due); True when it was delivered."""
        now = now or self.clock()
        with self.db.session() as s:
            d = s.get(NotifyDelivery, delivery_id)
            target = self.targets.get(d.target) if d is not None else None
        if d is None:
            return False
        if target is None:
            with self.db.session() as s:
                s.execute(update(NotifyDelivery).where(NotifyDelivery.id == delivery_id,
                                                       NotifyDelivery.state == PENDING)
                          .values(state=FAILED, last_error=f"target '{d.target}' is no longer configured"))
            return False
        if not self._claim(delivery_id, now, lease_s=target.timeout_s + 60):
            return False
        with self.db.session() as s:
            ev = s.get(NotifyEvent, d.event_id)
            phi = _patient(s, ev.study_uid) if target.include_phi and ev.study_uid else None
            payload = ev.payload if target.include_phi else scrub_payload(s, ev)
        node_ae = self.cfg.node.ae_title
        body = body_of(ev, delivery_id, node_ae, phi if target.include_phi and ev.job_id is not None else None,
                       payload)
        status, error = None, ""
        try:
            if target.kind == "email":
                send_email(target, body, ev.kind, node_ae)
            else:
                status = post_webhook(target, body, ev.kind, delivery_id)
        except DeliveryError as exc:
            status, error = exc.status, str(exc)
        with self.db.session() as s:
            d = s.get(NotifyDelivery, delivery_id)
            d.last_status, d.last_error = status, error
            if not error:
                d.state, d.delivered_at = DELIVERED, self.clock()
            elif d.attempts >= target.retry.max_attempts:
                d.state = FAILED
                log.warning("notification %d (%s) to '%s' failed after %d attempts: %s", delivery_id, ev.kind,
                            target.name, d.attempts, error)
            else:
                d.next_attempt_at = now + _dt.timedelta(seconds=target.retry.delay(d.attempts))
                log.info("notification %d (%s) to '%s': attempt %d failed, next in %.0f s: %s", delivery_id,
                         ev.kind, target.name, d.attempts, target.retry.delay(d.attempts), error)
        return not error

    def run_once(self) -> int:
        """Fan out, then deliver what is due; returns the deliveries made now."""
        self.fan_out()
        return self.deliver_due()

    def prune(self, keep_days: float = KEEP_DAYS) -> int:
        """Delete events older than ``keep_days`` with no pending delivery (their deliveries go with them);
        returns how many events. The outbox is a queue, not a record: the audit trail and the events table are."""
        cutoff = self.clock() - _dt.timedelta(days=keep_days)
        pending = select(NotifyDelivery.id).where(NotifyDelivery.event_id == NotifyEvent.id,
                                                  NotifyDelivery.state == PENDING)
        with self.db.session() as s:
            ids = list(s.scalars(select(NotifyEvent.id).where(NotifyEvent.at < cutoff, NotifyEvent.fanned_out.is_(True),
                                                              ~pending.exists()).limit(10_000)))
            if ids:
                s.execute(delete(NotifyDelivery).where(NotifyDelivery.event_id.in_(ids)))
                s.execute(delete(NotifyEvent).where(NotifyEvent.id.in_(ids)))
        return len(ids)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set (the service's "notify" thread); prunes old events hourly; errors are
        logged, never fatal."""
        next_prune = 0.0
        while not stop.is_set():
            try:
                self.run_once()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    self.prune()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the thread
                log.exception("notification delivery pass failed")
            stop.wait(self.poll_s)


def retry_delivery(session, delivery_id: int, now: _dt.datetime | None = None) -> bool:
    """Put a failed (or pending) delivery back to be attempted at ``now`` (default: now) with a fresh attempt
    budget (the console's retry button); False when there is no such delivery or it was delivered."""
    d = session.get(NotifyDelivery, delivery_id)
    if d is None or d.state == DELIVERED:
        return False
    d.state, d.attempts, d.next_attempt_at = PENDING, 0, now or utcnow()
    return True


# ------------------------------------------------------------------------------------------------------- health

class HealthWatch:
    """Checks the node's health every ``interval_s`` and queues an event when a check changes: spool disk below
    ``node.min_free_disk_mb`` (``node.disk_low`` / ``node.disk_ok``), a configured PACS not answering C-ECHO
    (``node.pacs_unreachable`` / ``node.pacs_reachable``), the DICOM receiver not running (``node.receiver_down``
    / ``node.receiver_up``). These are the checks /healthz and the dashboard show. A check that is bad at the
    first look raises its event; one that is fine at the first look does not."""

    def __init__(self, cfg, db, *, echo: Callable[[str], tuple[bool, str]],
                 receiver_alive: Callable[[], bool] | None = None, interval_s: float = 60.0):
        """``echo(name) -> (ok, message)`` checks the configured PACS ``name`` now (the composition root passes
        the console's peer check, :func:`node.web.system.check_peer`); ``interval_s`` in seconds."""
        self.cfg, self.db, self.receiver_alive, self.interval_s = cfg, db, receiver_alive, interval_s
        self._echo = echo
        self.state: dict[str, bool] = {}

    def checks(self) -> dict[str, tuple[str, bool, str, dict]]:
        """Current results: key -> (event group, ok, message, facts)."""
        out: dict[str, tuple[str, bool, str, dict]] = {}
        d = disk(Path(self.cfg.node.data_dir))
        need = self.cfg.node.min_free_disk_mb * 1024 * 1024
        message = (f"{d.free_bytes / 2**20:.0f} MB free in {self.cfg.node.data_dir} (minimum "
                   f"{self.cfg.node.min_free_disk_mb} MB)")
        out["disk"] = ("disk", d.free_bytes >= need, message, {"free_bytes": d.free_bytes, "min_free_bytes": need})
        if self.receiver_alive is not None:
            alive = bool(self.receiver_alive())
            out["receiver"] = ("receiver", alive, "DICOM receiver running" if alive
                               else "DICOM receiver is not running", {})
        for p in self.cfg.pacs:
            ok, msg = self._echo(p.name)
            out[f"pacs:{p.name}"] = ("pacs", ok, f"PACS '{p.name}': {msg}", {"pacs": p.name})
        return out

    EVENTS: ClassVar[dict[str, tuple[str, str]]] = {
        "disk": ("node.disk_ok", "node.disk_low"), "receiver": ("node.receiver_up", "node.receiver_down"),
        "pacs": ("node.pacs_reachable", "node.pacs_unreachable")}

    def check_once(self) -> list[str]:
        """Run the checks; queue an event for each change; returns the kinds queued."""
        queued = []
        results = self.checks()
        with self.db.session() as s:
            for key, (group, ok, message, facts) in results.items():
                before = self.state.get(key)
                self.state[key] = ok
                if before == ok or (before is None and ok):
                    continue
                kind = self.EVENTS[group][0 if ok else 1]
                add_node_event(s, kind, message, check=key, ok=ok, node=self.cfg.node.ae_title, **facts)
                queued.append(kind)
        return queued

    def run(self, stop: threading.Event) -> None:
        """Check every ``interval_s`` until ``stop`` is set (the service's "health" thread)."""
        while not stop.is_set():
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - never fatal
                log.exception("health check pass failed")
            stop.wait(self.interval_s)
