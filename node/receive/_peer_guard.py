"""The DICOM listener against broken and hostile peers: timeouts from the first byte, per-address limits, an early
allow-list, bounded PDUs and data sets, and an abort of every connection in seconds at shutdown.

pynetdicom 3.0 (``pyproject.toml`` pins 3.0.x) trusts its peer: an accepted socket has no timeout, so a peer that
sends part of a PDU keeps the DUL thread in ``recv`` for ever (its ARTIM timer is only looked at between PDUs); a
PDU is buffered to whatever length its header announces; a data set grows without limit; the calling AE title is
checked only once the whole A-ASSOCIATE-RQ has been read and decoded; and a connection that closes before its
A-ASSOCIATE-RQ keeps its association thread (one of ``max_associations``) for ``acse_timeout_s``.  This module is
the one place that changes pynetdicom for that; everything else uses its public API.

* :class:`GuardedServer` (the listener's server class): every accepted socket gets a timeout at once; TLS
  handshakes run in the connection's own thread under that timeout (never in the accept loop); a connection from
  an address outside ``node.allowed_addresses``, from an address that already holds
  ``node.max_associations_per_address`` connections, or beyond ``node.max_associations`` is closed at accept (an
  A-ASSOCIATE-RJ "local limit exceeded" is written first where it can be); :meth:`GuardedServer.abort_all` ends
  every connection within seconds (shutdown).
* :func:`install` replaces ``DULServiceProvider._read_pdu_data`` for connections accepted by a
  :class:`GuardedServer` (others are untouched): the A-ASSOCIATE-RQ must be complete within ``acse_timeout_s`` of
  the accept (ARTIM, counted from the first byte), a later PDU may not stall for more than ``network_timeout_s``
  mid-way; a PDU longer than the maximum (``node.max_pdu_bytes`` for P-DATA, 1 MiB for association PDUs) is refused
  from its 6-byte header, before any of it is buffered; the calling AE title is checked from the first 74 bytes of
  the A-ASSOCIATE-RQ, before the rest is read.  It also wraps ``DIMSEMessage.decode_msg``: a data set that grows
  past ``node.max_dataset_bytes`` is dropped as it arrives and the request is handed to the C-STORE handler marked
  refused (:func:`refused_reason`), which answers 0xA700; a command set over 64 KiB aborts the association.

Every refusal is logged in plain words, at most once per address and reason every :data:`LOG_EVERY_S` seconds
(a port scanner does not flood the log).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = logging.getLogger("node.receive.receiver")

ASSOC_PDU_MAX = 1 << 20  # an A-ASSOCIATE-RQ of 128 contexts x 20 transfer syntaxes is ~70 KB
COMMAND_MAX = 64 * 1024  # a DIMSE command set is a few hundred bytes
LOG_EVERY_S = 10.0
_RQ_FIXED = 68  # A-ASSOCIATE-RQ after the PDU header: version, reserved, called AE, calling AE, reserved

# A-ASSOCIATE-RJ PDUs (PS3.8 9.3.4): (result, source, reason)
RJ_CALLING_AE = struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 0x01, 0x01, 0x03)  # permanent, user, calling AE unknown
RJ_LOCAL_LIMIT = struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 0x02, 0x03, 0x02)  # transient, provider, local limit
# A-ABORT PDU (PS3.8 9.3.8): source 2 (service provider), reason 6 (invalid PDU parameter value)
ABORT_INVALID = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06)


@dataclass
class Guard:
    """The limits of one listener (from :class:`node.config.NodeSettings`), shared by its connections."""

    acse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    max_pdu_bytes: int = 4 * 1024 * 1024
    max_dataset_bytes: int = 2 * 1024 ** 3
    max_connections: int = 16
    max_per_address: int = 8
    allowed_callers: frozenset = frozenset()  # stripped AE titles; empty: any
    allowed_networks: tuple = ()  # ipaddress networks; empty: any
    closing: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_settings(cls, n) -> "Guard":
        """The guard of :class:`node.config.NodeSettings` ``n``."""
        return cls(acse_timeout_s=float(n.acse_timeout_s), network_timeout_s=float(n.network_timeout_s),
                   max_pdu_bytes=int(n.max_pdu_bytes), max_dataset_bytes=int(n.max_dataset_bytes),
                   max_connections=int(n.max_associations),
                   max_per_address=min(int(n.max_associations_per_address), int(n.max_associations)),
                   allowed_callers=frozenset(a.strip() for a in n.allowed_callers),
                   allowed_networks=tuple(ipaddress.ip_network(a, strict=False) for a in n.allowed_addresses))

    def address_allowed(self, addr: str) -> bool:
        """True when ``addr`` may connect (``node.allowed_addresses`` empty, or one of them contains it)."""
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.allowed_networks)


class _LogThrottle:
    """Log a refusal at most once per (reason, address) every LOG_EVERY_S seconds, counting the ones not logged."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list] = {}

    def warn(self, kind: str, addr: str, msg: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 4096:
                self._seen.clear()
            entry = self._seen.get((kind, addr))
            if entry is not None and now - entry[0] < LOG_EVERY_S:
                entry[1] += 1
                return
            skipped = entry[1] if entry else 0
            self._seen[(kind, addr)] = [now, 0]
        if skipped:
            msg += f" ({skipped} more like it in the last {LOG_EVERY_S:.0f} s not logged)"
        log.warning(msg, *args)


THROTTLE = _LogThrottle()


def _send_quietly(sock, data: bytes) -> None:
    """Best-effort write of a short PDU to a peer that is being turned away."""
    try:
        sock.settimeout(0.5)
        sock.sendall(data)
    except (OSError, ValueError):
        pass


def _shutdown(sock) -> None:
    """Shut a socket down both ways (wakes a thread blocked in recv/select on it); errors ignored."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------------------------------------------ server

class _Conn:
    """One accepted connection: its address, raw socket, and its association once created."""

    __slots__ = ("addr", "sock", "assoc", "done", "accepted_at")

    def __init__(self, addr: str, sock):
        self.addr, self.sock, self.assoc, self.done = addr, sock, None, False
        self.accepted_at = time.monotonic()

    def alive(self) -> bool:
        if self.done:
            return False
        return self.assoc is None or self.assoc.is_alive() or self.assoc.dul.is_alive()


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, giving the new association's DUL this server's :class:`Guard`."""

    def handle(self) -> None:  # RequestHandler.handle, with the guard attached before the reactors start
        from pynetdicom import evt
        server = self.server
        assoc = self._create_association()
        assoc.dul._node_guard = server.guard
        conn = server.connection_of(self.request)
        assoc.dul._node_t0 = conn.accepted_at if conn is not None else time.monotonic()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        if conn is not None:  # counted as pending until here, then while its threads live
            conn.assoc = assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the limits of a :class:`Guard` (see the module docstring).

    ``guard``: the listener's limits; ``make_server(..., server_class=GuardedServer, guard=guard)``."""

    daemon_threads = True  # a connection's setup thread (TLS handshake) never holds up the process's exit

    def __init__(self, *args, guard: Guard, **kwargs):
        self.guard = guard
        self._conns_lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}  # id(raw socket) -> connection
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------------- accounting
    def _prune(self) -> list[_Conn]:
        """The live connections (dead ones forgotten); call with the lock held."""
        dead = [k for k, c in self._conns.items() if not c.alive()]
        for k in dead:
            del self._conns[k]
        return list(self._conns.values())

    def connections(self) -> list[_Conn]:
        """Open connections of this server (accepted and not yet ended)."""
        with self._conns_lock:
            return self._prune()

    def connection_of(self, request) -> _Conn | None:
        """The :class:`_Conn` of an accepted socket (None if unknown)."""
        with self._conns_lock:
            return self._conns.get(id(request))

    # ----------------------------------------------------------------------- accept
    def get_request(self):
        """Accept, with a timeout on the new socket from its first byte; TLS is wrapped without the handshake
        (it runs in the connection's own thread, :meth:`process_request_thread`)."""
        try:
            client, address = self.socket.accept()
        except BlockingIOError:  # another receiver process took it
            raise
        except OSError:  # the listening socket was shut down (the node is stopping): do not spin meanwhile
            time.sleep(0.05)
            raise
        client.settimeout(max(0.1, self.guard.acse_timeout_s))
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def _handle_request_noblock(self) -> None:
        try:
            super()._handle_request_noblock()
        except OSError:
            pass

    def verify_request(self, request, client_address) -> bool:
        """Admit a connection, or turn it away at once (closed by socketserver) saying why in the log."""
        addr = str(client_address[0])
        g = self.guard
        tls = isinstance(request, ssl.SSLSocket)
        if g.closing.is_set():
            return False
        if not g.address_allowed(addr):
            THROTTLE.warn("address", addr, "refused a connection from %s: the address is not in "
                          "node.allowed_addresses", addr)
            return False
        with self._conns_lock:
            live = self._prune()
            mine = sum(1 for c in live if c.addr == addr)
            if mine >= g.max_per_address:
                why = (f"refused a connection from {addr}: it already holds {mine} open connection(s), the most "
                       f"one address may hold (node.max_associations_per_address)")
            elif len(live) >= g.max_connections:
                why = (f"refused a connection from {addr}: {len(live)} connections are open, the most this "
                       f"receiver process takes (node.max_associations)")
            else:
                self._conns[id(request)] = _Conn(addr, request)
                return True
        THROTTLE.warn("limit", addr, "%s", why)
        if not tls:
            _send_quietly(request, RJ_LOCAL_LIMIT)
        return False

    def process_request_thread(self, request, client_address) -> None:
        """The connection's setup thread: TLS handshake (under the accept timeout), then pynetdicom's handler."""
        conn = self.connection_of(request)
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.do_handshake()
                except (OSError, ValueError) as exc:
                    THROTTLE.warn("tls", str(client_address[0]), "closed a connection from %s: TLS handshake "
                                  "failed (%s)", client_address[0], str(exc).splitlines()[0][:160] or
                                  type(exc).__name__)
                    self.shutdown_request(request)
                    return
            if self.guard.closing.is_set():
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            if conn is not None and conn.assoc is None:
                conn.done = True

    # ----------------------------------------------------------------------- shutdown
    def abort_all(self, in_handler=None, drain_s: float = 3.0, join_s: float = 3.0) -> dict:
        """End every connection of this server: half-open and idle ones at once, those whose C-STORE handler is
        running (``in_handler(assoc)`` true) after it returned (at most ``drain_s``), then wait up to ``join_s``
        for their threads.  An established association gets an A-ABORT first.  Returns counts for the log."""
        in_handler = in_handler or (lambda a: False)
        counts = {"connections": 0, "waited_for_handlers": 0, "threads_left": 0}
        conns = self.connections()
        counts["connections"] = len(conns)
        busy = [c for c in conns if c.assoc is not None and in_handler(c.assoc)]
        for c in conns:
            if c not in busy:
                _end(c)
        deadline = time.monotonic() + drain_s
        while busy and time.monotonic() < deadline:
            busy = [c for c in busy if in_handler(c.assoc)]
            time.sleep(0.02)
        counts["waited_for_handlers"] = len(busy)
        grace = time.monotonic() + 0.3  # let queued A-ABORTs go out before the sockets are shut
        for c in self.connections():
            _end(c)
        time.sleep(max(0.0, grace - time.monotonic()))
        for c in self.connections():
            _shutdown(_raw(c))
        deadline = time.monotonic() + join_s
        for c in conns:
            a = c.assoc
            if a is None:
                continue
            for t in (a, a.dul):
                try:
                    t.join(max(0.0, deadline - time.monotonic()))
                except RuntimeError:  # never started
                    pass
            if a.dul.is_alive():
                a.dul.kill_dul()
                counts["threads_left"] += 1
        return counts


def _raw(conn: _Conn):
    a = conn.assoc
    s = getattr(getattr(getattr(a, "dul", None), "socket", None), "socket", None) if a is not None else None
    return s if s is not None else conn.sock


def _end(conn: _Conn) -> None:
    """Start ending a connection: A-ABORT (queued to its DUL) when established, else shut the socket."""
    a = conn.assoc
    if a is not None and a.is_established and not a.is_aborted and not a._sent_abort:
        try:
            a.abort(block=False)
            return
        except Exception:  # noqa: BLE001 - whatever state it is in, the socket is shut next
            pass
    _shutdown(_raw(conn))


# ------------------------------------------------------------------------------------------------- DUL patch

def _recv_into(sock, view: memoryview, deadline: float | None, idle_s: float) -> int:
    """Fill ``view`` from ``sock``; returns the bytes read (fewer: the peer closed).  Raises TimeoutError when
    ``deadline`` (monotonic) passes or no byte arrives for ``idle_s``."""
    got = 0
    n = len(view)
    while got < n:
        timeout = idle_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("deadline")
        sock.settimeout(max(0.01, timeout))
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if not k:
            break
        got += k
    return got


def _peer(dul) -> str:
    try:
        return str(dul.assoc.requestor.address_info.address)
    except Exception:  # noqa: BLE001
        return "?"


def _guarded_read_pdu_data(dul) -> None:
    """``DULServiceProvider._read_pdu_data`` for a guarded connection (see the module docstring)."""
    g: Guard = dul._node_guard
    sock = dul.socket.socket
    # Sta1 too: the reactor may read before it has processed the connection's Evt5 (Sta1 -> Sta2)
    awaiting_rq = dul.state_machine.current_state in ("Sta1", "Sta2")
    addr = _peer(dul)
    deadline = (getattr(dul, "_node_t0", time.monotonic()) + g.acse_timeout_s) if awaiting_rq else None
    idle = max(0.1, g.acse_timeout_s if awaiting_rq else g.network_timeout_s)

    def close(kind: str | None = None, msg: str = "", *args, reply: bytes = b"") -> None:
        if kind:
            THROTTLE.warn(kind, addr, msg, *args)
        if reply:
            _send_quietly(sock, reply)
        dul.socket.close()  # Evt17: transport closed
        if awaiting_rq:
            dul.to_user_queue.put(None)  # the association thread waits for an A-ASSOCIATE: let it end now

    header = bytearray(6)
    try:
        if _recv_into(sock, memoryview(header), deadline, idle) < 6:
            return close()
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in (1, 2, 3, 4, 5, 6, 7):
            if awaiting_rq:
                return close("junk", "closed a connection from %s: it sent bytes that are not a DICOM PDU "
                             "(type 0x%02X)", addr, pdu_type)
            log.warning("aborting the association with %s: unknown PDU type 0x%02X", addr, pdu_type)
            dul.event_queue.put("Evt19")
            return
        cap = g.max_pdu_bytes if pdu_type == 4 else ASSOC_PDU_MAX
        if length > cap:
            what = "P-DATA" if pdu_type == 4 else f"type 0x{pdu_type:02X}"
            setting = " (node.max_pdu_bytes)" if pdu_type == 4 else ""
            return close("pdu", "aborted the connection from %s: a %s PDU announces %d bytes, more than the %d "
                         "allowed%s; nothing of it was read", addr, what, length, cap, setting,
                         reply=b"" if awaiting_rq else ABORT_INVALID)
        body = bytearray(6 + length)
        body[:6] = header
        view = memoryview(body)
        start = 6
        if awaiting_rq and pdu_type == 1:
            if length < _RQ_FIXED:
                return close("junk", "closed a connection from %s: its A-ASSOCIATE-RQ is %d bytes, too short",
                             addr, length)
            if _recv_into(sock, view[6:6 + _RQ_FIXED], deadline, idle) < _RQ_FIXED:
                return close()
            start = 6 + _RQ_FIXED
            calling = bytes(body[26:42]).decode("ascii", "replace").strip()
            if g.allowed_callers and calling not in g.allowed_callers:
                return close("caller", "refused an association from %s: calling AE title '%s' is not in "
                             "node.allowed_callers", addr, calling[:16], reply=RJ_CALLING_AE)
        if start < len(body) and _recv_into(sock, view[start:], deadline, idle) < len(body) - start:
            return close("short", "closed the connection from %s: it closed in the middle of a PDU", addr)
        view.release()
    except TimeoutError:
        if awaiting_rq:
            return close("artim", "closed a connection from %s: no complete A-ASSOCIATE-RQ within %.0f s of "
                         "connecting (node.acse_timeout_s)", addr, g.acse_timeout_s)
        return close("stall", "aborted the association with %s: a PDU stalled for %.0f s mid-way "
                     "(node.network_timeout_s)", addr, g.network_timeout_s, reply=ABORT_INVALID)
    except (OSError, ValueError):  # reset by the peer, or shut down by a local stop
        return close()
    try:
        sock.settimeout(max(0.1, g.network_timeout_s))
    except (OSError, ValueError):
        pass
    try:
        pdu, event = dul._decode_pdu(body)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
        if awaiting_rq:
            return close("junk", "closed a connection from %s: its PDU cannot be decoded (%s)", addr,
                         str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
        log.warning("aborting the association with %s: a PDU cannot be decoded (%s)", addr, exc)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


# ------------------------------------------------------------------------------------------------ DIMSE patch

class RefusedDataset(BytesIO):
    """Stands in for a data set that was dropped as it arrived; ``reason`` says why (plain words)."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


def refused_reason(dataset) -> str | None:
    """Why a C-STORE request's data set was dropped on arrival (None: it was not)."""
    return getattr(dataset, "reason", None) if isinstance(dataset, RefusedDataset) else None


def _guarded_decode_msg(orig, msg, primitive, assoc=None) -> bool:
    g = getattr(getattr(assoc, "dul", None), "_node_guard", None)
    pdvs = getattr(primitive, "_presentation_data_value_list", None)
    if g is None or not pdvs:
        return orig(msg, primitive, assoc)
    cmd = getattr(msg, "_node_cmd_bytes", 0)
    ds = getattr(msg, "_node_ds_bytes", 0)
    for _cid, data in pdvs:
        if data[:1] and data[0] & 1:
            cmd += len(data) - 1
        else:
            ds += len(data) - 1
    msg._node_cmd_bytes, msg._node_ds_bytes = cmd, ds
    addr = _peer(assoc.dul)
    if cmd > COMMAND_MAX:
        log.warning("aborting the association with %s: a DIMSE command set of more than %d bytes", addr,
                    COMMAND_MAX)
        assoc.dul.event_queue.put("Evt19")
        primitive._presentation_data_value_list = []
        return False
    if ds > g.max_dataset_bytes:
        if not isinstance(getattr(msg, "data_set", None), RefusedDataset):
            reason = (f"the data set is larger than {g.max_dataset_bytes} bytes (node.max_dataset_bytes); "
                      "it was dropped as it arrived")
            calling = (getattr(assoc.requestor, "ae_title", "") or "").strip()
            log.warning("C-STORE from %s (%s): %s", addr, calling, reason)
            msg.data_set = RefusedDataset(reason)
        primitive._presentation_data_value_list = [
            [cid, data if (data[:1] and data[0] & 1) else data[:1]] for cid, data in pdvs]
    return orig(msg, primitive, assoc)


# --------------------------------------------------------------------------------------------------- install

_installed = False
_lock = threading.Lock()


def install() -> bool:
    """Patch pynetdicom (once per process) so connections accepted by a :class:`GuardedServer` are read with the
    guard's limits; other connections (the node's own outgoing associations) keep pynetdicom's behaviour.
    Returns False (and logs why) when pynetdicom's internals are not the expected ones."""
    global _installed
    with _lock:
        if _installed:
            return True
        from pynetdicom import dimse_messages
        from pynetdicom import dul as dul_mod
        dul_cls = dul_mod.DULServiceProvider
        msg_cls = dimse_messages.DIMSEMessage
        if not all(hasattr(dul_cls, a) for a in ("_read_pdu_data", "_decode_pdu")) or \
                not hasattr(msg_cls, "decode_msg"):
            log.error("pynetdicom's internals are not what node.receive._peer_guard expects: the listener runs without "
                      "its PDU limits and timeouts")
            return False
        orig_read = dul_cls._read_pdu_data
        orig_decode = msg_cls.decode_msg

        def _read_pdu_data(self):
            if getattr(self, "_node_guard", None) is None:
                return orig_read(self)
            return _guarded_read_pdu_data(self)

        def decode_msg(self, primitive, assoc=None):
            return _guarded_decode_msg(orig_decode, self, primitive, assoc)

        dul_cls._read_pdu_data = _read_pdu_data
        msg_cls.decode_msg = decode_msg
        _installed = True
        return True
