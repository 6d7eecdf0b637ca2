"""The DICOM listener: a pynetdicom Storage SCP (C-ECHO, C-STORE of every storage class, any transfer syntax).

An instance is acknowledged (0x0000) only after its bytes, exactly as received, are durably in the spool AND it is
indexed in the database.  Otherwise the sender gets a failure status and may re-send:

* 0xA700 (out of resources): free disk below ``node.min_free_disk_mb``, disk full, or the database unavailable;
  the listener recovers by itself when space returns.
* 0xC210 (cannot understand): the dataset cannot be decoded; 0xC212: StudyInstanceUID, SeriesInstanceUID or
  SOPInstanceUID missing.  The association and the node go on.

Instances retrieved by the node's own C-MOVE/C-GET arrive here as C-STORE too.  Calling AE titles may be limited
(``node.allowed_callers``: other callers' associations are rejected); DICOM TLS when ``node.tls`` is set.

Throughput (group commit): a C-STORE handler decodes the header, hashes the bytes, writes the file (temp file,
``fdatasync``, rename) and hands the header to the receiver's :class:`node.index.IndexWriter`, which fsyncs each
spool folder of a batch once, indexes the batch in one transaction and only then releases the handlers: the ack
still means "bytes fsynced, rename durable, row committed", but concurrent associations share the folder fsyncs
and the database commit.  No read transaction is opened per instance: an instance whose spool file already holds
the same bytes (a re-send) is not rewritten, and the writer's transaction decides 'new' / 'same' / 'replaced'.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import threading
from io import BytesIO

from pydicom import dcmread
from pynetdicom import (ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt)
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target
from pynetdicom.transport import ThreadedAssociationServer

from .db import Database
from .index import IndexWriter, record_instance
from .spool import Spool, SpoolFullError, fsync_dir

log = logging.getLogger(__name__)

STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_MISSING_UIDS = 0xC212


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


class ReusePortAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with ``SO_REUSEPORT`` set before ``bind``: several receiver processes can
    listen on the same port and the kernel spreads incoming associations (connections) across them."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class Receiver:
    """The Storage SCP of a node: ``start()`` listens in background threads, ``stop()`` closes it.

    ``reuse_port``: bind with ``SO_REUSEPORT`` (used when several receiver processes share ``node.port``, see
    :mod:`node.receiver_child`); without it a busy port is an error, as for any listener."""

    def __init__(self, cfg, db: Database, spool: Spool, *, reuse_port: bool = False):
        self.cfg = cfg
        self.db = db
        self.spool = spool
        self.reuse_port = reuse_port
        self.server = None
        self.stored = 0  # instances acknowledged since start
        self._lock = threading.Lock()
        self.writer: IndexWriter | None = None

    def make_ae(self) -> AE:
        """The configured application entity (contexts, timeouts, allow-list)."""
        n = self.cfg.node
        ae = AE(ae_title=n.ae_title)
        ae.maximum_associations = n.max_associations
        ae.acse_timeout = n.acse_timeout_s
        ae.dimse_timeout = n.dimse_timeout_s
        ae.network_timeout = n.network_timeout_s
        ae.require_calling_aet = list(n.allowed_callers)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs from the sender
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Start listening on node.host:node.port (non-blocking)."""
        n = self.cfg.node
        ae = self.make_ae()
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda e: STATUS_OK),
                    (evt.EVT_CONN_OPEN, set_tcp_nodelay)]
        ctx = tls_context(n.tls) if n.tls else None
        self.writer = IndexWriter(self.db, fsync_dirs=self.spool.fsync)
        self.writer.start()
        if self.reuse_port:  # what AE.start_server(block=False) does, with the SO_REUSEPORT server class
            server = ae.make_server((n.host, n.port), evt_handlers=handlers, ssl_context=ctx,
                                    server_class=ReusePortAssociationServer)
            threading.Thread(target=make_target(server.serve_forever), name="AcceptorServer", daemon=True).start()
            ae._servers.append(server)
            self.server = server
        else:
            self.server = ae.start_server((n.host, n.port), block=False, evt_handlers=handlers, ssl_context=ctx)
        log.info("DICOM listener %s on %s:%d%s", n.ae_title, n.host, n.port, " (TLS)" if ctx else "")

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.writer is not None:
            self.writer.stop()
            self.writer = None

    # ------------------------------------------------------------------------------------------- C-STORE
    def handle_store(self, event) -> int:
        """C-STORE handler: spool (durable) + index, then 0x0000; a failure status with a logged reason else."""
        calling = (event.assoc.requestor.ae_title or "").strip()

        def req_uid() -> str:  # only for log lines (reading it validates the UID: not free)
            try:
                return str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            except Exception:  # noqa: BLE001
                return ""
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("C-STORE %s from %s: cannot read the dataset (%s)", req_uid(), calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        status, message = ingest(self.db, self.spool, data, calling_ae=calling,
                                 late_policy=self.cfg.completion.late_instances, writer=self.writer)
        if status != STATUS_OK:
            log.warning("C-STORE %s from %s not accepted (0x%04X): %s", req_uid(), calling, status, message)
            return status
        with self._lock:
            self.stored += 1
        try:
            from node import metrics
            metrics.INSTANCES_RECEIVED.inc()
        except Exception:  # noqa: BLE001 - metrics are optional
            pass
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-STORE %s from %s: %s", req_uid(), calling, message)
        return STATUS_OK


def _same_file(path, data: bytes, sha: str) -> bool:
    """True when ``path`` already holds exactly ``data`` (a re-send): no rewrite needed."""
    try:
        if path.stat().st_size != len(data):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha
    except OSError:
        return False


def ingest(db: Database, spool: Spool, data: bytes, *, calling_ae: str, late_policy: str = "follow_up",
           writer: IndexWriter | None = None) -> tuple[int, str]:
    """Store one DICOM Part 10 byte string durably in the spool and index it: (DIMSE status, plain message).

    Used by the C-STORE handler (with the receiver's group-commit ``writer``) and by C-GET retrieval (without:
    one transaction of its own).  Nothing is acknowledged unless both steps succeeded: the file's data and its
    rename are fsynced and the index row is committed before this returns STATUS_OK."""
    if writer is None:
        return _ingest(db, spool, data, calling_ae, late_policy, None)
    announced = [True]
    writer.announce()
    try:
        return _ingest(db, spool, data, calling_ae, late_policy, writer, announced)
    finally:
        if announced[0]:
            writer.withdraw()


def _ingest(db, spool, data, calling_ae, late_policy, writer, announced=None) -> tuple[int, str]:
    try:
        spool.check_space(len(data))
    except SpoolFullError as exc:
        return STATUS_OUT_OF_RESOURCES, str(exc)
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        for elem in ds.iterall():  # decode every header element now, not later in a worker
            _ = elem.value
        ids = {k: str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                              "SOPInstanceUID")}
    except Exception as exc:  # noqa: BLE001 - anything undecodable is 'cannot understand'
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return STATUS_CANNOT_UNDERSTAND, f"the dataset cannot be decoded ({text})"
    missing = [k for k, v in ids.items() if not v]
    if missing:
        return STATUS_MISSING_UIDS, f"the dataset has no {', '.join(missing)}"
    sha = hashlib.sha256(data).hexdigest()
    path = spool.path_for(ids["StudyInstanceUID"], ids["SeriesInstanceUID"], ids["SOPInstanceUID"])
    kw = dict(path=path, size=len(data), sha256=sha, transfer_syntax=ts, calling_ae=calling_ae,
              late_policy=late_policy)
    try:
        if _same_file(path, data, sha):
            folder = path.parent  # already there (maybe from an unacknowledged attempt): fsync it again
        else:
            folder = spool.write_data(path, data)
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
    except Exception as exc:  # noqa: BLE001 - database/disk trouble: the sender should retry later
        log.error("storing %s failed: %s", ids["SOPInstanceUID"], exc, exc_info=not isinstance(exc, OSError))
        return STATUS_OUT_OF_RESOURCES, f"not stored: {str(exc).splitlines()[0][:300]}"
    return STATUS_OK, f"stored {ids['SOPInstanceUID']} ({res.status}, study {res.study_uid}, {ts}, {len(data)} bytes)"
