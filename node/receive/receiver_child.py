"""Extra DICOM receiver processes (``node.receiver_processes``): the node process binds ``node.port`` once and
starts N-1 children that only receive; all of them accept on that one inherited socket, each new association
going to the process with the fewest open ones (:mod:`node.receive.shared_listener`).

Why: one Python process receives at most ~150 instances/s (the GIL: ~6-7 ms of Python per instance, most of it in
pynetdicom).  Each child runs one :class:`node.receive.receiver.Receiver` (its own pynetdicom server and group-commit
:class:`node.receive.index.IndexWriter`) on the same database and spool; the guarantee is unchanged in every process:
0x0000 only after the file, its rename and the index row are durable.  Children run no assembly, workers,
dispatcher, web console nor start-up recovery (the node process does those).

Lifetime: a child dies with the node process even on ``kill -9`` (``PR_SET_PDEATHSIG=SIGKILL``, plus a parent-pid
watchdog), stops gracefully on SIGTERM/SIGINT, and is restarted by the node process if it exits on its own.

Run as ``python -m node.receive.receiver_child`` with the configuration (JSON) on stdin; it prints ``ready`` on stdout once
it listens.  :class:`ReceiverChildren` is the node-process side.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import socket
import threading
import time
from pathlib import Path

from node.config import NodeConfig
from node.ops.logging_setup import configure
from node.receive.receiver import Receiver
from node.receive.shared_listener import ReceiverLoad
from node.receive.spool import Spool
from node.store.db import Database

log = logging.getLogger(__name__)

PARENT_ENV = "TOTALREG_RECEIVER_PARENT"
LISTEN_FD_ENV = "TOTALREG_LISTEN_FD"
LOAD_ENV = "TOTALREG_RECEIVER_LOAD"  # path of the shared load table, then ":" and this child's slot
PR_SET_PDEATHSIG = 1


def receiver_process_count(setting) -> int:
    """Receiver processes for ``node.receiver_processes``: 'auto' → min(CPU count, 4), else the number given."""
    return min(os.cpu_count() or 1, 4) if setting == "auto" else max(1, int(setting))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it exits (no-op where prctl is unavailable)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ReceiverChildren:
    """The node-process side: start ``count`` receiver child processes, watch them, stop them.

    The processes are started (and on a crash restarted) from one supervising thread that lives until
    :meth:`stop`, because ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends."""

    def __init__(self, cfg, count: int, *, listen_fd: int, load, ready_timeout_s: float = 120.0):
        self.cfg_json = cfg.model_dump_json()
        self.count = count
        self.listen_fd = listen_fd
        self.load = load  # node.receive.shared_listener.ReceiverLoad (the node process's view, slot 0)
        self.ready_timeout_s = ready_timeout_s
        self.procs: list[subprocess.Popen] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_timeout = 10.0

    # ------------------------------------------------------------------ node process API
    def start(self) -> None:
        """Start the children; returns once every one listens (RuntimeError naming the problem otherwise)."""
        self._thread = threading.Thread(target=self._supervise, name="receiver-children", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            self.stop()
            raise RuntimeError(self._error)

    def alive(self) -> bool:
        """True while every child process runs."""
        return (self._ready.is_set() and not self._error and len(self.procs) == self.count
                and all(p.poll() is None for p in self.procs))

    def pids(self) -> list[int]:
        """Process ids of the children (for health reports and tests)."""
        return [p.pid for p in self.procs]

    def signal_stop(self) -> None:
        """SIGTERM every child now, without waiting (the node stops all its receivers at the same moment)."""
        self._stop.set()
        for p in list(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (each aborts its associations, drains its C-STORE handlers and flushes its writer
        within seconds), SIGKILL after ``timeout`` s."""
        self._stop_timeout = timeout
        self.signal_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout + 5)
        self._terminate(timeout)

    # ------------------------------------------------------------------ internals
    def _spawn(self, slot: int) -> subprocess.Popen:
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid()), LISTEN_FD_ENV: str(self.listen_fd),
                                  LOAD_ENV: f"{self.load.path}:{slot}"})
        # -P: never import from the working directory (a data folder named "node" there would shadow the package)
        p = subprocess.Popen([sys.executable, "-P", "-m", "node.receive.receiver_child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, close_fds=True, pass_fds=(self.listen_fd,))
        p.stdin.write(self.cfg_json.encode())
        p.stdin.close()
        return p

    def _await_ready(self, p: subprocess.Popen) -> str | None:
        """None once ``p`` printed 'ready'; else why not."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                line = p.stdout.readline()
                if line.strip() == b"ready":
                    return None
                if not line:  # EOF: it exited
                    p.wait(timeout=10)
                    return (f"a DICOM receiver process exited with code {p.returncode} before listening "
                            "(its reason is in the log above)")
        return f"a DICOM receiver process did not start listening within {self.ready_timeout_s:.0f} s"

    def _supervise(self) -> None:
        try:
            self.procs = [self._spawn(i + 1) for i in range(self.count)]
            for p in self.procs:
                err = self._await_ready(p)
                if err:
                    self._error = err
                    break
        except OSError as exc:
            self._error = f"cannot start a DICOM receiver process: {exc}"
        self._ready.set()
        if self._error:
            return
        log.info("%d extra DICOM receiver process(es) listening: pids %s", self.count, self.pids())
        while not self._stop.wait(1.0):
            for i, p in enumerate(self.procs):
                if p.poll() is None or self._stop.is_set():
                    continue
                log.error("DICOM receiver process %d exited (code %s); starting a new one", p.pid, p.returncode)
                self.load.set(-1, i + 1)  # not counted as a receiver until the new one listens
                try:
                    q = self._spawn(i + 1)
                    self.procs[i] = q
                    err = self._await_ready(q)
                    if err:
                        log.error("%s", err)
                except OSError as exc:
                    log.error("cannot start a DICOM receiver process: %s", exc)
        self._terminate(self._stop_timeout)

    def _terminate(self, timeout: float) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("DICOM receiver process %d did not stop in %.0f s; killing it", p.pid, timeout)
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def main() -> int:
    """Child entry point: configuration JSON on stdin, receive until SIGTERM/SIGINT or the parent is gone."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    _die_with_parent()
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cfg = NodeConfig.model_validate_json(sys.stdin.read(), context={"defer_references": True})
    configure(cfg.logging, tag=f"receiver-{os.getpid()}")
    db = Database(cfg.node.database_url(), create=False)
    spool = Spool(Path(cfg.node.data_dir) / "spool", min_free_mb=cfg.node.min_free_disk_mb, fsync=cfg.node.fsync)
    try:
        listen = socket.socket(fileno=int(os.environ[LISTEN_FD_ENV]))
        load_path, slot = os.environ[LOAD_ENV].rsplit(":", 1)
        load = ReceiverLoad(load_path, int(slot))
    except (KeyError, ValueError, OSError) as exc:
        log.error("a receiver process needs the node process's listening socket and load table: %s", exc)
        return 1
    rcv = Receiver(cfg, db, spool, listen_socket=listen, load=load)
    try:
        rcv.start()
    except OSError as exc:
        log.error("cannot accept on %s:%d: %s", cfg.node.host, cfg.node.port, exc)
        return 1
    load.set(0)  # counted from now on
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        if parent and os.getppid() != parent:
            log.error("the node process %d is gone; this receiver process stops", parent)
            break
    load.set(-1)
    rcv.stop()
    load.close()
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
