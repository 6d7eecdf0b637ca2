"""pynetdicom's reactor pause, made race-free: a ``send_*()`` always gets its own response (pynetdicom 3.0).

Every pynetdicom association runs a reactor thread that polls the DIMSE message queue and serves the requests it
finds there.  A ``send_c_echo()``/``send_c_store()``/... in the user's thread reads its response from the same
queue, so it first *pauses* the reactor: it clears ``_reactor_checkpoint`` and waits until ``_is_paused`` is true.
But the reactor sets ``_is_paused`` *before* it waits on the checkpoint: when the user's thread clears the
checkpoint just after that wait has returned, it sees "paused", sends its request, and the reactor - one statement
later - takes the response off the queue, logs "Received unexpected C-ECHO service message" and drops it.  The
sender then waits out the whole DIMSE timeout and aborts the association (pynetdicom issues #435 and #875 report
the symptom).  The window is a few bytecodes wide, so it is hit when the process is busy:
``bench/receive/reactor_pause.py`` (C-ECHOs on one association while three threads compete for the GIL) loses
about 1 % of round trips with pynetdicom as is, none with this guard.  For the node that is a result send or a
prior's C-MOVE that hangs for ``dimse_timeout_s`` and is retried, exactly while a registration keeps the process
busy.

:func:`install` wraps ``DIMSEServiceProvider.get_msg``: the reactor's own non-blocking poll (the only caller
that does not block) takes nothing while its checkpoint is cleared, i.e. while a ``send_*()`` owns the queue.
The check and the take happen under the queue's lock, and the DUL thread puts a message there only under the
same lock, after the request that the message answers was sent, which was after the checkpoint was cleared: so a
response can never reach the reactor.  Nothing else changes.  Tied to pynetdicom's internals (``pyproject.toml``
pins 3.0.x); :func:`installed` reports whether it took effect.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_installed = False
_lock = threading.Lock()


def install() -> bool:
    """Patch pynetdicom (once per process; idempotent) so a paused reactor never takes a message off the DIMSE
    queue. Returns True when the guard is in place, False if pynetdicom's internals are not what it expects
    (pynetdicom then behaves as shipped)."""
    global _installed
    with _lock:
        if _installed:
            return True
        from pynetdicom import association as assoc_mod
        from pynetdicom.dimse import DIMSEServiceProvider
        # the reactor loop whose non-blocking poll is guarded, and the poll itself
        if not hasattr(assoc_mod.Association, "_run_reactor") or not hasattr(DIMSEServiceProvider, "get_msg"):
            log.warning("pynetdicom's reactor is not what node.net.reactor_pause expects; its pause stays as is")
            return False
        orig_get_msg = DIMSEServiceProvider.get_msg

        def get_msg(self, block: bool = False):
            assoc = self.assoc
            checkpoint = getattr(assoc, "_reactor_checkpoint", None)
            if block or checkpoint is None or threading.current_thread() is not assoc:
                return orig_get_msg(self, block)
            q = self.msg_queue
            with q.mutex:                       # the DUL thread's put() takes the same lock
                if not checkpoint.is_set() or not q._qsize():
                    return None, None           # paused: the message belongs to the send_*() that paused us
                item = q._get()
                q.not_full.notify()
                return item

        get_msg.__doc__ = orig_get_msg.__doc__
        DIMSEServiceProvider.get_msg = get_msg
        _installed = True
        return True


def installed() -> bool:
    """True once :func:`install` has patched pynetdicom in this process."""
    return _installed
