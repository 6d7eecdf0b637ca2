"""Several DICOM receiver processes on one port (``node.receiver_processes``, one shared listening socket): concurrent
senders lose nothing and double-count nothing, associations go to the least busy process, and the receiver children
never outlive the node process (kill -9 included)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from conftest import echo_ok, make_series, storescu
from node.store.db import Database, Instance, Series, Study

STUDIES = ("1.2.826.0.1.3680043.67.1", "1.2.826.0.1.3680043.67.2")


def _receiver_children(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent`` and that run node.receive.receiver_child."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and b"node.receive.receiver_child" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """True while any thread of ``pid`` still runs. A killed multi-threaded process shows its leader as a zombie
    while other threads (one finishing an fsync, say) still exit and hold its sockets, so every task is checked."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for t in tasks:
        try:
            state = (t / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            return True
    return False


def _listeners(port: int) -> int:
    """Sockets in LISTEN state on 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == want and parts[3] == "0A":
            n += 1
    return n


def _listener_holders(port: int) -> set[int]:
    """Processes that hold the socket listening on 127.0.0.1:port (its inode among their open files)."""
    want = f"0100007F:{port:04X}"
    inodes = {f"socket:[{line.split()[9]}]" for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1] == want and line.split()[3] == "0A"}
    holders = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fds = list((d / "fd").iterdir())
        except OSError:  # the process ended, or is not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # this descriptor was closed since the listing (a running service opens and closes many)
                continue
            if target in inodes:
                holders.add(int(d.name))
                break
    return holders


def _pynetdicom_send(port: int, files: list[Path], results: list) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG")
    ok = 0
    if assoc.is_established:
        for f in files:
            st = assoc.send_c_store(dcmread(f))
            ok += bool(st) and int(st.Status) == 0
        assoc.release()
    results.append(ok)


def _storescu_send(port: int, files: list[Path], results: list) -> None:
    r = storescu(port, files)
    results.append(len(files) if r.returncode == 0 else f"storescu failed: {r.stderr[-500:]}")


def test_two_receiver_processes_store_every_instance_and_die_with_the_node(node_config, node_proc, tmp_path):
    cfg, path = node_config(rules=[], node={"receiver_processes": 2})
    senders = []
    for i in range(4):  # two studies with two series each: counters of one study updated from both processes
        files = make_series(tmp_path / f"s{i}", study_uid=STUDIES[i // 2], n_slices=50, size=16, seed=i,
                            prefix=f"S{i}")
        senders.append(files)
    node = node_proc(path)
    children = _receiver_children(node.proc.pid)
    assert len(children) == 1, node.log()[-3000:]
    assert _listeners(node.port) == 1, node.log()[-3000:]  # one socket, bound once ...
    assert _listener_holders(node.port) == {node.proc.pid, children[0]}  # ... that both processes accept on

    results: list = []
    threads = [threading.Thread(target=_storescu_send if i % 2 else _pynetdicom_send,
                                args=(node.port, files, results)) for i, files in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(map(str, results)) == ["50"] * 4, node.log()[-3000:]

    db = Database(cfg.node.database_url())
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 200
            studies = {st.study_uid: st for st in s.scalars(select(Study))}
            assert sorted(studies) == sorted(STUDIES)
            for uid in STUDIES:
                assert studies[uid].n_instances == 100
                assert studies[uid].size_bytes == s.scalar(select(func.sum(Instance.size_bytes))
                                                           .where(Instance.study_uid == uid))
            series = list(s.scalars(select(Series)))
            assert sorted(x.n_instances for x in series) == [50] * 4
            paths = [Path(p) for p in s.scalars(select(Instance.path))]
    finally:
        db.dispose()
    spooled = [p for p in (node.data_dir / "spool").rglob("*.dcm")]
    assert len(spooled) == 200 and sorted(map(str, spooled)) == sorted(map(str, paths))
    assert not list((node.data_dir / "spool").rglob("*.part"))

    node.kill()  # SIGKILL: the child must not survive and keep the port
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(c) for c in children), "a receiver child outlived the killed node"
    while _listeners(node.port) and time.monotonic() < deadline:  # the kernel closes a dead task's sockets
        time.sleep(0.1)
    assert _listeners(node.port) == 0
    with socket.socket() as probe:  # nothing listens: a plain bind (no SO_REUSEPORT) gets the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", node.port))
    assert not echo_ok(node.port, timeout=2)


def test_service_reports_dead_child_restarts_it_and_stops_children(node_config):
    from node.service import NodeService
    cfg, _ = node_config(rules=[], node={"receiver_processes": 2})
    svc = NodeService(cfg, workers=0, web=False)
    svc.start()
    try:
        assert svc.receiver_alive() and svc.receiver_processes() == 2
        (first,) = svc.receiver_children.pids()
        assert _listeners(cfg.node.port) == 1 and _listener_holders(cfg.node.port) == {os.getpid(), first}
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while svc.receiver_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not svc.receiver_alive()  # /healthz reports the receiver unhealthy while a child is missing
        deadline = time.monotonic() + 90
        while not svc.receiver_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert svc.receiver_alive()
        (second,) = svc.receiver_children.pids()
        assert second != first and _alive(second)
        assert _listener_holders(cfg.node.port) == {os.getpid(), second}
        assert echo_ok(cfg.node.port)
    finally:
        svc.stop(timeout=30)
    assert not _alive(second)  # SIGTERM: stopped, not orphaned
    assert _listeners(cfg.node.port) == 0


def test_receiver_child_ignores_a_node_folder_in_the_working_directory(node_config, tmp_path, monkeypatch):
    """A node started in a folder that holds a data folder called node/ (with spool/ inside - the demo's layout)
    still starts its receiver children: they run `python -P -m node.receive.receiver_child`, so the working directory
    cannot shadow the package (it did: "cannot import name 'Spool' from 'node.receive.spool'")."""
    from node.service import NodeService
    work = tmp_path / "work"
    (work / "node" / "spool").mkdir(parents=True)
    monkeypatch.chdir(work)
    cfg, _ = node_config(rules=[], node={"receiver_processes": 2})
    svc = NodeService(cfg, workers=0, web=False)
    svc.start()  # raised "a DICOM receiver process exited with code 1 before listening" before the fix
    try:
        assert svc.receiver_alive() and svc.receiver_processes() == 2
        assert _listeners(cfg.node.port) == 1 and echo_ok(cfg.node.port)
    finally:
        svc.stop(timeout=30)


def _received_metric() -> float:
    from node.ops import metrics
    for line in metrics.render().decode().splitlines():
        if line.startswith("totalreg_instances_received_total "):
            return float(line.split()[1])
    raise AssertionError("totalreg_instances_received_total missing")


def test_associations_go_to_the_least_busy_receiver_process(node_config, tmp_path):
    """Four associations opened one after the other end up 2 + 2 on the two receiver processes (the kernel's
    SO_REUSEPORT hash, used before, often gave 3 + 1 or 4 + 0), each process's count drops when they end, and the
    node's Prometheus counter includes what the child process stored."""
    from node.service import NodeService
    cfg, _ = node_config(rules=[], node={"receiver_processes": 2})
    files = make_series(tmp_path / "in", n_slices=4, size=16)
    svc = NodeService(cfg, workers=0, web=False)
    svc.start()
    before = _received_metric()
    assocs = []
    try:
        for _ in range(4):
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context("1.2.840.10008.1.1")
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", cfg.node.port, ae_title="TOTALREG")
            assert assoc.is_established
            assocs.append(assoc)
            time.sleep(0.1)  # the accepting process has counted it
        assert svc._load.counts()[:2] == [2, 2]
        assert all(int(a.send_c_echo().Status) == 0 for a in assocs)
        assert [int(a.send_c_store(dcmread(f)).Status) for a, f in zip(assocs, files)] == [0, 0, 0, 0]
        assert _received_metric() - before == 4  # 2 stored by this process, 2 by the child
        for a in assocs:
            a.release()
        deadline = time.monotonic() + 5
        while svc._load.counts()[:2] != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc._load.counts()[:2] == [0, 0]
    finally:
        for a in assocs:
            if a.is_established:
                a.abort()
        svc.stop(timeout=30)
