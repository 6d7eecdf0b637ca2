"""The audit trail forwarded to a syslog collector started here: RFC 5424 frames (octet counting) over TCP and TLS,
each carrying a DICOM PS3.15 A.5 AuditMessage; resumes after an outage without skipping or repeating records."""
from __future__ import annotations

import re
import socket
import ssl
import threading
from xml.etree import ElementTree as ET

import pytest

from node import audit
from node.audit.syslog import SyslogForwarder
from node.config import parse_config
from node.store.db import Database
from tools import free_port


class Collector:
    """A syslog collector on 127.0.0.1:<port> (optionally TLS) keeping every octet-counted frame received."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None):
        self.frames: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", port))
        self.ctx, self.stop = ctx, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.ctx is not None:
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                except ssl.SSLError:  # a client that refused our certificate
                    conn.close()
                    continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b" " in buf:
                    n, rest = buf.split(b" ", 1)
                    if len(rest) < int(n):
                        break
                    self.frames.append(rest[:int(n)])
                    buf = rest[int(n):]

    def wait_for(self, n: int) -> list[bytes]:
        for _ in range(200):
            if len(self.frames) >= n:
                break
            threading.Event().wait(0.05)
        return self.frames

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def _setup(tmp_path, port: int, extra: str = ""):
    cfg = parse_config(f"""
node: {{ae_title: TOTALREG, data_dir: {tmp_path / 'var'}}}
audit: {{syslog_host: 127.0.0.1, syslog_port: {port}, syslog_tls: false{extra}}}
""")
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    with db.session() as s:
        audit.record(s, "job.view", actor="vera", role="viewer", via="session", address="10.1.2.3",
                     object_type="job", object_id="17", patient_ref=audit.patient_ref("k", "PAT-4711"))
        audit.record(s, "auth.login", address="10.9.9.9", outcome="denied", status=401, detail="sign-in refused")
        audit.record(s, "rules.change", actor="admin", role="admin", via="session", object_type="rules",
                     object_id="3")
    return cfg, db


def _parse(frame: bytes) -> tuple[int, str, ET.Element]:
    m = re.match(rb"<(\d+)>1 (\S+) (\S+) totalreg (\d+) DICOM\+RFC3881 - \xef\xbb\xbf(.*)$", frame, re.S)
    assert m, frame[:120]
    return int(m.group(1)), m.group(2).decode(), ET.fromstring(m.group(5))


def test_records_reach_the_collector_as_atna_messages(tmp_path):
    port = free_port()
    cfg, db = _setup(tmp_path, port)
    col = Collector(port)
    fw = SyslogForwarder(cfg, db)
    try:
        assert fw.send_pending() == 3
        frames = col.wait_for(3)
        assert len(frames) == 3
        (pri1, at1, view), (pri2, _, login), (pri3, _, rules) = (_parse(f) for f in frames)
        assert (pri1, pri2, pri3) == (85, 84, 85)  # facility 10; notice for success, warning otherwise
        assert at1.endswith("Z")
        ev = view.find("EventIdentification")
        assert ev.get("EventActionCode") == "R" and ev.get("EventOutcomeIndicator") == "0"
        assert ev.find("EventID").get("csd-code") == "110110"
        user = view.find("ActiveParticipant")
        assert (user.get("UserID"), user.get("NetworkAccessPointID")) == ("vera", "10.1.2.3")
        objs = {o.get("ParticipantObjectTypeCode"): o.get("ParticipantObjectID")
                for o in view.findall("ParticipantObjectIdentification")}
        assert objs == {"1": audit.patient_ref("k", "PAT-4711"), "2": "job:17"}
        assert b"PAT-4711" not in b"".join(frames)
        assert view.find("AuditSourceIdentification").get("AuditSourceID") == "TOTALREG"
        lev = login.find("EventIdentification")
        assert lev.get("EventOutcomeIndicator") == "4"
        assert [e.get("csd-code") for e in lev.findall("EventTypeCode")] == ["110122", "auth.login"]
        assert rules.find("EventIdentification/EventID").get("csd-code") == "110113"
        assert fw.send_pending() == 0  # nothing new
        with db.session() as s:
            audit.record(s, "purge", actor="node", via="node", object_type="retention", object_id="received")
        assert fw.send_pending() == 1
        assert _parse(col.wait_for(4)[3])[2].find("EventIdentification").get("EventActionCode") == "D"
    finally:
        fw.close()
        col.close()
        db.dispose()


def test_outage_resumes_where_it_stopped(tmp_path):
    port = free_port()
    cfg, db = _setup(tmp_path, port)
    fw = SyslogForwarder(cfg, db)
    with pytest.raises(OSError):
        fw.send_pending()  # nobody listens
    assert fw.position() == 0
    col = Collector(port)
    try:
        assert fw.send_pending() == 3 and fw.position() == 3
        fw2 = SyslogForwarder(cfg, db)  # a restart: the position is kept in data_dir
        assert fw2.send_pending() == 0
        assert len(col.wait_for(3)) == 3
    finally:
        fw.close()
        col.close()
        db.dispose()


def test_tls_collector(tmp_path):
    from robustness.certs import CA
    ca = CA(tmp_path / "pki", "Syslog CA")
    server = ca.issue("collector", "localhost", server=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(server.cert), str(server.key))
    port = free_port()
    cfg, db = _setup(tmp_path, port, extra=f", syslog_tls: true, syslog_ca_file: {ca.pair.cert}")
    col = Collector(port, ctx)
    fw = SyslogForwarder(cfg, db)
    try:
        assert fw.send_pending() == 3
        assert [_parse(f)[0] for f in col.wait_for(3)] == [85, 84, 85]
    finally:
        fw.close()
        col.close()
        db.dispose()
    rogue = CA(tmp_path / "rogue", "Rogue CA")  # a collector the configured CA did not sign is refused
    port2 = free_port()
    cfg2, db2 = _setup(tmp_path / "b", port2, extra=f", syslog_tls: true, syslog_ca_file: {rogue.pair.cert}")
    col2 = Collector(port2, ctx)
    try:
        with pytest.raises(ssl.SSLError):
            SyslogForwarder(cfg2, db2).send_pending()
    finally:
        col2.close()
        db2.dispose()
