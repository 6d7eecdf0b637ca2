"""The node database: every piece of state the node's stages share (SQLAlchemy 2; SQLite or PostgreSQL).

Tables (all timestamps are naive UTC ``datetime``; sizes in bytes; durations in seconds):

* ``studies``   one row per received StudyInstanceUID; patient/study header values and the assembly state
  (``receiving`` → ``complete``; ``route_failed`` with a plain ``error``).  ``late_instances`` counts instances
  received after the study was routed; ``routing_round`` counts routings (0 = first, 1.. = follow-ups).
* ``series``    one row per SeriesInstanceUID (header values used by routing and series selection).
* ``instances`` one row per SOPInstanceUID: spool path, size, SHA-256, transfer syntax, calling AE, receive time.
  Duplicate policy: a re-sent instance with the same bytes changes nothing; one with different bytes replaces the
  file atomically (newest wins, as a corrected re-send should) and ``versions`` counts the replacements.  A re-send
  naming another study or series, a Series UID under a second study and a study's instance of another patient are
  refused (:class:`node.receive.index.UidConflict`): rows are keyed by whole, valid UIDs (at most 64 characters, checked
  before a row is written), so the 64-character columns never cut one.
* ``jobs``      the work queue.  ``state``: ``queued`` (waiting; ``not_before`` delays a retry), ``running`` (held by
  ``lease_owner`` until ``lease_expires_at``, renewed by a heartbeat), and the terminal ``done`` (``outcome``:
  ``registered`` | ``no_prior`` | ``skipped``, with ``outcome_reason`` in plain words), ``failed`` (an error a
  retry cannot fix: bad input, two different patients, ...) and ``dead`` (retries exhausted; an admin may
  re-queue).  Unique key (current_series_uid, prior_series_uid, rule_name, round) de-duplicates;
  ``prior_series_uid`` is '' until known.
* ``job_runs``  the execution log: one row per claim of a job (worker, lease token, start, end, result).  A job is
  completed by exactly one run: completion is a conditional update on the run's lease token.
* ``sends``     one row per (job, destination): ``queued`` → ``sending`` → ``done`` | ``dead`` (retries with
  back-off per ``send_retry``).  A job's results are delivered only when every send is ``done``.
* ``events``    a plain-words audit log (what happened to a study/job/send and why) for the console.

Use :class:`Database` (engine + sessions) from every stage; ``Database.session()`` is a context manager that commits
on success and rolls back on error.  On SQLite every transaction is ``BEGIN IMMEDIATE`` (one writer at a time,
WAL journal, 30 s busy timeout); on PostgreSQL claims use ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""
from __future__ import annotations

import datetime as _dt
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship, sessionmaker

from node.store import console as _console  # noqa: F401 - the console's tables on the same Base, made by create_all
from node.store import audit_log as _audit  # noqa: F401 - audit_log (append-only) on the same Base
from node.store import notify_outbox as _notify  # noqa: F401 - the notification outbox (and its job hook) on the same Base
from node.store.base import Base, utcnow
from node.store.engine import make_engine  # noqa: F401 - re-exported (the stages' and tests' name for it)
from node.store.migrate import upgrade
from node.store.states import JOB_STATES, JOB_TERMINAL, SEND_STATES, STUDY_STATES  # noqa: F401 - re-exported
from node.store.states import JobOutcome, JobState, SendState, StudyState

UID = String(64)

# the states as their enums (node.store.states) under the names the stages use
STUDY_RECEIVING, STUDY_COMPLETE, STUDY_ROUTE_FAILED = StudyState.RECEIVING, StudyState.COMPLETE, StudyState.ROUTE_FAILED
JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_DEAD = (JobState.QUEUED, JobState.RUNNING, JobState.DONE,
                                                           JobState.FAILED, JobState.DEAD)
OUTCOME_REGISTERED, OUTCOME_NO_PRIOR, OUTCOME_SKIPPED = JobOutcome.REGISTERED, JobOutcome.NO_PRIOR, JobOutcome.SKIPPED
SEND_QUEUED, SEND_SENDING, SEND_DONE, SEND_DEAD = SendState.QUEUED, SendState.SENDING, SendState.DONE, SendState.DEAD


class Study(Base):
    """A received study: patient/study header values plus the assembly state."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[_dt.date | None] = mapped_column(nullable=True)
    sex: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[_dt.date | None] = mapped_column(nullable=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    origin: Mapped[str] = mapped_column(String(16), default="received")  # 'retrieved': a prior fetched by the node
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # assembly
    state: Mapped[str] = mapped_column(String(16), default=STUDY_RECEIVING, index=True)
    round_started_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)  # for max_wait_seconds
    routing_round: Mapped[int] = mapped_column(Integer, default=0)  # rounds routed so far
    routed_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    late_instances: Mapped[int] = mapped_column(Integer, default=0)
    follow_up_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")

    series: Mapped[list["Series"]] = relationship(back_populates="study", cascade="all, delete-orphan",
                                                  order_by="Series.number")


class Series(Base):
    """A received series (header values used by routing and series selection)."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_type: Mapped[str] = mapped_column(String(128), default="")  # backslash-joined
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    frame_of_reference_uid: Mapped[str] = mapped_column(UID, default="")
    slice_thickness_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    body_part: Mapped[str] = mapped_column(String(64), default="")
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance: where its file is in the spool and how it arrived."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(Text)  # absolute spool path
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax: Mapped[str] = mapped_column(UID, default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    versions: Mapped[int] = mapped_column(Integer, default=1)  # >1: replaced by a re-send with other bytes
    late: Mapped[bool] = mapped_column(Boolean, default=False)  # arrived after the study was routed


class Job(Base):
    """A unit of work for a worker (kind 'register'; 'sleep' exists for queue tests)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("current_series_uid", "prior_series_uid", "rule_name", "round", name="uq_jobs_dedupe"),
        Index("ix_jobs_claim", "state", "not_before"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="register")
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    current_series_uid: Mapped[str] = mapped_column(UID, default="")
    prior_series_uid: Mapped[str] = mapped_column(UID, default="")  # '' until the worker found one
    prior_study_uid: Mapped[str] = mapped_column(UID, default="")
    rule_name: Mapped[str] = mapped_column(String(128), default="")
    round: Mapped[int] = mapped_column(Integer, default=0)  # 0: first routing; n: n-th follow-up
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=100)  # lower runs first
    state: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED, index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="")
    outcome_reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")  # last error, plain words
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_token: Mapped[str] = mapped_column(String(64), default="")
    lease_expires_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # stage -> seconds
    qc: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # registration report + checks
    suspicious: Mapped[bool] = mapped_column(Boolean, default=False)  # QC beyond thresholds
    result_dir: Mapped[str] = mapped_column(Text, default="")
    qc_png: Mapped[str] = mapped_column(Text, default="")

    runs: Mapped[list["JobRun"]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                order_by="JobRun.id")
    sends: Mapped[list["Send"]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                               order_by="Send.id")


class JobRun(Base):
    """Execution log: one row per claim of a job by a worker."""

    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    worker: Mapped[str] = mapped_column(String(128), default="")
    lease_token: Mapped[str] = mapped_column(String(64), default="")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    result: Mapped[str] = mapped_column(String(16), default="")  # '' running | done | failed | retry | dead | lost
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="runs")


class Send(Base):
    """Delivery of one job's result files to one destination."""

    __tablename__ = "sends"
    __table_args__ = (UniqueConstraint("job_id", "destination", name="uq_sends_job_dest"),
                      Index("ix_sends_claim", "state", "not_before"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=SEND_QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    not_before: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    n_files: Mapped[int] = mapped_column(Integer, default=0)
    n_acknowledged: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)

    job: Mapped[Job] = relationship(back_populates="sends")


class Event(Base):
    """Plain-words audit log entry (never patient names or IDs: UIDs and job ids only)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    level: Mapped[str] = mapped_column(String(8), default="INFO")  # INFO | WARNING | ERROR
    kind: Mapped[str] = mapped_column(String(32), default="")  # receive | assembly | job | send | node
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    send_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")


def add_event(session: Session, message: str, *, kind: str = "node", level: str = "INFO", study_uid: str = "",
              job_id: int | None = None, send_id: int | None = None) -> None:
    """Append an audit event in the caller's transaction (message in plain words, no patient identifiers)."""
    session.add(Event(message=message, kind=kind, level=level, study_uid=study_uid, job_id=job_id,
                      send_id=send_id))


# ------------------------------------------------------------------------------------------------------- engine

class Database:
    """Engine + session factory of the node database; upgrades its schema to the newest migration on first use.

    ``create=False``: use the database as it is (a child process of a node that already upgraded it).
    """

    def __init__(self, url: str, create: bool = True, sqlite_synchronous: str = "FULL"):
        self.url = url
        self.engine = make_engine(url, sqlite_synchronous)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        if create:
            self.upgrade()

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest Alembic revision (node.store.migrate.upgrade: idempotent, under a lock
        when several processes start together; a pre-migration database is stamped first); (before, after)."""
        return upgrade(self.engine)

    create_all = upgrade  # the name callers used before migrations

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: commit on success, roll back on error, always closed."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def new_session(self) -> Session:
        """A plain session the caller manages (commit/close)."""
        return self._sessions()

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def open_database(cfg) -> Database:
    """The database of a :class:`node.config.NodeConfig` (``node.database`` or SQLite under ``node.data_dir``)."""
    return Database(cfg.node.database_url())
