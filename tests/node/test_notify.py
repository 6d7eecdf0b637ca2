"""Notifications against a real HTTP receiver started here: job outcomes arrive once, signed, without patient data;
with the receiver down they are retried with exponential back-off and arrive once it is up; node health events."""
from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from node.config import parse_config
from node.notify.delivery import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, HealthWatch,
                                  Notifier, retry_delivery, verify)
from node.store.notify_outbox import DELIVERED, FAILED, PENDING, NotifyDelivery, NotifyEvent
from node.store import queue as jobs
from node.store.db import Database, Study, utcnow
from tools import free_port

SECRET = "webhook-secret-42"
PATIENT_NAME, PATIENT_ID, ACCESSION = "DOE^JANE", "PAT-4711", "ACC-0815"
STUDY = "1.2.826.0.1.3680043.8.498.1"


class Receiver:
    """A webhook receiver on 127.0.0.1:<port> (http.server in a thread) recording every request."""

    def __init__(self, port: int, status: int = 200):
        self.port, self.status, self.requests = port, status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def documents(self) -> list[dict]:
        return [json.loads(b) for _, b in self.requests]


def _cfg(tmp_path, port: int, **extra) -> object:
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return parse_config(f"""
node: {{ae_title: TOTALREG, data_dir: {tmp_path / 'var'}}}
notifications:
  - {{name: hook, url: "http://127.0.0.1:{port}/hook", secret: {SECRET}, events: ["job.*"],
      retry: {{max_attempts: 4, backoff_s: 10, backoff_factor: 2}}{more}}}
""")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ndb(request, tmp_path):
    """The node database (SQLite, and the real PostgreSQL in a fresh schema) with one study of a named patient."""
    url = f"sqlite:///{tmp_path / 'n.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    db = Database(url)
    with db.session() as s:
        s.add(Study(study_uid=STUDY, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, accession_number=ACCESSION))
    yield db
    db.dispose()


def _job_outcomes(db) -> tuple[int, int, int]:
    """Three jobs of the study: one failed (not retryable), one registered but QC-suspicious, one still queued."""
    with db.session() as s:
        ids = [jobs.enqueue(s, study_uid=STUDY, current_series_uid=f"1.2.3.{i}", rule_name="ct-followup")[0].id
               for i in range(3)]
    with db.session() as s:
        c1 = jobs.claim(s, "w1", lease_s=60)
    with db.session() as s:
        jobs.fail(s, c1, "the scans do not overlap", retryable=False)
    with db.session() as s:
        c2 = jobs.claim(s, "w1", lease_s=60)
    with db.session() as s:
        jobs.complete(s, c2, outcome="registered", suspicious=True,
                      qc={"folding_percent": 2.5, "sdlogj": 0.4, "other": "x"})
    return ids[0], ids[1], ids[2]


def _check_signed(headers: dict, body: bytes) -> None:
    assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify("another-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(SECRET, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
    # an old (replayed) timestamp is refused even with a matching signature
    assert not verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER],
                      now=int(headers[TIMESTAMP_HEADER]) + 3600)


def test_failed_and_suspicious_jobs_arrive_once_signed_without_phi(tmp_path, ndb):
    rcv = Receiver(free_port())
    try:
        failed, suspicious, _queued = _job_outcomes(ndb)
        n = Notifier(_cfg(tmp_path, rcv.port), ndb)
        assert n.run_once() == 2
        assert n.run_once() == 0  # nothing more: each event once
        docs = rcv.documents()
        assert sorted((d["event"], d["data"]["job_id"]) for d in docs) == [("job.failed", failed),
                                                                          ("job.suspicious", suspicious)]
        for (headers, body), doc in zip(rcv.requests, docs):
            _check_signed(headers, body)
            assert headers[EVENT_HEADER] == doc["event"] and headers[DELIVERY_HEADER] == str(doc["delivery_id"])
            for phi in (PATIENT_NAME, PATIENT_ID, ACCESSION, "DOE"):
                assert phi not in body.decode()
            assert "patient" not in doc
        by_event = {d["event"]: d["data"] for d in docs}
        assert by_event["job.failed"]["error"] == "the scans do not overlap"
        assert by_event["job.suspicious"]["qc"] == {"folding_percent": 2.5, "sdlogj": 0.4}
        assert by_event["job.suspicious"]["suspicious"] is True and by_event["job.suspicious"]["rule"] == "ct-followup"
        with ndb.session() as s:
            rows = s.scalars(select(NotifyDelivery)).all()
            assert [(r.state, r.attempts, r.last_status) for r in rows] == [(DELIVERED, 1, 200)] * 2
            assert {e.job_id for e in s.scalars(select(NotifyEvent))} == {failed, suspicious}  # not the queued one
    finally:
        rcv.close()


def test_include_phi_adds_the_patient(tmp_path, ndb):
    rcv = Receiver(free_port())
    try:
        _job_outcomes(ndb)
        assert Notifier(_cfg(tmp_path, rcv.port, include_phi="true"), ndb).run_once() == 2
        for doc in rcv.documents():
            assert doc["patient"]["patient_id"] == PATIENT_ID and doc["patient"]["patient_name"] == PATIENT_NAME
    finally:
        rcv.close()


def test_receiver_down_is_retried_with_backoff_then_delivered_once(tmp_path, ndb):
    port = free_port()
    now = [utcnow()]
    n = Notifier(_cfg(tmp_path, port), ndb, clock=lambda: now[0])
    _job_outcomes(ndb)
    assert n.run_once() == 0  # nobody listens
    with ndb.session() as s:
        rows = s.scalars(select(NotifyDelivery).order_by(NotifyDelivery.id)).all()
    assert [(r.state, r.attempts) for r in rows] == [(PENDING, 1)] * 2
    assert all(r.next_attempt_at == now[0] + dt.timedelta(seconds=10) for r in rows)  # backoff_s
    assert all("cannot reach" in r.last_error for r in rows)
    now[0] += dt.timedelta(seconds=9)
    assert n.run_once() == 0
    with ndb.session() as s:  # not due yet: no attempt made
        assert [r.attempts for r in s.scalars(select(NotifyDelivery))] == [1, 1]
    now[0] += dt.timedelta(seconds=1)
    assert n.run_once() == 0  # second attempt, still down: the wait doubles
    with ndb.session() as s:
        rows = s.scalars(select(NotifyDelivery)).all()
    assert [(r.state, r.attempts) for r in rows] == [(PENDING, 2)] * 2
    assert all(r.next_attempt_at == now[0] + dt.timedelta(seconds=20) for r in rows)
    rcv = Receiver(port)  # the receiver comes up
    try:
        now[0] += dt.timedelta(seconds=20)
        assert n.run_once() == 2
        assert n.run_once() == 0
        assert sorted(d["event"] for d in rcv.documents()) == ["job.failed", "job.suspicious"]
        for headers, body in rcv.requests:
            _check_signed(headers, body)
        with ndb.session() as s:
            assert [(r.state, r.attempts) for r in s.scalars(select(NotifyDelivery))] == [(DELIVERED, 3)] * 2
    finally:
        rcv.close()


def test_error_status_is_retried_then_failed_and_an_admin_retry_delivers(tmp_path, ndb):
    rcv = Receiver(free_port(), status=500)
    try:
        now = [utcnow()]
        n = Notifier(_cfg(tmp_path, rcv.port), ndb, clock=lambda: now[0])
        _job_outcomes(ndb)
        for _ in range(4):  # max_attempts 4: 10, 20, 40 s between them
            n.run_once()
            now[0] += dt.timedelta(seconds=100)
        with ndb.session() as s:
            rows = s.scalars(select(NotifyDelivery)).all()
        assert [(r.state, r.attempts, r.last_status) for r in rows] == [(FAILED, 4, 500)] * 2
        assert len(rcv.requests) == 8
        rcv.status = 204
        with ndb.session() as s:
            assert retry_delivery(s, rows[0].id, now=now[0])
        assert n.run_once() == 1
        assert len(rcv.requests) == 9
        now[0] += dt.timedelta(days=29)
        assert n.prune() == 0  # kept 30 days
        now[0] += dt.timedelta(days=2)
        assert n.prune() == 2
        with ndb.session() as s:
            assert s.scalars(select(NotifyDelivery)).all() == [] and s.scalars(select(NotifyEvent)).all() == []
    finally:
        rcv.close()


def test_events_filter_and_delivery_thread(tmp_path, ndb):
    """A target subscribed to job.failed only gets that one, from the delivery thread of the service."""
    rcv = Receiver(free_port())
    try:
        cfg = parse_config(f"""
node: {{data_dir: {tmp_path / 'var'}}}
notifications: [{{url: "http://127.0.0.1:{rcv.port}/", secret: s, events: [job.failed]}}]
""")
        failed, _, _ = _job_outcomes(ndb)
        stop = threading.Event()
        t = threading.Thread(target=Notifier(cfg, ndb, poll_s=0.05).run, args=(stop,), daemon=True)
        t.start()
        try:
            for _ in range(200):
                with ndb.session() as s:
                    if s.scalar(select(NotifyDelivery.state)) == DELIVERED:
                        break
                stop.wait(0.05)
        finally:
            stop.set()
            t.join(10)
        assert [(d["event"], d["data"]["job_id"]) for d in rcv.documents()] == [("job.failed", failed)]
    finally:
        rcv.close()


def test_health_events_on_change_only(tmp_path, ndb):
    cfg = parse_config(f"""
node: {{data_dir: {tmp_path / 'var'}, min_free_disk_mb: 1}}
pacs: [{{name: main, ae_title: PACS, host: 127.0.0.1, port: {free_port()}}}]
""")
    alive, reachable = [True], [True]
    w = HealthWatch(cfg, ndb, receiver_alive=lambda: alive[0], echo=lambda name: (reachable[0], "C-ECHO"))
    assert w.check_once() == []  # all fine at the first look: nothing to say
    alive[0], reachable[0] = False, False
    assert sorted(w.check_once()) == ["node.pacs_unreachable", "node.receiver_down"]
    assert w.check_once() == []  # unchanged: no repeat
    alive[0] = True
    assert w.check_once() == ["node.receiver_up"]
    cfg.node.min_free_disk_mb = 2 ** 40  # a petabyte: the disk is "low"
    assert w.check_once() == ["node.disk_low"]
    with ndb.session() as s:
        ev = s.scalars(select(NotifyEvent).where(NotifyEvent.kind == "node.disk_low")).one()
    assert ev.payload["check"] == "disk" and ev.payload["ok"] is False and ev.job_id is None


def test_unknown_event_name_is_a_config_error(tmp_path):
    from node.config import ConfigError
    with pytest.raises(ConfigError, match="unknown event job.exploded"):
        parse_config("notifications: [{url: 'http://x/', events: [job.exploded]}]")
    with pytest.raises(ConfigError, match="webhook needs url"):
        parse_config("notifications: [{url: 'ftp://x/'}]")


class SmtpRelay:
    """A minimal SMTP relay on 127.0.0.1:<port> (socketserver in a thread) keeping every message it accepts."""

    def __init__(self, port: int):
        import socketserver
        self.messages: list[tuple[str, list[str], bytes]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                def say(line: str):
                    self.wfile.write(line.encode() + b"\r\n")
                say("220 relay ready")
                sender, rcpt = "", []
                while True:
                    line = self.rfile.readline().decode().strip()
                    cmd = line[:4].upper()
                    if not line or cmd == "QUIT":
                        say("221 bye")
                        return
                    if cmd in ("EHLO", "HELO"):
                        say("250 relay")
                    elif cmd == "MAIL":
                        sender = line.split(":", 1)[1].strip(" <>")
                        say("250 ok")
                    elif cmd == "RCPT":
                        rcpt.append(line.split(":", 1)[1].strip(" <>"))
                        say("250 ok")
                    elif cmd == "DATA":
                        say("354 go on")
                        body = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            body += chunk
                        outer.messages.append((sender, rcpt, body))
                        say("250 queued")
                    else:
                        say("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_email_target_through_an_smtp_relay(tmp_path, ndb):
    relay = SmtpRelay(free_port())
    try:
        cfg = parse_config(f"""
node: {{ae_title: TOTALREG, data_dir: {tmp_path / 'var'}}}
notifications:
  - {{kind: email, smtp_host: 127.0.0.1, smtp_port: {relay.server.server_address[1]}, mail_from: node@example.org,
      mail_to: [team@example.org], events: [job.failed]}}
""")
        assert cfg.notifications[0].name == "team@example.org"
        failed, _, _ = _job_outcomes(ndb)
        assert Notifier(cfg, ndb).run_once() == 1
        assert len(relay.messages) == 1
        sender, rcpt, body = relay.messages[0]
        assert (sender, rcpt) == ("node@example.org", ["team@example.org"])
        assert f"Subject: [TotalReg TOTALREG] job.failed: job {failed}".encode() in body
        assert b"the scans do not overlap" in body and PATIENT_ID.encode() not in body
    finally:
        relay.close()


def test_every_outcome_gives_its_event_once(ndb):
    """registered, no_prior, dead (retries used up; lease expired), failed; a retry or a cancel gives none."""
    from node.config import RetrySettings
    with ndb.session() as s:
        ids = [jobs.enqueue(s, study_uid=STUDY, current_series_uid=f"1.2.4.{i}", rule_name="r", max_attempts=1)[0].id
               for i in range(5)]
    with ndb.session() as s:
        jobs.enqueue(s, study_uid=STUDY, current_series_uid="1.2.4.9", rule_name="r", max_attempts=2)

    def next_claim():
        with ndb.session() as s:
            return jobs.claim(s, "w", lease_s=60)
    with ndb.session() as s:
        jobs.complete(s, next_claim(), outcome="registered")
    with ndb.session() as s:
        jobs.complete(s, next_claim(), outcome="no_prior", reason="no earlier CT")
    with ndb.session() as s:
        jobs.fail(s, next_claim(), "PACS down", retryable=True, backoff=RetrySettings(backoff_s=0))  # 1 of 1: dead
    c4 = next_claim()
    with ndb.session() as s:  # a worker that stopped renewing its lease, with no attempts left: dead
        jobs.requeue_expired(s, now=utcnow() + dt.timedelta(seconds=120))
    with ndb.session() as s:
        jobs.cancel(s, ids[4], by="admin")
    c6 = next_claim()
    with ndb.session() as s:  # 1 of 2 attempts: back to the queue, no event yet
        jobs.fail(s, c6, "timeout", retryable=True, backoff=RetrySettings(backoff_s=0))
    with ndb.session() as s:
        got = [(e.kind, e.job_id) for e in s.scalars(select(NotifyEvent).order_by(NotifyEvent.id))]
    assert got == [("job.registered", ids[0]), ("job.no_prior", ids[1]), ("job.dead", ids[2]),
                   ("job.dead", c4.job_id)]


def test_patient_data_quoted_in_an_error_is_scrubbed(tmp_path, ndb):
    rcv = Receiver(free_port())
    try:
        with ndb.session() as s:
            jobs.enqueue(s, study_uid=STUDY, current_series_uid="1.2.5.1", rule_name="r")
        with ndb.session() as s:
            c = jobs.claim(s, "w", lease_s=60)
        with ndb.session() as s:
            jobs.fail(s, c, f"two different patients: {PATIENT_ID} DOE^JANE (accession {ACCESSION}) vs PAT-9",
                      retryable=False)
        assert Notifier(_cfg(tmp_path, rcv.port), ndb).run_once() == 1
        body = rcv.requests[0][1].decode()
        assert json.loads(body)["data"]["error"] == \
            "two different patients: <patient> <patient> (accession <patient>) vs PAT-9"
        for phi in (PATIENT_ID, "DOE", "JANE", ACCESSION):
            assert phi not in body
    finally:
        rcv.close()
