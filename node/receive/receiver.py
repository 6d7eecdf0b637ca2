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

import logging
import socket
import threading
import time

from pynetdicom import (ALL_TRANSFER_SYNTAXES, AE, PYNETDICOM_IMPLEMENTATION_UID,
                        PYNETDICOM_IMPLEMENTATION_VERSION, AllStoragePresentationContexts, evt)
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target

from node.net import reactor_pause
from node.ops import metrics
from node.receive import _peer_guard, reactor_wakeup
from node.receive.index import IndexWriter
from node.receive.ingest import STATUS_CANNOT_UNDERSTAND, STATUS_OK, STATUS_OUT_OF_RESOURCES, ingest_dataset
from node.receive.part10 import PREAMBLE, file_meta_bytes
from node.receive.shared_listener import ReceiverLoad, SharedListenerServer
from node.net.tls import server_context
from node.receive.spool import Spool
from node.store.db import Database

log = logging.getLogger(__name__)

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
        reactor_pause.install()  # and a paused reactor never takes a send_*()'s response (node.net.reactor_pause)
        if not _peer_guard.install():  # timeouts from the first byte, PDU / data set limits (node.receive._peer_guard)
            raise RuntimeError("the DICOM listener cannot apply its limits against hostile peers with this "
                               "pynetdicom version (pyproject.toml pins pynetdicom 3.0.x)")
        self.guard.closing.clear()
        ae = self.make_ae()
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda e: STATUS_OK),
                    (evt.EVT_CONN_OPEN, set_tcp_nodelay)]
        ctx = server_context(n.tls) if n.tls else None
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
        metrics.INSTANCES_RECEIVED.inc()
        if self.load is not None and self.load.slot != 0:  # a child: the node process exports its count
            self.load.count_received()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-STORE %s from %s: %s", req_uid(), calling, message)
        return STATUS_OK
