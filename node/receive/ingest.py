"""Ingest: one received instance → a durable spool file + its index row, or a refusal with a DIMSE status.

Used by the C-STORE handler (:func:`ingest_dataset`, the data set as received), by C-GET retrieval of priors
(:func:`ingest`, a Part 10 byte string) and at start-up (:func:`reindex_spool`: spool files whose rows were lost).
Nothing is acknowledged unless the file's data and its rename are fsynced and the index row is committed.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import UID

from sqlalchemy import select

from node.receive.index import INDEXED_KEYWORDS, IndexWriter, UidConflict, conflict, header_problem, record_instance
from node.receive.part10 import (DatasetTooLarge, IncompleteDataset, check_complete, check_header, inflated_limit,
                                 is_complete, read_header)
from node.receive.spool import Spool, SpoolFullError, fsync_dir
from node.store.db import Database, Instance

log = logging.getLogger("node.receive.receiver")

STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_MISSING_UIDS = 0xC212
STATUS_UID_CONFLICT = 0xC213  # the instance contradicts the index (node.receive.index.UidConflict): refused, never merged


_HASHER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-sha256")


def _sha256(parts: list) -> str:
    """SHA-256 (hex) of the concatenated buffers."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _same_file(path, parts: list, size: int, sha: str) -> bool:
    """True when ``path`` already holds exactly the bytes of ``parts`` (a re-send): no rewrite needed."""
    try:
        if path.stat().st_size != size:
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha
    except OSError:
        return False


def ingest(db: Database, spool: Spool, data: bytes, *, calling_ae: str, late_policy: str = "follow_up",
           writer: IndexWriter | None = None) -> tuple[int, str]:
    """Store one DICOM Part 10 byte string durably in the spool and index it: (DIMSE status, plain message).

    Used by C-GET retrieval (without ``writer``: one transaction of its own) and by tests; the C-STORE handler
    uses :func:`ingest_dataset`.  Nothing is acknowledged unless both steps succeeded: the file's data and its
    rename are fsynced and the index row is committed before this returns STATUS_OK."""
    def header():
        ds = check_header(dcmread(BytesIO(data), stop_before_pixels=True), INDEXED_KEYWORDS)
        ts = str(ds.file_meta.TransferSyntaxUID)
        _check_integrity(ds, memoryview(data)[_dataset_offset(data):], ts)
        return ds, ts
    return _ingest(db, spool, [data], header, calling_ae, late_policy, writer)


def ingest_dataset(db: Database, spool: Spool, meta: bytes, dataset: BytesIO, transfer_syntax: str, *,
                   calling_ae: str, late_policy: str = "follow_up", writer: IndexWriter | None = None,
                   max_dataset_bytes: int | None = None, max_inflation_ratio: float = 100.0,
                   affected_sop_uid: str | None = None) -> tuple[int, str]:
    """Like :func:`ingest` for a C-STORE's data set as received: ``meta`` is the preamble + File Meta
    Information (:func:`node.receive.part10.file_meta_bytes`), ``dataset`` the request's data set stream in
    ``transfer_syntax``.  The file is ``meta`` followed by the data set's bytes, neither copied nor re-encoded.
    A data set over ``max_dataset_bytes``, or a deflated one inflating beyond
    :func:`node.receive.part10.inflated_limit`, is answered 0xA700 and nothing is written.  A data set cut short (an element
    running past its end) or whose SOP Instance UID is not the command's ``affected_sop_uid`` is refused (0xC210)."""
    buf = dataset.getbuffer()
    limit = None
    if max_dataset_bytes is not None:
        size = len(buf)
        if size > max_dataset_bytes:
            buf.release()
            return STATUS_OUT_OF_RESOURCES, (f"the data set is {size} bytes, more than {max_dataset_bytes} "
                                             "(node.max_dataset_bytes)")
        limit = inflated_limit(size, max_dataset_bytes, max_inflation_ratio)

    def header():
        dataset.seek(0)
        walked: dict = {}  # a deflated data set's structure is walked by read_header in its one streamed pass
        ds = read_header(dataset, transfer_syntax, INDEXED_KEYWORDS, max_inflated_bytes=limit, structure=walked)
        _check_integrity(ds, buf, transfer_syntax, walked.get("has_pixels"))
        return ds, transfer_syntax
    try:
        return _ingest(db, spool, [meta, buf], header, calling_ae, late_policy, writer, affected_sop_uid)
    finally:
        buf.release()


def _dataset_offset(data: bytes) -> int:
    """Where the data set starts in a Part 10 byte string (after the preamble and the File Meta group)."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise IncompleteDataset("not a Part 10 file with a File Meta group length")
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def _check_integrity(ds, dataset_bytes, transfer_syntax: str, has_pixels: bool | None = None) -> None:
    """Raise :class:`node.receive.part10.IncompleteDataset` when the data set's elements do not end where its bytes end,
    or when an object of an image storage class has no pixel data (a data set cut at an element boundary).
    ``has_pixels`` given: the structure was already walked (a deflated data set, by :func:`read_header`)."""
    if has_pixels is None:
        has_pixels = check_complete(dataset_bytes, transfer_syntax)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if has_pixels is False and sop_class and "Image Storage" in UID(sop_class).name:
        raise IncompleteDataset(f"an object of {UID(sop_class).name} without pixel data: the data set is cut short")


def _ingest(db, spool, parts, header, calling_ae, late_policy, writer, affected_sop_uid=None) -> tuple[int, str]:
    if writer is not None:
        writer.announce()  # concurrent associations: let the writer wait for this one to join its batch
    announced = [writer is not None]
    try:
        return _store(db, spool, parts, header, calling_ae, late_policy, writer, announced, affected_sop_uid)
    finally:
        if announced[0]:
            writer.withdraw()


def _store(db, spool, parts, header, calling_ae, late_policy, writer, announced,
           affected_sop_uid=None) -> tuple[int, str]:
    size = sum(len(p) for p in parts)
    try:
        spool.check_space(size)
    except SpoolFullError as exc:
        return STATUS_OUT_OF_RESOURCES, str(exc)
    try:
        ds, ts = header()
        ids = {k: str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                              "SOPInstanceUID")}
    except DatasetTooLarge as exc:  # a deflate bomb: refused for its size, not as undecodable
        return STATUS_OUT_OF_RESOURCES, str(exc)
    except IncompleteDataset as exc:
        return STATUS_CANNOT_UNDERSTAND, f"the data set is incomplete: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything undecodable is 'cannot understand'
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return STATUS_CANNOT_UNDERSTAND, f"the dataset cannot be decoded ({text})"
    missing = [k for k, v in ids.items() if not v]
    if missing:
        return STATUS_MISSING_UIDS, f"the dataset has no {', '.join(missing)}"
    problem = header_problem(ds)  # UIDs are indexed whole: one that is not valid (e.g. > 64 characters) is refused
    if problem:
        return STATUS_CANNOT_UNDERSTAND, f"refused: {problem}"
    if affected_sop_uid is not None and affected_sop_uid.strip() != ids["SOPInstanceUID"]:
        return STATUS_CANNOT_UNDERSTAND, (f"the data set's SOP Instance UID {ids['SOPInstanceUID']} is not the "
                                          f"command's Affected SOP Instance UID {affected_sop_uid.strip()}")
    path = spool.path_for(ids["StudyInstanceUID"], ids["SeriesInstanceUID"], ids["SOPInstanceUID"])
    created = False
    try:
        if os.path.lexists(path):  # a re-send: the same bytes need no rewrite
            sha = _sha256(parts)
            if _same_file(path, parts, size, sha):
                folder = path.parent  # already there (maybe from an unacknowledged attempt): fsync it again
            else:  # other bytes replace the stored file: only when the index would take them
                with db.session() as s:
                    why = conflict(s, ds)
                if why:
                    return STATUS_UID_CONFLICT, why
                folder = spool.write_data(path, parts)
        else:  # hash while the file is written and synced (both release the GIL)
            created = True
            hashing = _HASHER.submit(_sha256, parts)
            try:
                folder = spool.write_data(path, parts)
            finally:
                sha = hashing.result()
        kw = dict(path=path, size=size, sha256=sha, transfer_syntax=ts, calling_ae=calling_ae,
                  late_policy=late_policy)
        if writer is not None:
            announced[0] = False
            writer.withdraw()  # about to be queued (index() blocks until its batch is committed)
            res = writer.index(ds, folder=folder, **kw)
        else:
            if spool.fsync:
                fsync_dir(folder)
            with db.session() as s:
                res = record_instance(s, ds, **kw)
    except SpoolFullError as exc:
        return STATUS_OUT_OF_RESOURCES, str(exc)
    except UidConflict as exc:  # never acknowledged: a file written for it alone is removed again
        if created:
            _remove_refused(path, sha)
        return STATUS_UID_CONFLICT, str(exc)
    except Exception as exc:  # noqa: BLE001 - database/disk trouble: the sender should retry later
        log.error("storing %s failed: %s", ids["SOPInstanceUID"], exc, exc_info=not isinstance(exc, OSError))
        return STATUS_OUT_OF_RESOURCES, f"not stored: {str(exc).splitlines()[0][:300]}"
    return STATUS_OK, f"stored {ids['SOPInstanceUID']} ({res.status}, study {res.study_uid}, {ts}, {size} bytes)"


def _remove_refused(path: Path, sha: str) -> None:
    """Remove the file written for a refused instance (never acknowledged), unless it meanwhile holds other bytes."""
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            os.unlink(path)
    except OSError as exc:
        log.warning("could not remove the refused spool file %s: %s", path, exc)


def reindex_spool(db: Database, spool: Spool, *, recent_s: float = 3600.0) -> int:
    """Start-up: index spool files that are not in the index; returns how many were indexed.

    The receiver's index commits do not wait for the WAL to reach the disk (SQLite ``synchronous=NORMAL``), so
    after a power loss the newest rows may be gone while their files (fsynced before the acknowledgement) are
    there.  Only folders changed within ``recent_s`` seconds of the newest spool change are looked at.  A file
    that cannot be read as DICOM (a write cut short before its fsync, never acknowledged) is removed.  A file whose
    SOP Instance UID the index holds at another path, or which contradicts the index (:class:`UidConflict`), or
    whose UIDs are not valid, is left where it is and not indexed: recovery never brings back a superseded copy."""
    root = spool.root
    if not root.is_dir():
        return 0
    folders = []
    for study in os.scandir(root):
        if not study.is_dir(follow_symlinks=False):
            continue
        for series in os.scandir(study.path):
            if series.is_dir(follow_symlinks=False):
                folders.append((series.stat(follow_symlinks=False).st_mtime, series.path))
    if not folders:
        return 0
    newest = max(m for m, _ in folders)
    recent = [path for m, path in folders if m >= newest - recent_s]
    indexed = 0
    for folder in recent:
        files = [e.path for e in os.scandir(folder) if e.name.endswith(".dcm") and e.is_file(follow_symlinks=False)]
        if not files:
            continue
        with db.session() as s:
            known = set(s.scalars(select(Instance.path).where(Instance.path.in_(files))))
        for path in files:
            if path in known:
                continue
            try:
                data = Path(path).read_bytes()
                ds = dcmread(BytesIO(data))
                if not is_complete(ds, data):
                    raise ValueError("the file is shorter than its elements declare")
                check_header(ds, INDEXED_KEYWORDS)
                ts = str(ds.file_meta.TransferSyntaxUID)
            except Exception as exc:  # noqa: BLE001 - never acknowledged: remove it
                log.warning("removing unreadable spool file %s (%s)", path, str(exc).splitlines()[0][:120]
                            if str(exc) else type(exc).__name__)
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            if Path(path) != spool.path_for(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                                            str(ds.get("SOPInstanceUID", ""))):
                continue  # not where the receiver would have put it: leave it alone
            problem = header_problem(ds)
            if problem:  # never acknowledged by this version; kept for a person to look at, never indexed cut
                log.warning("spool file %s is not re-indexed: %s", path, problem)
                continue
            sop = str(ds.get("SOPInstanceUID", "")).strip()
            try:
                with db.session() as s:
                    held = s.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop))
                    if held is not None and held != path:
                        raise UidConflict(f"SOP Instance UID {sop} is indexed with its file {held}")
                    record_instance(s, ds, path=Path(path), size=len(data), sha256=_sha256([data]),
                                    transfer_syntax=ts, calling_ae="", late_policy="follow_up")
            except UidConflict as exc:  # a superseded or refused copy: the index keeps the one it holds
                log.warning("spool file %s is not re-indexed (a superseded or refused copy): %s", path, exc)
                continue
            indexed += 1
    return indexed
