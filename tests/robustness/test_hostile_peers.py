"""The DICOM listener against broken and hostile peers (issue 15, points 1, 2 and 5), tried from the outside with
raw sockets on loopback, as a port scanner or an attacker would.

* Lock-out: ``max_associations`` half-open connections (the first 40 bytes of an A-ASSOCIATE-RQ) plus as many
  idle ones (no PDU) held by a stranger (127.0.0.2); an allowed caller's C-ECHO (dcmtk echoscu) must succeed within
  ``acse_timeout_s`` + 5 s.  With no per-address protection (the stranger on the caller's own address) the ARTIM
  timer, counted from the accept, must close the half-open connections within ``acse_timeout_s``.
* The allow-lists apply early: an address outside ``node.allowed_addresses`` is closed at accept; a calling AE
  outside ``node.allowed_callers`` is refused from the first 74 bytes of its A-ASSOCIATE-RQ.  A TLS connection
  that never sends its ClientHello does not hold up the accept loop.
* Memory: a Deflated Explicit VR data set of 0.4 MB that inflates to 400 MB, and a PDU announcing 2^31 bytes
  (before and after association), are refused while the node's peak RSS rises by < 300 MB; a data set over
  ``node.max_dataset_bytes`` is answered 0xA700 and the association goes on; nothing is left in the spool.
* Shutdown: SIGTERM of `totalreg serve` (two receiver processes) with an idle association, a half-open
  connection, a PDU stalled mid-way and two senders streaming C-STOREs exits within 10 s; after a restart every
  instance that was acknowledged is on disk and indexed; connections are refused from the first second on.

Fast subset by default; ``-m slow``: 200 idle connections re-opened for 30 s, and the memory cases with 150 MB
pushed at the node.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from .conftest import nodefx
from .support import RssSampler, assert_acked_held, db_of, held_instances, wait_for, write_figures

STRANGER = "127.0.0.2"  # loopback too, but another address than the allowed callers' 127.0.0.1
ACSE_S = 3.0
MAX_ASSOC = 4
RSS_LIMIT_MIB = 300.0
VERIFICATION = "1.2.840.10008.1.1"


# ----------------------------------------------------------------------------------------------- raw DICOM

def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def assoc_rq(calling: str = "STRANGER", called: str = "TOTALREG", abstract: str = VERIFICATION) -> bytes:
    """A complete A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``abstract`` in implicit VR little endian."""
    ctx = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode()) +
                _item(0x40, ImplicitVRLittleEndian.encode()) + _item(0x40, ExplicitVRLittleEndian.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32) +
            _item(0x10, b"1.2.840.10008.3.1.1.1") + ctx + user)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def connect(port: int, source: str = STRANGER, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the node from ``source`` (any 127/8 address works on Linux loopback)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def closed_by_peer(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the node closed ``sock`` (EOF or reset; data it sends first is read and dropped), or None
    if it is still open after ``within_s``."""
    t0 = time.monotonic()
    while (left := within_s - (time.monotonic() - t0)) > 0:
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            break
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except OSError:
            return time.monotonic() - t0
    return None


def echoscu(port: int, calling: str = "GOODSCU", timeout_s: int = 5) -> subprocess.CompletedProcess:
    """dcmtk's echoscu from 127.0.0.1."""
    t = str(timeout_s)
    return subprocess.run([nodefx.dcmtk("echoscu"), "-aet", calling, "-aec", "TOTALREG", "-to", t, "-ta", t,
                           "-td", t, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


def echo_until_ok(port: int, budget_s: float, calling: str = "GOODSCU") -> tuple[float | None, int]:
    """Repeat echoscu until it succeeds: (seconds until it did or None, attempts)."""
    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < budget_s:
        attempts += 1
        if echoscu(port, calling, timeout_s=max(1, int(budget_s - (time.monotonic() - t0)))).returncode == 0:
            return time.monotonic() - t0, attempts
        time.sleep(0.2)
    return None, attempts


# ---------------------------------------------------------------------------------------------- receivers

class InProcess:
    """An in-process receiver configured from node.yaml (fast to start)."""

    def __init__(self, tmp: Path, **node):
        from node.receive.receiver import Receiver
        from node.service import make_spool
        base = {"acse_timeout_s": ACSE_S, "network_timeout_s": 5, "max_associations": MAX_ASSOC,
                "max_associations_per_address": 2, "receiver_processes": 1,
                "allowed_callers": ["GOODSCU", "STORESCU", "ECHOSCU"]}
        self.cfg, _ = nodefx.write_node_config(tmp, node={**base, **node})
        self.db = db_of(self.cfg)
        self.rcv = Receiver(self.cfg, self.db, make_spool(self.cfg))
        self.rcv.start()
        self.port = self.cfg.node.port
        self.spool = Path(self.cfg.node.data_dir) / "spool"

    def close(self) -> None:
        self.rcv.stop()
        self.db.dispose()


@pytest.fixture
def receiver(tmp_path):
    made: list[InProcess] = []

    def start(**node) -> InProcess:
        folder = tmp_path / f"r{len(made)}"
        folder.mkdir()
        r = InProcess(folder, **node)
        made.append(r)
        return r
    yield start
    for r in made:
        r.close()


def _scu(calling: str = "GOODSCU", ts=(ExplicitVRLittleEndian,)) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, list(ts))
    ae.add_requested_context(Verification)
    return ae


# -------------------------------------------------------------------------------------------------- 1: lock-out

def test_half_open_and_idle_strangers_do_not_lock_out_an_allowed_caller(receiver):
    r = receiver()
    socks = []
    try:
        half_open = []
        for _ in range(MAX_ASSOC):
            s = connect(r.port)
            s.sendall(assoc_rq()[:40])
            half_open.append(s)
        idle = [connect(r.port) for _ in range(MAX_ASSOC)]
        socks = half_open + idle
        t0 = time.monotonic()
        t_ok, attempts = echo_until_ok(r.port, ACSE_S + 5)
        assert t_ok is not None, "the allowed caller stayed locked out for acse_timeout_s + 5 s"
        # per-address limit: only 2 of the stranger's 8 connections were taken, the rest closed at once
        at_once = [closed_by_peer(s, 0.2) is not None for s in socks]
        closed_at_once = sum(at_once)
        # ARTIM from the accept: the ones taken are closed within acse_timeout_s
        closed_later = [closed_by_peer(s, max(0.1, ACSE_S + 2 - (time.monotonic() - t0)))
                        for s, done in zip(socks, at_once) if not done]
        write_figures("hostile_lockout_ci", {
            "stranger_connections": len(socks), "max_associations": MAX_ASSOC, "per_address_limit": 2,
            "acse_timeout_s": ACSE_S, "echo_ok_after_s": round(t_ok, 2), "echo_attempts": attempts,
            "stranger_closed_at_once": closed_at_once})
        assert closed_at_once >= len(socks) - 2, f"only {closed_at_once} stranger connections refused at accept"
        assert t_ok < 2.0, f"the caller needed {t_ok:.1f} s although the stranger could hold only 2 slots"
        assert all(t is not None for t in closed_later), "a stranger's connection outlived acse_timeout_s"
    finally:
        for s in socks:
            s.close()


def test_artim_closes_half_open_connections_from_the_callers_own_address(receiver):
    """No per-address protection (limit = max_associations, stranger on 127.0.0.1): the ARTIM timer alone."""
    r = receiver(max_associations_per_address=MAX_ASSOC)
    socks = []
    try:
        t0 = time.monotonic()
        for i in range(MAX_ASSOC):  # half of them half-open, half idle (no byte at all)
            s = connect(r.port, source="127.0.0.1")
            if i % 2 == 0:
                s.sendall(assoc_rq()[:40])
            socks.append(s)
        time.sleep(0.3)
        assert echoscu(r.port, timeout_s=2).returncode != 0, "expected the node to be full (setup)"
        t_ok, attempts = echo_until_ok(r.port, ACSE_S + 5)
        assert t_ok is not None, "the allowed caller stayed locked out for acse_timeout_s + 5 s"
        closed = [closed_by_peer(s, max(0.1, ACSE_S + 1.5 - (time.monotonic() - t0))) for s in socks]
        total = time.monotonic() - t0
        write_figures("hostile_artim_ci", {"half_open_and_idle": MAX_ASSOC, "acse_timeout_s": ACSE_S,
                                           "echo_ok_after_s": round(t_ok, 2), "all_closed_within_s": round(total, 2)})
        assert all(c is not None for c in closed), "a half-open or idle connection outlived acse_timeout_s"
    finally:
        for s in socks:
            s.close()


def test_allow_lists_apply_before_the_association_is_read(receiver):
    r = receiver(allowed_addresses=["127.0.0.1/32"])
    s = connect(r.port)  # 127.0.0.2: closed at accept, nothing read
    try:
        assert closed_by_peer(s, 2.0) is not None, "a connection from a not-allowed address was kept open"
    finally:
        s.close()
    # a calling AE outside node.allowed_callers: the RJ comes after 74 bytes, the rest is never awaited
    s = connect(r.port, source="127.0.0.1")
    try:
        rq = assoc_rq(calling="INTRUDER")
        s.sendall(rq[:6 + 68])
        s.settimeout(3)
        rj = s.recv(10)
        assert rj[:1] == b"\x03" and rj[7:10] == bytes([1, 1, 3]), f"expected A-ASSOCIATE-RJ 1/1/3, got {rj!r}"
    finally:
        s.close()
    assert echoscu(r.port).returncode == 0


def test_tls_connection_without_client_hello_does_not_block_the_listener(receiver, tmp_path):
    from .certs import CA, client_context
    ca = CA(tmp_path / "pki", "Node CA")
    server = ca.issue("server", "totalreg-node", server=True)
    r = receiver(tls={"cert_file": str(server.cert), "key_file": str(server.key)},
                 allowed_callers=[])
    mute = [connect(r.port) for _ in range(2)]  # TCP only, never a ClientHello
    try:
        time.sleep(0.3)
        ae = AE(ae_title="TLSSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(Verification)
        t0 = time.monotonic()
        assoc = ae.associate("127.0.0.1", r.port, ae_title="TOTALREG",
                             tls_args=(client_context(ca.pair.cert, None), "localhost"))
        assert assoc.is_established, "a TLS client was not served while silent connections were open"
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert time.monotonic() - t0 < ACSE_S, "the TLS client waited for the silent connections' timeout"
        assert all(closed_by_peer(s, ACSE_S + 2) is not None for s in mute), "a silent TLS connection outlived ARTIM"
    finally:
        for s in mute:
            s.close()


# ---------------------------------------------------------------------------------------------- 2: memory

def _deflate_bomb(folder: Path, inflated_mib: int) -> tuple[Path, int]:
    """A Part 10 file in Deflated Explicit VR LE whose pixel data is ``inflated_mib`` MiB of zeros; (path, bytes of
    the deflated data set)."""
    ds = dcmread(nodefx.make_series(folder / "src", n_slices=1, size=8)[0])
    del ds.PixelData
    n = inflated_mib * 1024 * 1024
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 512, n // (1024 * 512 * 2)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)  # explicit VR little endian, no pixel data yet
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(head.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, n))]
    chunk = bytes(1 << 20)
    for _ in range(inflated_mib):
        parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    body = b"".join(parts)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    path = folder / "bomb.dcm"
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(body)
    return path, len(body)


@pytest.fixture(scope="module")
def node1(tmp_path_factory):
    """`totalreg serve` with one receiver process (its RSS is the receiver's)."""
    tmp = tmp_path_factory.mktemp("hostile-node")
    # network_timeout_s 60: pynetdicom inflates a deflated file once in the sender before it sends it raw
    cfg, path = nodefx.write_node_config(tmp, node={"receiver_processes": 1, "acse_timeout_s": 5,
                                                    "network_timeout_s": 60},
                                         jobs={"workers": 0})
    node = nodefx.start_node(path)
    yield node
    node.kill()


def _bomb_case(node, tmp: Path, inflated_mib: int) -> dict:
    bomb, wire = _deflate_bomb(tmp, inflated_mib)
    ae = _scu("BOMBER", ts=(DeflatedExplicitVRLittleEndian,))  # only deflate: sent as it is in the file
    with RssSampler(node.proc.pid, period_s=0.05) as rss:
        time.sleep(0.2)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALREG")
        assert assoc.is_established
        try:
            st = assoc.send_c_store(bomb)
            echo = assoc.send_c_echo()
        finally:
            assoc.release()
        time.sleep(0.3)
    status = int(st.Status) if st and "Status" in st else -1
    return {"wire_bytes": wire, "inflated_bytes": inflated_mib * 1024 * 1024, "status": f"0x{status:04X}",
            "association_goes_on": bool(echo) and echo.Status == 0,
            "rss_before_mib": rss.first, "rss_peak_mib": rss.peak, "rss_rise_mib": round(rss.peak - rss.first, 1)}


def test_deflate_bomb_is_refused_with_bounded_memory(node1, tmp_path):
    f = _bomb_case(node1, tmp_path, 400)
    write_figures("hostile_deflate_bomb_ci", f)
    assert f["wire_bytes"] < 1_000_000, f"the bomb is {f['wire_bytes']} bytes on the wire (setup)"
    assert f["status"] == "0xA700", f"deflate bomb answered {f['status']}"
    assert f["association_goes_on"]
    assert f["rss_rise_mib"] < RSS_LIMIT_MIB, f"receiver RSS rose by {f['rss_rise_mib']} MiB"
    assert "deflate bomb" in node1.log()
    spool = node1.data_dir / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()], "something of the bomb stayed in the spool"
    # a real deflated instance is still taken
    ds = dcmread(nodefx.make_series(tmp_path / "ok", n_slices=1, size=16)[0])
    ae = _scu("MODALITY", ts=(DeflatedExplicitVRLittleEndian,))
    assoc = ae.associate("127.0.0.1", node1.port, ae_title="TOTALREG")
    try:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


def test_streamed_inflation_refuses_bombs_and_cut_streams_without_keeping_them(tmp_path):
    from node.receive.part10 import DatasetTooLarge, read_header
    bomb, wire = _deflate_bomb(tmp_path, 256)
    raw = bomb.read_bytes()
    meta_end = 132 + 12 + struct.unpack("<L", raw[140:144])[0]  # preamble, DICM, group length element + group
    body = raw[meta_end:]
    from io import BytesIO
    with pytest.raises(DatasetTooLarge, match="deflate bomb"):
        read_header(BytesIO(body), DeflatedExplicitVRLittleEndian, max_inflated_bytes=64 * 1024 * 1024)
    ds = read_header(BytesIO(body), DeflatedExplicitVRLittleEndian, max_inflated_bytes=300 * 1024 * 1024)
    assert ds.NumberOfFrames == 256  # under the limit: parsed, the pixel data counted but never kept
    with pytest.raises(ValueError, match="cut short"):
        read_header(BytesIO(body[: len(body) // 2]), DeflatedExplicitVRLittleEndian, max_inflated_bytes=1 << 30)


def _push(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` bytes of zeros until the node closes the connection; bytes sent."""
    chunk = bytes(1 << 20)
    sent = 0
    sock.settimeout(5)
    try:
        while sent < total:
            sent += sock.send(chunk[:min(len(chunk), total - sent)])
    except OSError:
        pass
    return sent


def _pdu_case(node, push_bytes: int) -> dict:
    out = {}
    with RssSampler(node.proc.pid, period_s=0.05) as rss:
        time.sleep(0.2)
        # before any association: the first PDU announces 2^31 bytes
        s = connect(node.port)
        s.sendall(struct.pack(">BBL", 0x01, 0, 2 ** 31))
        out["before_assoc_sent_bytes"] = _push(s, push_bytes)
        out["before_assoc_closed"] = closed_by_peer(s, 5) is not None
        s.close()
        # after association: a P-DATA-TF announcing 2^31 bytes
        s = connect(node.port, source="127.0.0.1")
        s.sendall(assoc_rq(calling="GOODSCU"))
        s.settimeout(5)
        ac = s.recv(65536)
        out["associated"] = ac[:1] == b"\x02"
        s.sendall(struct.pack(">BBL", 0x04, 0, 2 ** 31))
        out["after_assoc_sent_bytes"] = _push(s, push_bytes)
        out["after_assoc_closed"] = closed_by_peer(s, 5) is not None
        s.close()
        time.sleep(0.3)
    out.update(rss_before_mib=rss.first, rss_peak_mib=rss.peak, rss_rise_mib=round(rss.peak - rss.first, 1),
               pushed_bytes=push_bytes)
    return out


def test_pdu_announcing_2gib_is_refused_with_bounded_memory(node1):
    f = _pdu_case(node1, 32 * 1024 * 1024)
    write_figures("hostile_pdu_2gib_ci", f)
    assert f["associated"], "setup: the raw A-ASSOCIATE-RQ was not accepted"
    assert f["before_assoc_closed"] and f["after_assoc_closed"], f
    assert f["rss_rise_mib"] < RSS_LIMIT_MIB, f"receiver RSS rose by {f['rss_rise_mib']} MiB"
    assert "announces 2147483648 bytes" in node1.log()
    assert nodefx.echo_ok(node1.port)


def test_dataset_over_the_limit_is_answered_out_of_resources(receiver, tmp_path):
    r = receiver(max_dataset_bytes=1024 * 1024, allowed_callers=[])
    big = dcmread(nodefx.make_series(tmp_path / "big", n_slices=1, size=768)[0])  # 768 x 768 x 2 bytes: 1.1 MiB
    small = dcmread(nodefx.make_series(tmp_path / "small", n_slices=1, size=16)[0])
    assoc = _scu().associate("127.0.0.1", r.port, ae_title="TOTALREG")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(big).Status == 0xA700
        assert assoc.send_c_store(small).Status == 0  # the association goes on
    finally:
        assoc.release()
    held = held_instances(r.db)
    assert str(big.SOPInstanceUID) not in held and str(small.SOPInstanceUID) in held
    assert not list(r.spool.rglob("*.part"))
    assert len(list(r.spool.rglob("*.dcm"))) == 1


# -------------------------------------------------------------------------------------------- 5: shutdown

class Streamer:
    """Sends ``files`` in a loop over one association, recording (seconds, status) of every answer."""

    def __init__(self, port: int, files: list[Path], calling: str):
        self.port, self.files, self.calling = port, files, calling
        self.answers: list[tuple[float, int, str]] = []  # (monotonic, status, SOP UID); status -1: none
        self.started = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            assoc = _scu(self.calling).associate("127.0.0.1", self.port, ae_title="TOTALREG")
            if not assoc.is_established:
                return
            self.started.set()
            for _ in range(10_000):
                for f in self.files:
                    ds = dcmread(f)
                    st = assoc.send_c_store(ds)
                    code = int(st.Status) if st and "Status" in st else -1
                    self.answers.append((time.monotonic(), code, str(ds.SOPInstanceUID)))
                    if code == -1 or not assoc.is_established:
                        return
        except Exception:  # noqa: BLE001 - the node went away: that is the point
            return

    def acked(self) -> list[str]:
        return [u for _, code, u in self.answers if code == 0]


def test_sigterm_with_open_half_open_and_busy_associations(tmp_path):
    cfg, path = nodefx.write_node_config(tmp_path, node={"receiver_processes": 2, "acse_timeout_s": 30,
                                                         "network_timeout_s": 60, "max_associations": 8},
                                         jobs={"workers": 0})
    node = nodefx.start_node(path)
    socks: list[socket.socket] = []
    figures: dict = {}
    try:
        files = nodefx.make_series(tmp_path / "in", n_slices=12, size=64)
        streamers = [Streamer(node.port, files, f"SENDER{i}") for i in range(2)]
        for st in streamers:
            st._t.start()
        for st in streamers:
            assert st.started.wait(20), "a sender could not associate (setup)"
        idle = _scu("IDLESCU").associate("127.0.0.1", node.port, ae_title="TOTALREG")
        assert idle.is_established
        half = connect(node.port)
        half.sendall(assoc_rq()[:40])
        stalled = connect(node.port, source="127.0.0.1")  # associated, then a P-DATA stalled mid-way
        stalled.sendall(assoc_rq(calling="STALLED"))
        stalled.settimeout(5)
        assert stalled.recv(65536)[:1] == b"\x02"
        stalled.sendall(struct.pack(">BBL", 0x04, 0, 1 << 20) + bytes(100_000))
        socks = [half, stalled]
        wait_for(lambda: all(len(s.acked()) >= 5 for s in streamers), 30, "both senders under way", node)
        t_term = time.monotonic()
        node.proc.send_signal(15)
        refused_new = []
        time.sleep(0.5)
        for _ in range(4):  # nobody accepts any more, whichever process a connection would go to
            refused_new.append(echoscu(node.port, timeout_s=2).returncode != 0)
            time.sleep(0.1)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        exit_s = time.monotonic() - t_term
        half_closed = closed_by_peer(half, 1) is not None
        last_ok = max((t for s in streamers for t, code, _ in s.answers if code == 0), default=t_term)
        first_refusal = min((t for s in streamers for t, code, _ in s.answers if code != 0 and t >= t_term),
                            default=None)
        acked = [u for s in streamers for u in s.acked()]
        figures = {"exit_s": round(exit_s, 2), "exit_code": node.proc.returncode,
                   "acked_before_exit": len(set(acked)),
                   "last_0x0000_after_sigterm_s": round(last_ok - t_term, 2),
                   "first_refusal_after_sigterm_s": None if first_refusal is None else round(first_refusal - t_term, 2),
                   "new_connections_refused": sum(refused_new), "half_open_closed": half_closed,
                   "idle_association_aborted": idle.is_aborted or not idle.is_established}
        assert node.proc.returncode is not None, f"the node did not exit within 30 s of SIGTERM\n{node.log()[-3000:]}"
        assert exit_s < 10.0, f"the node took {exit_s:.1f} s to exit after SIGTERM\n{node.log()[-3000:]}"
        assert node.proc.returncode == 0
        assert all(refused_new), "a receiver process still accepted connections during shutdown"
        assert half_closed and figures["idle_association_aborted"]
        # restart: every acknowledged instance is on disk and indexed
        node2 = nodefx.start_node(path)
        try:
            db = db_of(cfg)
            try:
                originals = {}
                for f in files:
                    originals[str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f
                assert_acked_held(db, sorted(set(acked)), originals, Path(cfg.node.data_dir) / "spool")
            finally:
                db.dispose()
        finally:
            node2.stop(timeout=15)
    finally:
        for s in socks:
            s.close()
        node.kill()
        write_figures("hostile_sigterm_ci", figures)


# -------------------------------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_200_idle_connections_reopened_for_30_s_never_lock_out_a_caller(receiver):
    r = receiver(acse_timeout_s=10, max_associations=16, max_associations_per_address=8)
    stop = threading.Event()
    opened = [0]

    def stranger():
        pool: list[socket.socket] = []
        while not stop.is_set():
            while len(pool) < 200 and not stop.is_set():
                try:
                    pool.append(connect(r.port, timeout=2))
                    opened[0] += 1
                except OSError:
                    time.sleep(0.01)
            still = []
            for s in pool:
                r_, _, _ = select.select([s], [], [], 0)
                if r_:
                    s.close()  # the node closed it (or sent something): open another one
                else:
                    still.append(s)
            pool = still
            time.sleep(0.05)
        for s in pool:
            s.close()
    t = threading.Thread(target=stranger, daemon=True)
    t.start()
    results = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 30:
            t1 = time.monotonic()
            ok = echoscu(r.port, timeout_s=5).returncode == 0
            results.append((ok, time.monotonic() - t1))
            time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    write_figures("hostile_idle200_full", {"echoes": len(results), "echoes_ok": sum(ok for ok, _ in results),
                                           "echo_max_s": round(max(d for _, d in results), 2),
                                           "stranger_connections_opened": opened[0]})
    assert all(ok for ok, _ in results), f"{sum(not ok for ok, _ in results)} of {len(results)} echoes refused"


@pytest.mark.slow
def test_memory_cases_full(node1, tmp_path):
    bomb = _bomb_case(node1, tmp_path, 1000)
    pdu = _pdu_case(node1, 150 * 1024 * 1024)
    write_figures("hostile_memory_full", {"bomb": bomb, "pdu": pdu})
    assert bomb["status"] == "0xA700" and bomb["rss_rise_mib"] < RSS_LIMIT_MIB, bomb
    assert pdu["before_assoc_closed"] and pdu["after_assoc_closed"] and pdu["rss_rise_mib"] < RSS_LIMIT_MIB, pdu
