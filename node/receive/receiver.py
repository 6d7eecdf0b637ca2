"""The DICOM listener: a pynetdicom Storage SCP (C-ECHO, C-STORE of every storage class, any transfer syntax).

An instance is acknowledged (0x0000) only after its bytes, exactly as received, are durably in the spool AND it is
indexed in the database.  Otherwise the sender gets a failure status and may re-send:

* 0xA700 (out of resources): free disk below ``node.min_free_disk_mb``, disk full, or the database unavailable;
  the listener recovers by itself when space returns.
* 0xC210 (cannot understand): the dataset cannot be decoded, is cut short (an element runs past its end), names
  another SOP Instance UID than the command, or holds a UID that is not valid (over 64 characters, not digits and
  dots, an empty component or a leading zero); 0xC212: StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID
  missing; 0xC213: the instance contradicts the index (its SOP Instance UID stored under another study or series,
  its Series UID under another study, its study holding another patient): refused, never merged.  The association
  and the node go on.

Instances retrieved by the node's own C-MOVE/C-GET arrive here as C-STORE too.  Calling AE titles may be limited
(``node.allowed_callers``: other callers' associations are rejected); DICOM TLS when ``node.tls`` is set.

Broken and hostile peers (:mod:`node.receive._peer_guard`): an accepted connection must deliver its A-ASSOCIATE-RQ within
``node.acse_timeout_s`` of connecting; one address holds at most ``node.max_associations_per_address`` connections;
``node.allowed_addresses`` is applied at accept and ``node.allowed_callers`` from the RQ's first 74 bytes; a PDU over
``node.max_pdu_bytes`` is refused from its header; a data set over ``node.max_dataset_bytes`` (or a deflated one
inflating beyond :func:`node.receive.part10.inflated_limit`) is answered 0xA700 without being kept.  :meth:`Receiver.stop`
aborts every association within seconds and drains the C-STOREs already running.

Throughput (group commit): a C-STORE handler parses the header from the request's stream (:mod:`node.receive.part10`),
writes the file meta it encodes itself followed by the data set exactly as received (temp file, rename,
``fdatasync``; the SHA-256 is computed meanwhile) and hands the header to the receiver's
:class:`node.receive.index.IndexWriter`, which fsyncs each spool folder of a batch once, indexes the batch in one
transaction and only then releases the handlers: the ack still means "bytes and name fsynced, row committed", but
concurrent associations share the folder fsyncs and the database commit.  No read transaction is opened per
instance: an instance whose spool file already holds the same bytes (a re-send) is not rewritten, and the
writer's transaction decides 'new' / 'same' / 'replaced'.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import (ALL_TRANSFER_SYNTAXES, AE, PYNETDICOM_IMPLEMENTATION_UID,
                        PYNETDICOM_IMPLEMENTATION_VERSION, AllStoragePresentationContexts, evt)
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target

from node.receive import _peer_guard, reactor_wakeup
from node.store.db import Database
from node.receive.index import INDEXED_KEYWORDS, IndexWriter, UidConflict, conflict, header_problem, record_instance
from node.receive.part10 import (PREAMBLE, DatasetTooLarge, IncompleteDataset, check_complete, check_header, file_meta_bytes,
                     inflated_limit, is_complete, read_header)
from node.receive.shared_listener import ReceiverLoad, SharedListenerServer
from node.receive.spool import Spool, SpoolFullError, fsync_dir

log = logging.getLogger(__name__)

STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_MISSING_UIDS = 0xC212
STATUS_UID_CONFLICT = 0xC213  # the instance contradicts the index (node.receive.index.UidConflict): refused, never merged


def tls_context(tls) -> ssl.SSLContext:
    """Server-side SSL context from :class:`node.config.TlsSettings` (client certificates when required)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


def set_tcp_nodelay(event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    pynetdicom leaves Nagle on; with the peer's delayed ACKs every small C-STORE-RSP then waits ~40 ms, which caps one
    association at ~25 instances/s. Used by the listener and by the node's outgoing associations.
    """
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # TLS-wrapped or already closed: nothing to tune
        pass


class Receiver:
    """The Storage SCP of a node: ``start()`` listens in background threads, ``stop()`` closes it.

    ``listen_socket``/``load``: several receiver processes share one listening socket (see
    :mod:`node.receive.shared_listener`); this process accepts a connection when it is the least busy.  Without them the
    receiver binds ``node.host:node.port`` itself (a busy port is an error, as for any listener)."""

    def __init__(self, cfg, db: Database, spool: Spool, *, listen_socket: socket.socket | None = None,
                 load: ReceiverLoad | None = None):
        self.cfg = cfg
        self.db = db
        self.spool = spool
        self.listen_socket = listen_socket
        self.load = load
        self.server = None
        self.stored = 0  # instances acknowledged since start
        self._lock = threading.Lock()
        self.writer: IndexWriter | None = None
        self.index_db: Database | None = None
        self.guard = _peer_guard.Guard.from_settings(cfg.node)  # limits against broken and hostile peers
        self._busy: dict[int, int] = {}  # id(association) -> C-STORE handlers running on it (shutdown drains them)

    def make_ae(self) -> AE:
        """The configured application entity (contexts, timeouts, allow-list)."""
        n = self.cfg.node
        ae = AE(ae_title=n.ae_title)
        ae.maximum_associations = n.max_associations
        ae.acse_timeout = n.acse_timeout_s
        ae.dimse_timeout = n.dimse_timeout_s
        ae.network_timeout = n.network_timeout_s
        ae.require_calling_aet = list(n.allowed_callers)
        # what the node announces as the largest PDU it takes; a longer one is refused from its header
        ae.maximum_pdu_size = n.max_pdu_bytes
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Start listening on node.host:node.port (non-blocking)."""
        n = self.cfg.node
        reactor_wakeup.install()  # pynetdicom's reactors wait for events instead of polling every 1 ms
        if not _peer_guard.install():  # timeouts from the first byte, PDU / data set limits (node.receive._peer_guard)
            raise RuntimeError("the DICOM listener cannot apply its limits against hostile peers with this "
                               "pynetdicom version (pyproject.toml pins pynetdicom 3.0.x)")
        self.guard.closing.clear()
        ae = self.make_ae()
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda e: STATUS_OK),
                    (evt.EVT_CONN_OPEN, set_tcp_nodelay)]
        ctx = tls_context(n.tls) if n.tls else None
        # SQLite: the index writer's own connection commits without a WAL fsync (synchronous=NORMAL). What an
        # acknowledgement promises still holds: the file and its rename are fsynced first, a commit survives a
        # crash of the process, and after a power loss reindex_spool() (at start-up) indexes spool files whose
        # rows did not reach the disk. PostgreSQL keeps its server's commit settings.
        self.index_db = self.db if self.db.is_postgres else \
            Database(self.db.url, create=False, sqlite_synchronous="NORMAL" if self.spool.fsync else "FULL")
        self.writer = IndexWriter(self.index_db, fsync_dirs=self.spool.fsync)
        self.writer.start()
        if self.listen_socket is not None:  # what AE.start_server(block=False) does, on the shared socket
            handlers.append((evt.EVT_CONN_CLOSE, lambda e: server.connection_closed()))
            server = ae.make_server((n.host, n.port), evt_handlers=handlers, ssl_context=ctx,
                                    server_class=SharedListenerServer, listen_socket=self.listen_socket,
                                    load=self.load, guard=self.guard)
        else:  # what AE.start_server(block=False) does, with the guarded server class
            server = ae.make_server((n.host, n.port), evt_handlers=handlers, ssl_context=ctx,
                                    server_class=_peer_guard.GuardedServer, guard=self.guard)
        threading.Thread(target=make_target(server.serve_forever), name="AcceptorServer", daemon=True).start()
        ae._servers.append(server)
        self.server = server
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard handlers format a log line per PDU and DIMSE message even when it is dropped
            from pynetdicom import _handlers
            for event, handler in ((evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
                                   (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
                                   (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
                                   (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler)):
                try:
                    self.server.unbind(event, handler)
                except (ValueError, KeyError):
                    pass
        log.info("DICOM listener %s on %s:%d%s", n.ae_title, n.host, n.port, " (TLS)" if ctx else "")

    def stop(self, drain_s: float = 3.0) -> None:
        """Stop in seconds: stop accepting, answer new C-STOREs 0xA700, abort half-open and idle associations at
        once, let C-STORE handlers already running finish (at most ``drain_s``), abort the rest, then index what
        is queued and stop the index writer.  Whatever was acknowledged is on disk and indexed."""
        server, self.server = self.server, None
        if server is not None:
            self.guard.closing.set()
            t0 = time.monotonic()
            stopper = threading.Thread(target=server.shutdown, name="AcceptorServer-stop", daemon=True)
            stopper.start()  # the accept loop ends within its poll interval; meanwhile the connections end
            counts = server.abort_all(in_handler=lambda a: self._busy.get(id(a), 0) > 0, drain_s=drain_s)
            stopper.join(5.0)
            if counts["connections"]:
                log.info("DICOM listener stopped in %.1f s: %d connection(s) ended (%d still storing after %.0f s, "
                         "%d reactor(s) left)", time.monotonic() - t0, counts["connections"],
                         counts["waited_for_handlers"], drain_s, counts["threads_left"])
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.index_db is not None and self.index_db is not self.db:
            self.index_db.dispose()
        self.index_db = None

    # ------------------------------------------------------------------------------------------- C-STORE
    def handle_store(self, event) -> int:
        """C-STORE handler: spool (durable) + index, then 0x0000; a failure status with a logged reason else.

        The data set's bytes are taken as received (no copy into one Part 10 string): the file is the preamble and
        file meta from :mod:`node.receive.part10` followed by those bytes, written with one ``writev``."""
        calling = (event.assoc.requestor.ae_title or "").strip()

        def req_uid() -> str:  # only for log lines (reading it validates the UID: not free)
            try:
                return str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            except Exception:  # noqa: BLE001
                return ""
        key = id(event.assoc)
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            return self._handle_store(event, calling, req_uid)
        finally:
            with self._lock:
                left = self._busy.pop(key, 1) - 1
                if left > 0:
                    self._busy[key] = left

    def _handle_store(self, event, calling: str, req_uid) -> int:
        """The work of :meth:`handle_store` (which counts the handlers running, for :meth:`stop`)."""
        refused = _peer_guard.refused_reason(getattr(event.request, "DataSet", None))
        if refused:  # dropped as it arrived (node.max_dataset_bytes): logged then, answered now
            return STATUS_OUT_OF_RESOURCES
        if self.guard.closing.is_set():
            log.warning("C-STORE %s from %s not accepted (0xA700): the listener is stopping; send it again later",
                        req_uid(), calling)
            return STATUS_OUT_OF_RESOURCES
        n = self.cfg.node
        try:
            req = event.request
            dataset = req.DataSet
            ts = str(event.context.transfer_syntax)  # the accepted context's one transfer syntax
            meta = PREAMBLE + file_meta_bytes(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID), ts,
                                              implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
                                              implementation_version=PYNETDICOM_IMPLEMENTATION_VERSION,
                                              source_ae_title=calling)
        except Exception as exc:  # noqa: BLE001
            log.warning("C-STORE %s from %s: cannot read the dataset (%s)", req_uid(), calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        status, message = ingest_dataset(self.db, self.spool, meta, dataset, ts, calling_ae=calling,
                                         late_policy=self.cfg.completion.late_instances, writer=self.writer,
                                         max_dataset_bytes=n.max_dataset_bytes,
                                         max_inflation_ratio=n.max_inflation_ratio,
                                         affected_sop_uid=str(req.AffectedSOPInstanceUID))
        if status != STATUS_OK:
            log.warning("C-STORE %s from %s not accepted (0x%04X): %s", req_uid(), calling, status, message)
            return status
        with self._lock:
            self.stored += 1
        try:
            from node.ops import metrics
            metrics.INSTANCES_RECEIVED.inc()
            if self.load is not None and self.load.slot != 0:  # a child: the node process exports its count
                self.load.count_received()
        except Exception:  # noqa: BLE001 - metrics are optional
            pass
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-STORE %s from %s: %s", req_uid(), calling, message)
        return STATUS_OK


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
    from sqlalchemy import select

    from node.store.db import Instance

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
