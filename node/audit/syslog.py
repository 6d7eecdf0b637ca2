"""Forward the audit trail to a syslog collector as DICOM / IHE ATNA audit messages (RFC 5424 over TCP or TLS).

Each ``audit_log`` record becomes one RFC 5424 message (facility 10 security/authorization, severity 5 notice for a
success and 4 warning otherwise; APP-NAME ``totalreg``, MSGID ``DICOM+RFC3881``) whose message is a DICOM PS3.15
A.5 ``AuditMessage`` (XML): EventIdentification (EventID, action code R/U/D/E, outcome 0/4/8, date-time, event
type), the requesting ActiveParticipant (user, client address), the node as AuditSourceIdentification, and the
object — a patient only as the node's keyed hash (:func:`node.audit.patient_ref`), a job by its id. Frames use
octet counting (RFC 6587 / RFC 5425): ``<length> <message>``.

:class:`SyslogForwarder` (a thread of ``totalreg serve`` when ``audit.syslog_host`` is set) sends the records in id
order and keeps the last id sent in ``<data_dir>/audit_syslog.pos`` so that a restart or a collector outage resumes
where it stopped (a record may be sent twice around a crash, never skipped).
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from xml.etree import ElementTree as ET

from sqlalchemy import select

from node.store.audit_log import AuditRecord

log = logging.getLogger(__name__)
FACILITY = 10  # security/authorization messages (DICOM PS3.15 A.5.2)
APP_NAME, MSG_ID = "totalreg", "DICOM+RFC3881"

#: action -> (EventID code, meaning, action code, (EventTypeCode code, meaning) or None)
EVENTS = {
    "job.view": ("110110", "Patient Record", "R", None),
    "job.qc_image": ("110103", "DICOM Instances Accessed", "R", None),
    "job.viewer": ("110103", "DICOM Instances Accessed", "R", None),
    "job.viewer_data": ("110103", "DICOM Instances Accessed", "R", None),
    "jobs.list": ("110112", "Query", "E", None),
    "rules.dry_run": ("110112", "Query", "E", None),
    "job.resend": ("110106", "Export", "R", None),
    "job.retry": ("110100", "Application Activity", "E", None),
    "job.cancel": ("110100", "Application Activity", "E", None),
    "auth.login": ("110114", "User Authentication", "E", ("110122", "Login")),
    "auth.logout": ("110114", "User Authentication", "E", ("110123", "Logout")),
    "rules.change": ("110113", "Security Alert", "E", ("110131", "Software Configuration")),
    "setting.change": ("110113", "Security Alert", "E", ("110131", "Software Configuration")),
    "user.create": ("110113", "Security Alert", "E", ("110137", "User Security Attributes Changed")),
    "user.password": ("110113", "Security Alert", "E", ("110137", "User Security Attributes Changed")),
    "token.create": ("110113", "Security Alert", "E", ("110137", "User Security Attributes Changed")),
    "token.revoke": ("110113", "Security Alert", "E", ("110137", "User Security Attributes Changed")),
    "purge": ("110105", "DICOM Study Deleted", "D", None),
    "audit.view": ("110101", "Audit Log Used", "R", None),
    "audit.export": ("110101", "Audit Log Used", "R", None),
}
DEFAULT_EVENT = ("110100", "Application Activity", "E", None)


def atna_xml(r: AuditRecord, source_id: str) -> str:
    """The DICOM PS3.15 A.5 AuditMessage of one record (XML text, no declaration)."""
    code, meaning, action, etype = EVENTS.get(r.action, DEFAULT_EVENT)
    outcome = {"success": "0", "denied": "4", "not_found": "4", "invalid": "4"}.get(r.outcome, "8")
    msg = ET.Element("AuditMessage")
    ev = ET.SubElement(msg, "EventIdentification", EventActionCode=action, EventDateTime=r.at.isoformat() + "Z",
                       EventOutcomeIndicator=outcome)
    ET.SubElement(ev, "EventID", {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})
    if etype:
        ET.SubElement(ev, "EventTypeCode", {"csd-code": etype[0], "codeSystemName": "DCM", "originalText": etype[1]})
    ET.SubElement(ev, "EventTypeCode", {"csd-code": r.action, "codeSystemName": "TOTALREG",
                                         "originalText": r.action})
    user = {"UserID": r.actor or "anonymous", "UserIsRequestor": "true"}
    if r.address:
        user.update(NetworkAccessPointID=r.address, NetworkAccessPointTypeCode="2")
    ET.SubElement(msg, "ActiveParticipant", user)
    ET.SubElement(msg, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false",
                                             "NetworkAccessPointID": socket.gethostname(),
                                             "NetworkAccessPointTypeCode": "1"})
    src = ET.SubElement(msg, "AuditSourceIdentification", AuditSourceID=source_id)
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM",
                                               "originalText": "Application Server Process"})
    if r.patient_ref:
        po = ET.SubElement(msg, "ParticipantObjectIdentification", ParticipantObjectID=r.patient_ref,
                           ParticipantObjectTypeCode="1", ParticipantObjectTypeCodeRole="1")
        ET.SubElement(po, "ParticipantObjectIDTypeCode", {"csd-code": "2", "codeSystemName": "RFC-3881",
                                                          "originalText": "Patient Number"})
    if r.object_id:
        po = ET.SubElement(msg, "ParticipantObjectIdentification", ParticipantObjectID=f"{r.object_type}:"
                           f"{r.object_id}", ParticipantObjectTypeCode="2", ParticipantObjectTypeCodeRole="3")
        ET.SubElement(po, "ParticipantObjectIDTypeCode", {"csd-code": "12", "codeSystemName": "RFC-3881",
                                                          "originalText": "URI"})
        if r.detail:
            ET.SubElement(po, "ParticipantObjectDetail", type="detail", value=r.detail)
    return ET.tostring(msg, encoding="unicode")


def rfc5424(r: AuditRecord, source_id: str, hostname: str | None = None) -> bytes:
    """One RFC 5424 syslog message (bytes, no framing) carrying :func:`atna_xml` of ``r``."""
    severity = 5 if r.outcome == "success" else 4
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    head = f"<{FACILITY * 8 + severity}>1 {r.at.isoformat(timespec='microseconds')}Z {host} {APP_NAME} " \
           f"{os.getpid()} {MSG_ID} - "
    return head.encode() + b"\xef\xbb\xbf" + atna_xml(r, source_id).encode()


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 3.4.1, RFC 5425): ``<length> <message>``."""
    return str(len(message)).encode() + b" " + message


class SyslogForwarder:
    """Send new audit records to the configured collector (``audit.syslog_*``); see the module docstring."""

    def __init__(self, cfg, db, *, poll_s: float = 2.0):
        self.cfg, self.db, self.poll_s = cfg, db, poll_s
        self.a = cfg.audit
        self.pos_file = Path(cfg.node.data_dir) / "audit_syslog.pos"
        self.sock: socket.socket | None = None

    def position(self) -> int:
        """The id of the last record sent (0: none)."""
        try:
            return int(self.pos_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save(self, last_id: int) -> None:
        self.pos_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pos_file.with_suffix(".tmp")
        tmp.write_text(str(last_id))
        os.replace(tmp, self.pos_file)

    def _connect(self) -> socket.socket:
        s = socket.create_connection((self.a.syslog_host, self.a.syslog_port), timeout=10)
        if self.a.syslog_tls:
            ctx = ssl.create_default_context(cafile=str(self.a.syslog_ca_file) if self.a.syslog_ca_file else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.a.syslog_cert_file:
                ctx.load_cert_chain(str(self.a.syslog_cert_file), str(self.a.syslog_key_file))
            s = ctx.wrap_socket(s, server_hostname=self.a.syslog_host)
        return s

    def send_pending(self, batch: int = 200) -> int:
        """Send the records after :meth:`position` (at most ``batch``); returns how many. Raises OSError when the
        collector cannot be reached (the position stays where it was)."""
        last = self.position()
        with self.db.session() as s:
            rows = list(s.scalars(select(AuditRecord).where(AuditRecord.id > last).order_by(AuditRecord.id)
                                  .limit(batch)))
        if not rows:
            return 0
        if self.sock is None:
            self.sock = self._connect()
        source = self.cfg.node.ae_title
        try:
            self.sock.sendall(b"".join(frame(rfc5424(r, source)) for r in rows))
        except OSError:
            self.close()
            raise
        self._save(rows[-1].id)
        return len(rows)

    def close(self) -> None:
        """Close the connection to the collector (reopened on the next send)."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set (the service's "audit-syslog" thread); an unreachable collector is retried
        every ``poll_s`` x 15 seconds and logged once per outage."""
        down = False
        while not stop.is_set():
            try:
                while self.send_pending() and not stop.is_set():
                    pass
                if down:
                    log.info("audit: syslog collector %s:%d reachable again", self.a.syslog_host, self.a.syslog_port)
                down = False
                stop.wait(self.poll_s)
            except (OSError, ssl.SSLError) as exc:
                if not down:
                    log.error("audit: cannot send to the syslog collector %s:%d: %s", self.a.syslog_host,
                              self.a.syslog_port, exc)
                down = True
                stop.wait(self.poll_s * 15)
            except Exception:  # noqa: BLE001 - never fatal
                log.exception("audit: syslog forwarding pass failed")
                stop.wait(self.poll_s * 15)
        self.close()
