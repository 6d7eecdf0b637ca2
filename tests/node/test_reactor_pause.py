"""node.net.reactor_pause: a paused pynetdicom reactor never takes the response a send_*() is waiting for.

The race it closes (pynetdicom's reactor says "paused" just before it looks at its checkpoint) is a few bytecodes
wide; these tests put the reactor exactly in the losing position instead of waiting for the scheduler to do it:
the association's own thread polls the DIMSE queue while a response sits there and the checkpoint is cleared.
"""
from __future__ import annotations

import threading

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification

from node.net import dimse, reactor_pause


def _echo_response(message_id: int = 1) -> C_ECHO:
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = Verification
    rsp.Status = 0x0000
    return rsp


def _poll_from_reactor_thread(assoc: Association):
    """What the reactor loop does (``self.dimse.get_msg(block=False)``), run in the association's own thread."""
    got = []
    assoc.run = lambda: got.append(assoc.dimse.get_msg(block=False))
    assoc.start()
    assoc.join(5)
    return got[0]


def test_paused_reactor_leaves_the_response_for_the_waiting_sender():
    assert reactor_pause.install() and reactor_pause.installed()
    assoc = Association(AE(), "requestor")
    rsp = _echo_response()
    assoc._reactor_checkpoint.clear()            # a send_c_echo() has paused the reactor ...
    assoc.dimse.msg_queue.put((1, rsp))          # ... and its response has arrived
    assert _poll_from_reactor_thread(assoc) == (None, None)
    assert assoc.dimse.msg_queue.qsize() == 1    # still there for the sender
    assert assoc.dimse.get_msg(block=True) == (1, rsp)   # the sender's own (blocking) read gets it


def test_running_reactor_still_takes_requests():
    reactor_pause.install()
    assoc = Association(AE(), "acceptor")
    rq = C_ECHO()
    rq.MessageID = 7
    rq.AffectedSOPClassUID = Verification
    assoc.dimse.msg_queue.put((1, rq))           # checkpoint set: nobody paused it
    assert _poll_from_reactor_thread(assoc) == (1, rq)
    assert assoc.dimse.msg_queue.qsize() == 0


def test_other_threads_and_blocking_reads_are_untouched():
    reactor_pause.install()
    assoc = Association(AE(), "requestor")
    assoc._reactor_checkpoint.clear()
    rsp = _echo_response(3)
    assoc.dimse.msg_queue.put((1, rsp))
    assert assoc.dimse.get_msg(block=False) == (1, rsp)   # not the reactor's thread: pynetdicom's own get_msg
    assoc.dimse_timeout = 0.05
    assert assoc.dimse.get_msg(block=True) == (None, None)  # an empty queue still times out


def test_node_associations_install_the_guard(monkeypatch):
    """Every SCU association the node opens goes through dimse._associate, which installs the guard first."""
    calls = []
    monkeypatch.setattr(reactor_pause, "install", lambda: calls.append(threading.current_thread().name) or True)
    peer = dimse.Peer(ae_title="NOBODY", host="127.0.0.1", port=1)
    ae = AE(ae_title="NODE")
    ae.add_requested_context(Verification)
    ae.connection_timeout = ae.acse_timeout = 1
    try:
        dimse._associate(ae, peer, "C-ECHO")
    except dimse.DimseError:
        pass
    assert calls
