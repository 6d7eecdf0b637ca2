"""One listening socket shared by several receiver processes, each connection taken by the least busy one.

With ``node.receiver_processes`` > 1 the node process binds ``node.port`` once and its receiver children inherit
that socket.  Every process waits on it; when a connection (an association) arrives, a process accepts it only if
no other live receiver process has fewer open associations (:class:`ReceiverLoad`), so 8 senders end up 4 + 4 on
two processes.  (The earlier ``SO_REUSEPORT`` design let the kernel spread connections by a hash of the
addresses: 6 + 2 was common and the busier process capped the whole node.)  A process that is not the least busy
still accepts after :data:`DEFER_S`, so a stuck process never strands a connection.

:class:`ReceiverLoad` is a tiny shared table (an ``mmap``-ed file, one int32 per process slot): each process
writes only its own slot (its open associations); the node process marks a dead child's slot -1 (not counted).
"""
from __future__ import annotations

import mmap
import os
import socket
import struct
import tempfile
import time
from pathlib import Path

from node.receive._peer_guard import GuardedServer

DEFER_S = 0.05  # longest a busier process leaves a pending connection to a less busy one
SLOTS = 64
_FMT = "<i"
_DEAD = -1
_RECEIVED = SLOTS * 4  # offset of the per-slot counters of stored instances (uint64)
_SIZE = _RECEIVED + SLOTS * 8


class ReceiverLoad:
    """Open associations (and stored instances, for the metrics) per receiver process, in a small mmap-ed file.

    ``slot``: this process's index (0 = the node process, 1..N-1 = children)."""

    def __init__(self, path: str | Path, slot: int):
        self.path = str(path)
        self.slot = int(slot)
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, processes: int) -> "ReceiverLoad":
        """A new table for ``processes`` receivers (all but slot 0 marked dead until they start); slot 0's view."""
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="totalreg-receivers-", suffix=".load", dir=shm)
        try:
            os.write(fd, struct.pack(f"<{SLOTS}i", 0, *([_DEAD] * (SLOTS - 1))) + bytes(SLOTS * 8))
        finally:
            os.close(fd)
        return cls(path, 0)

    def counts(self) -> list[int]:
        """Every slot's open associations (-1: no live process)."""
        return list(struct.unpack_from(f"<{SLOTS}i", self._map, 0))

    def set(self, n: int, slot: int | None = None) -> None:
        """Write a slot (default: this process's) - open associations, or -1 for a process that is gone."""
        struct.pack_into(_FMT, self._map, 4 * (self.slot if slot is None else slot), int(n))

    def add(self, k: int) -> None:
        """Add ``k`` to this process's count (only this process writes its slot)."""
        cur = struct.unpack_from(_FMT, self._map, 4 * self.slot)[0]
        self.set(max(0, cur) + k)

    def count_received(self, k: int = 1) -> None:
        """Add ``k`` stored instances to this process's counter (kept across restarts of a child: same slot)."""
        off = _RECEIVED + 8 * self.slot
        struct.pack_into("<Q", self._map, off, struct.unpack_from("<Q", self._map, off)[0] + k)

    def received(self, exclude_slot: int | None = None) -> int:
        """Instances stored by every slot (but ``exclude_slot``) since the table was created."""
        counts = struct.unpack_from(f"<{SLOTS}Q", self._map, _RECEIVED)
        return sum(c for i, c in enumerate(counts) if i != exclude_slot)

    def least_busy(self) -> bool:
        """True when no live process has fewer open associations than this one."""
        counts = self.counts()
        mine = max(0, counts[self.slot])
        return all(c < 0 or c >= mine for c in counts)

    def close(self, unlink: bool = False) -> None:
        """Unmap (and remove the file: the node process, at stop)."""
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass
        if unlink:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def bind_listener(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on (host, port) for the receiver processes to share (OSError if the port is taken)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def stop_accepting(sock: socket.socket) -> None:
    """Stop every receiver process from accepting on the shared socket at once (node shutdown): ``shutdown()``
    acts on the socket itself, which all of them share, where ``close()`` only drops one descriptor.  Pending
    connections are reset; new ones are refused by the kernel."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SharedListenerServer(GuardedServer):
    """The listener's guarded association server (:class:`node.receive._peer_guard.GuardedServer`) on an inherited, already
    listening socket, accepting a connection only when this process is the least busy receiver (see the module
    docstring)."""

    def __init__(self, *args, listen_socket: socket.socket, load: ReceiverLoad | None, **kwargs):
        self._shared_socket = listen_socket
        self.load = load
        self._pending_since = 0.0
        self._last_try = 0.0
        self._last_accept = 0.0
        self._last_recount = 0.0
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:  # adopt the shared socket instead of binding a new one
        self.socket.close()
        self.socket = self._shared_socket
        self.socket.setblocking(False)  # another process may take the connection first: accept must not block
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:  # already listening
        pass

    def server_close(self) -> None:
        """Close this process's descriptor only: a ``shutdown()`` of the shared socket would stop every receiver
        process from accepting."""
        self.socket.close()

    def _handle_request_noblock(self) -> None:
        if self.load is not None:
            now = time.monotonic()
            if now - self._last_try > 0.02:  # not seen pending a moment ago: a new connection
                self._pending_since = now
            self._last_try = now
            if now - self._pending_since < DEFER_S and not self.load.least_busy():
                time.sleep(0.001)  # a less busy process should take it; look again after 1 ms
                return
        super()._handle_request_noblock()  # accept (BlockingIOError if another process was first: ignored)

    def process_request(self, request, client_address) -> None:
        if self.load is not None:
            self.load.add(1)  # counted now, before its association thread exists
            self._last_accept = time.monotonic()
        super().process_request(request, client_address)

    def connection_closed(self) -> None:
        """EVT_CONN_CLOSE of one of this server's associations: one fewer open."""
        if self.load is not None:
            self.load.add(-1)

    def service_actions(self) -> None:
        """Every loop of serve_forever: re-count open associations now and then (a connection that failed
        before its association started is never reported closed)."""
        super().service_actions()
        now = time.monotonic()
        if self.load is not None and now - self._last_recount > 2.0 and now - self._last_accept > 1.0:
            self._last_recount = now
            self.load.set(len(self.active_associations))
