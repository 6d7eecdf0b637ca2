"""Event-driven wake-ups for pynetdicom's per-association reactor threads (pynetdicom 3.0).

pynetdicom runs two threads per association and both poll: the DUL reactor sleeps 1 ms whenever it has nothing
to do, and the association reactor sleeps 1 ms on every loop before it looks for a complete DIMSE message.  On a
C-STORE round trip that is up to ~3 ms of sleeping (a third of one instance's time on one association), and with
8 associations 16 threads wake 16,000 times a second to find nothing, competing for the GIL with the ones that
have work.

:func:`install` replaces those two sleeps, and only those, by waits that end as soon as there is work:

* the DUL thread waits (``select``) on its socket and on an ``eventfd`` that is signalled when the association
  hands it a primitive to send (its ``to_provider_queue``) or when it is told to stop;
* an acceptor's association thread waits on its DIMSE message queue's condition, which pynetdicom notifies when
  a message is complete.  (A requestor's keeps its 1 ms sleep: its user thread pauses the reactor around every
  ``send_*()`` and reads the response from that queue, and a reactor that woke on the response could take it;
  pynetdicom's own 1 ms poll has that race too, which :mod:`node.net.reactor_pause` closes.)

Both waits still end after :data:`MAX_WAIT_S` (20 ms) so everything else the loops check (ARTIM and idle timers,
release and abort requests, the stop flag) is seen as before, only with that latency instead of 1 ms.  Nothing
else in pynetdicom changes: the same loops run the same state machine.  Linux (``os.eventfd``) only; elsewhere
:func:`install` does nothing and pynetdicom polls as before.  The module is tied to pynetdicom's internals
(``pyproject.toml`` pins pynetdicom 3.0.x); :func:`installed` reports whether it took effect, and the receiver
tests exercise it.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time as _time

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.02  # longest a reactor sleeps without an event: timers, release/abort and stop are seen within it
_POLL_S = 0.001  # the sleep pynetdicom 3.0 uses in both reactors

_installed = False
_lock = threading.Lock()


class _WakeFd:
    """An eventfd owned by one DUL and its queue; closed when the last of them lets go of it (so a late signal
    can never write into a re-used descriptor number)."""

    __slots__ = ("fd", "__weakref__")

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class _WakingQueue(queue.Queue):
    """``to_provider_queue`` that signals its DUL's eventfd on every put."""

    def __init__(self, wake: _WakeFd):
        super().__init__()
        self.wake = wake

    def put(self, item, block=True, timeout=None):  # noqa: D102 - queue.Queue.put
        super().put(item, block, timeout)
        _signal(self.wake)


def _signal(wake: _WakeFd | None) -> None:
    if wake is None:
        return
    try:
        os.eventfd_write(wake.fd, 1)
    except OSError:  # counter full: the waiter wakes anyway
        pass


def _dul_wait(dul, seconds: float) -> None:
    """The DUL reactor's idle sleep: until its socket is readable, a primitive is queued, or MAX_WAIT_S."""
    wake = getattr(dul, "_wake", None)
    fd = wake.fd if wake is not None else None
    assoc_sock = getattr(dul, "socket", None)
    sock = getattr(assoc_sock, "socket", None)
    if fd is None or sock is None:
        _time.sleep(seconds)
        return
    try:
        if dul.to_provider_queue.qsize() or (hasattr(sock, "pending") and sock.pending()):
            return
        ready, _, _ = select.select([sock, fd], [], [], MAX_WAIT_S)
    except (OSError, ValueError):  # socket closed meanwhile: let the loop find out
        _time.sleep(seconds)
        return
    if fd in ready:
        try:
            os.eventfd_read(fd)
        except OSError:
            pass


def _assoc_wait(assoc, seconds: float) -> None:
    """The association reactor's per-loop sleep: until a DIMSE message is complete, or MAX_WAIT_S."""
    q = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if q is None or not getattr(assoc, "is_acceptor", False):
        # a requestor's user thread pauses this reactor around each send_*() and then reads the response from
        # the same queue: a reactor that woke on that message (instead of pausing within 1 ms) could take it
        _time.sleep(seconds)
        return
    with q.not_empty:
        if not q._qsize():
            q.not_empty.wait(MAX_WAIT_S)


class _Clock:
    """Stands in for the ``time`` module inside pynetdicom's ``dul`` and ``association`` modules: everything is
    ``time``'s, except a 1 ms sleep in a reactor thread, which becomes the matching event wait."""

    def __init__(self, waiter, thread_class):
        self._waiter = waiter
        self._thread_class = thread_class

    def __getattr__(self, name):
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        t = threading.current_thread()
        if seconds == _POLL_S and isinstance(t, self._thread_class):
            self._waiter(t, seconds)
        else:
            _time.sleep(seconds)


def install() -> bool:
    """Patch pynetdicom (once per process) so its reactors wait for events instead of polling every 1 ms.

    Returns True when the wake-ups are in place (False on a platform without ``os.eventfd`` or a pynetdicom
    whose internals differ; pynetdicom then polls as it always did)."""
    global _installed
    with _lock:
        if _installed:
            return True
        if not hasattr(os, "eventfd"):
            return False
        from pynetdicom import association as assoc_mod
        from pynetdicom import dul as dul_mod
        dul_cls, assoc_cls = dul_mod.DULServiceProvider, assoc_mod.Association
        if getattr(dul_mod, "time", None) is not _time or getattr(assoc_mod, "time", None) is not _time or \
                not hasattr(dul_cls, "kill_dul"):
            log.warning("pynetdicom's reactors are not what node.receive.reactor_wakeup expects; they keep polling")
            return False
        orig_init, orig_kill = dul_cls.__init__, dul_cls.kill_dul

        def init(self, *args, **kwargs):
            orig_init(self, *args, **kwargs)
            self._wake = _WakeFd()
            old = self.to_provider_queue
            self.to_provider_queue = _WakingQueue(self._wake)
            while True:  # nothing is queued yet, but keep whatever is
                try:
                    self.to_provider_queue.put(old.get_nowait())
                except queue.Empty:
                    break

        def kill_dul(self):
            orig_kill(self)
            _signal(getattr(self, "_wake", None))

        dul_cls.__init__ = init
        dul_cls.kill_dul = kill_dul
        dul_mod.time = _Clock(_dul_wait, dul_cls)
        assoc_mod.time = _Clock(_assoc_wait, assoc_cls)
        _installed = True
        return True


def installed() -> bool:
    """True once :func:`install` has patched pynetdicom in this process."""
    return _installed
