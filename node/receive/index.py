"""The index writer: received instances → database rows (``record_instance``, the group commit of
:class:`IndexWriter`). The read queries are in :mod:`node.store.queries`.

``expect_retrieved_study(session, study_uid)`` — call before retrieving a prior (C-MOVE/C-GET to this node):
the study is then never routed nor treated as 'late'.

Group commit (:class:`IndexWriter`): the receiver does not open one transaction per instance.  Each C-STORE
handler writes its file (temp file, ``fdatasync``, rename — :meth:`node.receive.spool.Spool.write_data`) and queues the
header with :meth:`IndexWriter.index`, which blocks until its batch is durable.  One writer thread takes
everything queued (up to ``max_batch``), ``fsync``-s each distinct spool folder of the batch once (making the
renames durable), then records the whole batch in ONE transaction (one WAL commit, ``synchronous=FULL``), and
only then wakes the handlers, which answer 0x0000.  A batch of new instances of studies/series already
receiving is written with :func:`record_new_instances` on a Core connection (pre-built statements: one guarded
counter UPDATE per study and series, one multi-row INSERT; no ORM objects, no reads); anything else (new study, re-send, late instance) goes through :func:`record_instance` per instance.
Identity (never two patients in one study): UIDs are stored whole (a UID that is not valid, e.g. over 64
characters, is refused at the door: :func:`header_problem`), a SOP Instance UID stays in the study and series it
was first stored in, a Series UID in its study, and a study with its patient (PatientID + IssuerOfPatientID); an
instance that contradicts the index raises :class:`UidConflict` and is refused (the receiver answers 0xC213),
never merged.

So an acknowledged instance is always: file data fsynced, rename fsynced, index row committed — exactly the
guarantee of the one-instance-per-transaction path, with the fsyncs and the commit shared by every association.  If the batch transaction fails, each of its instances is
retried alone in its own transaction, so a bad instance fails only itself (0xA700, reason logged).  The queue is
bounded (``max_queue``): when the database is slow the handlers block, which back-pressures the senders.
"""
from __future__ import annotations

import datetime as _dt
import logging
import queue
import re
import threading
import time
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.receive.spool import fsync_dir
from node.store.db import STUDY_COMPLETE, STUDY_RECEIVING, STUDY_ROUTE_FAILED, Instance, Series, Study, add_event, utcnow
from node.store.header import parse_da, parse_ds, parse_is, text

log = logging.getLogger(__name__)


#: the header attributes the index reads: the receiver decodes them before it acknowledges, so a malformed value
#: is refused with 0xC210 at the door instead of failing the index
INDEXED_KEYWORDS = (
    "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
    "Modality", "SeriesDescription", "SeriesNumber", "ImageType", "FrameOfReferenceUID", "SliceThickness",
    "BodyPartExamined",
)


#: the UIDs that key the index (and the spool's folders); refused at the door unless valid (PS3.5 9.1)
KEY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: other UIDs the index keeps: checked when present
OTHER_UIDS = ("SOPClassUID", "FrameOfReferenceUID")
#: values that identify a patient: never cut to fit a column (two patients whose IDs differ only after the cut
#: would become one), so a longer value is refused (LO: 64 characters)
IDENTITY_LIMITS = {"PatientID": 64, "IssuerOfPatientID": 64}


_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # pydicom.uid.RE_VALID_UID, without its '$'


class UidConflict(RuntimeError):
    """An instance contradicts what the index holds (its SOP Instance UID under another study or series, its Series
    UID under another study, or its study under another patient): refused, never merged; the message says why."""


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 9.1: at most 64 characters, digits and dots only, no empty
    component, no leading zero in a component), or None when it is valid."""
    if len(value) <= 64 and _VALID_UID.fullmatch(value):
        return None
    if not value:
        return "it is empty"
    if len(value) > 64:
        return f"it is {len(value)} characters long, more than 64"
    bad = sorted({c for c in value if c not in "0123456789."})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad[:5]) + " (only digits and dots are allowed)"
    for i, part in enumerate(value.split(".")):
        if not part:
            return f"component {i + 1} is empty"
        if len(part) > 1 and part[0] == "0":
            return f"component {i + 1} ({part}) has a leading zero"
    return None


def header_problem(ds: Dataset) -> str | None:
    """Why the received header cannot be indexed as it is (a key UID that is not valid, another UID that is not
    valid, a patient identifier too long for the index), naming the attribute and the value; None when fine.

    The receiver refuses such an instance (0xC210) before it stores it: the index never cuts a UID or a patient
    ID (cut values of two patients could become one)."""
    for key in KEY_UIDS + OTHER_UIDS:
        value = text(ds, key)
        if not value and key in OTHER_UIDS:
            continue
        why = uid_problem(value)
        if why:
            return f"{key} {value[:80]!r}{'...' if len(value) > 80 else ''} is not a valid UID: {why}"
    for key, limit in IDENTITY_LIMITS.items():
        value = text(ds, key)
        if len(value) > limit:
            return (f"{key} is {len(value)} characters long, more than {limit}: refused rather than cut (two "
                    "patients whose IDs differ after the cut would become one)")
    return None


def _s(ds: Dataset, key: str, limit: int = 64, cut: list | None = None) -> str:
    """The value of ``key`` as stripped text, at most ``limit`` characters; a longer value is noted in ``cut``
    (keyword, length, limit) so that the caller can say so (identity values never get here: header_problem)."""
    v = text(ds, key)
    if len(v) > limit:
        if cut is not None:
            cut.append((key, len(v), limit))
        return v[:limit]
    return v


def _log_cut(cut: list, what: str) -> None:
    if cut:
        log.warning("%s: %s longer than the index keeps; the index holds the first characters, the spool file the "
                    "whole value", what, ", ".join(f"{k} ({n} characters, kept {lim})" for k, n, lim in cut))


@dataclass
class RecordResult:
    """What indexing one instance did: ``status`` is 'new', 'same' (identical duplicate) or 'replaced'."""

    status: str
    study_uid: str
    late: bool = False


def existing_instance(session: Session, sop_uid: str) -> Instance | None:
    """The indexed instance with this SOPInstanceUID, if any."""
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))


def conflict(session: Session, ds: Dataset) -> str | None:
    """Why indexing header ``ds`` would contradict the index (see :class:`UidConflict`), or None; reads only.

    The receiver asks before it overwrites a stored file with a re-send's other bytes, so that a refused re-send
    never replaces what was acknowledged; :func:`record_instance` checks the same again in its transaction."""
    sop_uid, study_uid = _s(ds, "SOPInstanceUID"), _s(ds, "StudyInstanceUID")
    series_uid = _s(ds, "SeriesInstanceUID")
    inst = existing_instance(session, sop_uid)
    if inst is not None and (inst.study_uid, inst.series_uid) != (study_uid, series_uid):
        return _moved(sop_uid, inst, study_uid, series_uid)
    series_of = session.scalar(select(Series.study_uid).where(Series.series_uid == series_uid))
    if series_of is not None and series_of != study_uid:
        return (f"Series Instance UID {series_uid} already belongs to study {series_of}: instance {sop_uid} of "
                f"study {study_uid} refused (a series is never shared by two studies)")
    row = session.execute(select(Study.patient_id, Study.issuer, Study.n_instances)
                          .where(Study.study_uid == study_uid)).first()
    if row is not None and row[2] > 0 and (row[0], row[1]) != (_s(ds, "PatientID"), _s(ds, "IssuerOfPatientID")):
        return (f"study {study_uid} already holds another patient's instances (PatientID or IssuerOfPatientID "
                f"differ): instance {sop_uid} refused, two patients are never merged into one study")
    return None


def _savepoints(session: Session) -> bool:
    """Savepoints guard concurrent inserts on PostgreSQL; SQLite transactions are IMMEDIATE (one writer)."""
    return session.bind.dialect.name != "sqlite"


def _get_or_create(session: Session, model, key: dict, defaults):
    """The row with ``key`` (locked FOR UPDATE on PostgreSQL so counters cannot lose updates), created if missing.

    ``defaults``: the new row's other values, a dict or a callable returning one (evaluated only when created)."""
    q = select(model).filter_by(**key)
    if _savepoints(session):
        q = q.with_for_update()
    obj = session.scalar(q)
    if obj is not None:
        return obj, False
    if callable(defaults):
        defaults = defaults()
    if not _savepoints(session):
        obj = model(**key, **defaults)
        session.add(obj)
        session.flush()
        return obj, True
    try:
        with session.begin_nested():
            obj = model(**key, **defaults)
            session.add(obj)
        return obj, True
    except IntegrityError:  # created concurrently by another association (PostgreSQL)
        return session.scalar(q), False


class BatchCache:
    """Rows already loaded in the current transaction, so that indexing a batch of instances costs one query per
    distinct study/series and one for all SOP instance UIDs instead of three queries and a flush per instance.

    Only valid inside ONE session/transaction; create a new one per transaction."""

    def __init__(self, session: Session, sop_uids: list[str] | None = None):
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.instances: dict[str, Instance | None] = {}
        uids = sorted(set(sop_uids or ()))
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            found = {r.sop_instance_uid: r for r in
                     session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(chunk)))}
            for u in chunk:
                self.instances[u] = found.get(u)


def _existing(session: Session, sop_uid: str, cache: BatchCache | None) -> Instance | None:
    if cache is not None and sop_uid in cache.instances:
        return cache.instances[sop_uid]
    inst = existing_instance(session, sop_uid)
    if cache is not None:
        cache.instances[sop_uid] = inst
    return inst


def _cached_get_or_create(session: Session, model, key: dict, defaults: dict, cache: BatchCache | None):
    if cache is None:
        return _get_or_create(session, model, key, defaults)
    memo = cache.studies if model is Study else cache.series
    k = next(iter(key.values()))
    if k in memo:
        return memo[k], False
    obj, created = _get_or_create(session, model, key, defaults)
    memo[k] = obj
    return obj, created


def _moved(sop_uid: str, inst: Instance, study_uid: str, series_uid: str) -> str:
    return (f"SOP Instance UID {sop_uid} is already stored in study {inst.study_uid}, series {inst.series_uid}; this "
            f"copy names study {study_uid}, series {series_uid}: refused (an instance never moves to another study "
            "or series, so one patient's image cannot enter another patient's series; delete it on the node first "
            "to file it again)")


def record_instance(session: Session, ds: Dataset, *, path: Path, size: int, sha256: str, transfer_syntax: str,
                    calling_ae: str, late_policy: str = "follow_up", now: _dt.datetime | None = None,
                    cache: BatchCache | None = None) -> RecordResult:
    """Index one stored instance (header ``ds``) in the caller's transaction.

    Creates/updates the study and series rows.  An instance of a study that was already routed is 'late':
    with ``late_policy='follow_up'`` the study goes back to 'receiving' (a follow-up round is routed once it is
    quiet again); with 'ignore' it is only counted and logged.  ``cache`` (a :class:`BatchCache` of this
    transaction) lets many calls in one transaction share the study/series rows and one instance lookup.
    """
    now = now or utcnow()
    problem = header_problem(ds)
    if problem:  # the receiver refuses these at the door; nothing may cut a UID or a patient ID to fit
        raise ValueError(problem)
    sop_uid = _s(ds, "SOPInstanceUID")
    study_uid = _s(ds, "StudyInstanceUID")
    series_uid = _s(ds, "SeriesInstanceUID")
    inst = _existing(session, sop_uid, cache)
    if inst is not None and (inst.study_uid, inst.series_uid) != (study_uid, series_uid):
        raise UidConflict(_moved(sop_uid, inst, study_uid, series_uid))
    if inst is not None and inst.sha256 == sha256:
        return RecordResult("same", inst.study_uid)
    patient = (_s(ds, "PatientID"), _s(ds, "IssuerOfPatientID"))
    cut: list = []

    def header() -> dict:
        return dict(
            patient_id=patient[0], issuer=patient[1],
            patient_name=_s(ds, "PatientName", 324, cut), birth_date=parse_da(ds.get("PatientBirthDate")),
            sex=_s(ds, "PatientSex", 16, cut), study_date=parse_da(ds.get("StudyDate")),
            study_time=_s(ds, "StudyTime", 16, cut), description=_s(ds, "StudyDescription", 128, cut),
            accession_number=_s(ds, "AccessionNumber", 64, cut), calling_ae=calling_ae[:16])

    study, created = _cached_get_or_create(session, Study, {"study_uid": study_uid}, lambda: dict(
        header(), first_received_at=now, last_received_at=now, round_started_at=now, state=STUDY_RECEIVING), cache)
    if not created and study.n_instances == 0:  # pre-created by expect_retrieved_study
        for k, v in header().items():
            setattr(study, k, v)
        study.first_received_at = now
    elif not created and (study.patient_id, study.issuer) != patient:
        raise UidConflict(f"study {study_uid} already holds another patient's instances (PatientID or "
                          f"IssuerOfPatientID differ): instance {sop_uid} refused, two patients are never merged "
                          "into one study")
    series, _ = _cached_get_or_create(session, Series, {"series_uid": series_uid}, lambda: dict(
        study_id=study.id, study_uid=study_uid, modality=_s(ds, "Modality", 16, cut),
        description=_s(ds, "SeriesDescription", 128, cut), number=parse_is(ds.get("SeriesNumber")),
        image_type=_s(ds, "ImageType", 128, cut), sop_class_uid=_s(ds, "SOPClassUID"),
        frame_of_reference_uid=_s(ds, "FrameOfReferenceUID"), slice_thickness_mm=parse_ds(ds.get("SliceThickness")),
        body_part=_s(ds, "BodyPartExamined", 64, cut), first_received_at=now, last_received_at=now), cache)
    if series.study_uid != study_uid or series.study_id != study.id:
        raise UidConflict(f"Series Instance UID {series_uid} already belongs to study {series.study_uid}: instance "
                          f"{sop_uid} of study {study_uid} refused (a series is never shared by two studies)")
    _log_cut(cut, f"instance {sop_uid}")

    late = False
    if study.origin != "retrieved" and study.state in (STUDY_COMPLETE, STUDY_ROUTE_FAILED) and not created:
        late = study.state == STUDY_COMPLETE
        if late:
            study.late_instances += 1
            if late_policy == "follow_up":
                if not study.follow_up_pending:
                    add_event(session, f"instance {sop_uid} arrived after the study was processed; a follow-up "
                              "will run once the study is quiet again", kind="assembly", study_uid=study_uid)
                study.follow_up_pending = True
                study.state = STUDY_RECEIVING
                study.round_started_at = now
            elif study.late_instances == 1:
                add_event(session, f"instance {sop_uid} arrived after the study was processed; ignored "
                          "(completion.late_instances: ignore)", kind="assembly", level="WARNING",
                          study_uid=study_uid)
        else:  # routing failed earlier: new data, try again
            study.state = STUDY_RECEIVING
            study.round_started_at = now

    if inst is None:
        study.n_instances += 1
        study.size_bytes += size
        series.n_instances += 1
        status = "new"
        try:
            with (session.begin_nested() if _savepoints(session) else _nullcontext()):
                row = Instance(
                    sop_instance_uid=sop_uid, sop_class_uid=_s(ds, "SOPClassUID"), series_uid=series_uid,
                    study_uid=study_uid, instance_number=parse_is(ds.get("InstanceNumber")), path=str(path),
                    size_bytes=size, sha256=sha256, transfer_syntax=transfer_syntax, calling_ae=calling_ae[:16],
                    received_at=now, late=late, versions=1)
                session.add(row)
            if cache is not None:
                cache.instances[sop_uid] = row
        except IntegrityError:  # the same SOP instance indexed concurrently: treat as a replacement
            inst = existing_instance(session, sop_uid)
            if cache is not None:
                cache.instances[sop_uid] = inst
            study.n_instances -= 1
            study.size_bytes -= size
            series.n_instances -= 1
    if inst is not None:
        status = "replaced" if inst.sha256 != sha256 else "same"
        if status == "replaced":
            study.size_bytes += size - inst.size_bytes
            inst.path, inst.size_bytes, inst.sha256 = str(path), size, sha256
            inst.transfer_syntax, inst.calling_ae, inst.received_at = transfer_syntax, calling_ae[:16], now
            inst.versions += 1
            inst.late = inst.late or late
            log.warning("instance %s re-sent with different content; the newer copy replaces it", sop_uid)
    if status != "same":
        study.last_received_at = now
        series.last_received_at = now
    return RecordResult(status, study_uid, late)


_T_INSTANCE, _T_STUDY, _T_SERIES = Instance.__table__, Study.__table__, Series.__table__
#: the fast path's statements, built once (no per-call statement construction or cache-key generation)
_FAST_STUDY = (update(_T_STUDY)
               .where(_T_STUDY.c.study_uid == bindparam("b_uid"), _T_STUDY.c.state == STUDY_RECEIVING,
                      _T_STUDY.c.n_instances > 0, _T_STUDY.c.patient_id == bindparam("b_pid"),
                      _T_STUDY.c.issuer == bindparam("b_issuer"))
               .values(n_instances=_T_STUDY.c.n_instances + bindparam("b_n"),
                       size_bytes=_T_STUDY.c.size_bytes + bindparam("b_bytes"), last_received_at=bindparam("b_now")))
_FAST_SERIES = (update(_T_SERIES).where(_T_SERIES.c.series_uid == bindparam("b_uid"),
                                        _T_SERIES.c.study_uid == bindparam("b_study"))
                .values(n_instances=_T_SERIES.c.n_instances + bindparam("b_n"), last_received_at=bindparam("b_now")))
_FAST_INSERT = insert(_T_INSTANCE)


class _NotFastPath(Exception):
    """The batch needs :func:`record_instance` (new study or series, a study no longer receiving, a re-send)."""


def record_new_instances(conn, entries: list[tuple[Dataset, dict]],
                         now: _dt.datetime | None = None) -> list[RecordResult] | None:
    """Fast path of :func:`record_instance` for a batch, on a Core connection inside the caller's transaction.

    ``entries``: (header, record_instance keyword arguments) pairs.  Applies only when every SOP instance is new
    (not indexed, not twice in the batch), every study is already ``receiving`` with instances and every series
    exists: then record_instance would only insert the instance rows and add to the study/series counters and
    "last received" times, which this does with one guarded ``UPDATE ... SET n = n + k WHERE state='receiving'``
    per study (which also locks the study row on PostgreSQL, as record_instance's FOR UPDATE does; it matches only
    the study's own patient), one per series (only of that study), and one multi-row INSERT.  Returns None when the batch does not qualify; the caller must then roll
    the transaction back (statements may have run) and take the general path."""
    now = now or utcnow()
    rows, per_study, per_series, patients = [], {}, {}, {}
    for ds, kw in entries:
        if header_problem(ds):
            return None  # record_instance refuses it, naming the problem
        sop, study_uid, series_uid = _s(ds, "SOPInstanceUID"), _s(ds, "StudyInstanceUID"), _s(ds, "SeriesInstanceUID")
        patient = (_s(ds, "PatientID"), _s(ds, "IssuerOfPatientID"))
        if patients.setdefault(study_uid, patient) != patient:
            return None  # two patients in one study within the batch: record_instance refuses the second
        size = int(kw["size"])
        rows.append(dict(
            sop_instance_uid=sop, sop_class_uid=_s(ds, "SOPClassUID"), series_uid=series_uid, study_uid=study_uid,
            instance_number=parse_is(ds.get("InstanceNumber")), path=str(kw["path"]), size_bytes=size,
            sha256=kw["sha256"], transfer_syntax=kw["transfer_syntax"], calling_ae=kw["calling_ae"][:16],
            received_at=now, versions=1, late=False))
        n, b = per_study.get(study_uid, (0, 0))
        per_study[study_uid] = (n + 1, b + size)
        if per_series.setdefault(series_uid, (study_uid, 0))[0] != study_uid:
            return None  # one Series UID under two studies within the batch
        per_series[series_uid] = (study_uid, per_series[series_uid][1] + 1)
    uids = [r["sop_instance_uid"] for r in rows]
    if not rows or len(set(uids)) != len(uids):
        return None
    for uid in sorted(per_study):  # one lock order for every writer
        n, b = per_study[uid]
        pid, issuer = patients[uid]
        if conn.execute(_FAST_STUDY, {"b_uid": uid, "b_n": n, "b_bytes": b, "b_now": now, "b_pid": pid,
                                      "b_issuer": issuer}).rowcount != 1:
            return None  # not receiving, new, or another patient's study: the general path decides
    for uid in sorted(per_series):
        study_uid, k = per_series[uid]
        if conn.execute(_FAST_SERIES, {"b_uid": uid, "b_study": study_uid, "b_n": k, "b_now": now}).rowcount != 1:
            return None  # a new series, or one of another study: the general path decides
    try:
        conn.execute(_FAST_INSERT, rows)
    except IntegrityError:  # an instance is indexed already (a re-send): the general path decides
        return None
    return [RecordResult("new", r["study_uid"], False) for r in rows]


def expect_retrieved_study(session: Session, study_uid: str) -> None:
    """Mark ``study_uid`` as a prior the node retrieves itself: its instances are indexed but never routed."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        session.add(Study(study_uid=study_uid, origin="retrieved", state=STUDY_COMPLETE))
    elif study.n_instances == 0:
        study.origin = "retrieved"
        study.state = STUDY_COMPLETE


# ------------------------------------------------------------------------------------------------ group commit

class IndexingError(RuntimeError):
    """Indexing an instance failed (the message says why in plain words)."""


class _Item:
    __slots__ = ("ds", "kw", "folder", "done", "result", "error")

    def __init__(self, ds: Dataset, kw: dict, folder: Path | None):
        self.ds, self.kw, self.folder = ds, kw, folder
        self.done = threading.Event()
        self.result: RecordResult | None = None
        self.error: BaseException | None = None


_STOP = object()


class IndexWriter:
    """One thread that indexes queued instances in batches (group commit); see the module docstring.

    ``db`` is a :class:`node.store.db.Database`; ``fsync_dirs`` False skips the folder fsync (spool with fsync off).
    """

    def __init__(self, db, *, max_batch: int = 128, max_queue: int = 512, fsync_dirs: bool = True,
                 name: str = "index-writer"):
        self.db = db
        self.max_batch = max_batch
        self.fsync_dirs = fsync_dirs
        self.name = name
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self.batches = 0  # committed batches (for tests and metrics)
        self.indexed = 0  # instances indexed
        self.max_linger_s = 0.015  # longest the writer waits for an announced instance to join a batch
        self._producing = 0  # handlers between announce() and index(): their instance is about to be queued
        self._plock = threading.Lock()

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Index what is queued, then stop the thread (waits up to ``timeout`` s)."""
        with self._lock:
            t = self._thread
            self._stopping = True
        if t is not None and t.is_alive():
            self._q.put(_STOP)
            t.join(timeout)
        with self._lock:
            self._thread = None
            self._stopping = False
        if self.batches:
            log.info("index writer: %d instances in %d batches (%.1f per commit)", self.indexed, self.batches,
                     self.indexed / self.batches)

    def announce(self) -> None:
        """A handler has an instance in hand that it will :meth:`index` (or :meth:`withdraw`) soon: the writer
        then waits up to ``max_linger_s`` for it, so concurrent associations share one commit."""
        with self._plock:
            self._producing += 1

    def withdraw(self) -> None:
        """Undo :meth:`announce` (the instance will not be indexed: refused, or already queued)."""
        with self._plock:
            self._producing = max(0, self._producing - 1)

    def index(self, ds: Dataset, *, folder: Path | None, timeout: float = 120.0, **kw) -> RecordResult:
        """Index one instance whose file is written (``folder``: its spool folder, fsync-ed before the commit).

        ``kw`` are :func:`record_instance`'s keyword arguments.  Blocks until the instance's batch is committed;
        raises :class:`IndexingError` (or the database error) when it was not indexed."""
        if self._stopping or self._thread is None or not self._thread.is_alive():
            raise IndexingError("the index writer is not running (the listener is stopping)")
        item = _Item(ds, kw, folder)
        try:
            self._q.put(item, timeout=timeout)
        except queue.Full:
            raise IndexingError(f"the index queue stayed full for {timeout:.0f} s (database too slow)") from None
        deadline = time.monotonic() + timeout
        while not item.done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise IndexingError(f"the database did not commit within {timeout:.0f} s")
            t = self._thread
            if (t is None or not t.is_alive()) and not item.done.is_set():
                raise IndexingError("the index writer stopped before this instance was indexed")
        if item.error is not None:
            raise item.error
        return item.result

    # ------------------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + self.max_linger_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if self._producing <= 0 or left <= 0:
                        break
                    try:  # another association is writing its file: let it join this batch
                        nxt = self._q.get(timeout=left)
                    except queue.Empty:
                        break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - never leave a handler waiting
                log.exception("index batch failed")
                for it in batch:
                    if not it.done.is_set():
                        it.error = it.error or exc
                        it.done.set()
        # anything queued after the stop marker (handlers still running) is indexed too
        rest = []
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if it is not _STOP:
                rest.append(it)
        if rest:
            self._commit(rest)

    def _fast(self, todo: list) -> list[RecordResult] | None:
        """The batch through :func:`record_new_instances` in its own transaction; None (rolled back) when it
        needs the general path."""
        conn = self.db.engine.connect()
        try:
            tx = conn.begin()
            try:
                results = record_new_instances(conn, [(it.ds, it.kw) for it in todo])
            except IntegrityError:
                results = None
            if results is None:
                tx.rollback()
            else:
                tx.commit()
            return results
        finally:
            conn.close()

    def _commit(self, batch: list) -> None:
        if self.fsync_dirs:
            for folder in {it.folder for it in batch if it.folder is not None}:
                try:
                    fsync_dir(folder)
                except OSError as exc:
                    for it in batch:
                        if it.folder == folder:
                            it.error = OSError(f"cannot make spool folder durable: {exc}")
                            it.done.set()
        todo = [it for it in batch if not it.done.is_set()]
        if not todo:
            return
        try:
            results = self._fast(todo)
            if results is None:  # a new study/series, a re-send, a late instance...: the general path
                with self.db.session() as s:
                    cache = BatchCache(s, [_s(it.ds, "SOPInstanceUID") for it in todo])
                    results = [record_instance(s, it.ds, cache=cache, **it.kw) for it in todo]
        except Exception as exc:  # noqa: BLE001 - find the culprit(s): one transaction per instance
            if len(todo) > 1:
                log.warning("index batch of %d failed (%s); indexing them one by one", len(todo),
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            for it in todo:
                try:
                    with self.db.session() as s:
                        it.result = record_instance(s, it.ds, **it.kw)
                    self.indexed += 1
                except (UidConflict, ValueError) as exc1:  # refused for what it says: no traceback needed
                    log.warning("indexing %s refused: %s", _s(it.ds, "SOPInstanceUID"), exc1)
                    it.error = exc1
                except Exception as exc1:  # noqa: BLE001
                    log.exception("indexing %s failed", _s(it.ds, "SOPInstanceUID"))
                    it.error = exc1
                it.done.set()
            self.batches += 1
            return
        self.batches += 1
        self.indexed += len(todo)
        for it, res in zip(todo, results):
            it.result = res
            it.done.set()
