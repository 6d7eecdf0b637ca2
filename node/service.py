"""The node process: receiver + assembly + N workers + dispatcher (+ web console), each stage in its own thread.

All state is in the database and the spool, so stopping (SIGTERM: graceful; kill -9: abrupt) loses nothing
acknowledged: at start the node removes half-written spool files, re-queues jobs and sends whose process on this
host is gone, and the assembly re-evaluates its database timers.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from node.audit.syslog import SyslogForwarder
from node.dispatch.dispatcher import Dispatcher, requeue_orphan_sends
from node.notify.delivery import HealthWatch, Notifier
from node.ops import metrics
from node.receive.ingest import reindex_spool
from node.receive.receiver import Receiver
from node.receive.receiver_child import ReceiverChildren, receiver_process_count
from node.receive.shared_listener import ReceiverLoad, bind_listener, stop_accepting
from node.receive.spool import Spool
from node.retention.purge import repair
from node.retention.runner import Retention
from node.route.assembly import Assembler
from node.store.db import Database, open_database
from node.store.queue import release_owned, requeue_orphans, worker_name
from node.web.system import check_peer
from node.work.worker import Worker

log = logging.getLogger(__name__)


def make_spool(cfg) -> Spool:
    """The spool of a configuration: ``<node.data_dir>/spool`` with ``node.min_free_disk_mb`` and ``node.fsync``."""
    return Spool(Path(cfg.node.data_dir) / "spool", min_free_mb=cfg.node.min_free_disk_mb, fsync=cfg.node.fsync)


def recover(db: Database, spool: Spool, cleanup_spool: bool = True) -> None:
    """Start-up recovery: partial spool files removed and spool files missing from the index indexed (only by the
    receiving process: a worker-only process must not touch files a live receiver is writing), orphaned jobs/sends
    of this host re-queued."""
    n = spool.cleanup_partials() if cleanup_spool else 0
    indexed = reindex_spool(db, spool) if cleanup_spool else 0
    with db.session() as s:
        jobs = requeue_orphans(s)
    with db.session() as s:
        sends = requeue_orphan_sends(s)
    if n or indexed or jobs or sends:
        log.warning("recovered after an interruption: %d partial spool files removed, %d spool files indexed "
                    "again, jobs %s re-queued, %d sends re-queued", n, indexed, jobs, sends)


class NodeService:
    """Compose and run the stages.  ``start()`` returns once everything listens; ``stop()`` is graceful."""

    def __init__(self, cfg, *, workers: int | None = None, receive: bool = True, web: bool | None = None,
                 worker_kinds: list[str] | None = None, poll_s: float = 0.5):
        self.cfg = cfg
        self.db = open_database(cfg)
        self.spool = make_spool(cfg)
        self.n_workers = cfg.jobs.workers if workers is None else workers
        self.receive = receive
        self.web = cfg.web.enabled if web is None else web
        self.worker_kinds = worker_kinds
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.receiver: Receiver | None = None
        self.receiver_children: ReceiverChildren | None = None  # node.receiver_processes - 1 extra listeners
        self.threads: list[threading.Thread] = []
        self._uvicorn = None
        self._listen = None  # the listening socket shared by several receiver processes
        self._load = None  # their load table (node.receive.shared_listener.ReceiverLoad)
        self.retention = None  # node.retention.runner.Retention when purging runs here

    def _thread(self, name: str, target) -> None:
        t = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def start(self) -> None:
        """Recover, then start every configured stage."""
        recover(self.db, self.spool, cleanup_spool=self.receive)
        if self.receive:  # a purge a crash interrupted is finished before anything reads the index
            repair(self.db, self.cfg)
        if self.receive:
            n_proc = receiver_process_count(self.cfg.node.receiver_processes)
            listen = load = None
            if n_proc > 1:  # one socket for every receiver process; each association to the least busy one
                n = self.cfg.node
                try:
                    listen = bind_listener(n.host, n.port)
                except OSError as exc:
                    raise RuntimeError(f"cannot listen on {n.host}:{n.port}: {exc}") from None
                load = ReceiverLoad.create(n_proc)
                self._listen, self._load = listen, load
                metrics.count_other_receivers(lambda: load.received(exclude_slot=0))
                self.receiver_children = ReceiverChildren(self.cfg, n_proc - 1, listen_fd=listen.fileno(),
                                                          load=load)
                try:
                    self.receiver_children.start()  # RuntimeError naming the problem
                except BaseException:
                    self._close_listener()
                    raise
            self.receiver = Receiver(self.cfg, self.db, self.spool, listen_socket=listen, load=load)
            try:
                self.receiver.start()
            except BaseException:
                if self.receiver_children is not None:
                    self.receiver_children.stop()
                self._close_listener()
                raise
            self._thread("assembly", Assembler(self.cfg, self.db).run)
            self._thread("dispatcher", Dispatcher(self.cfg, self.db, owner=worker_name("dispatcher"),
                                                  poll_s=self.poll_s).run)
            if self.cfg.retention.enabled:  # periodic purge: age limits and disk watermarks (node.retention)
                self.retention = Retention(self.cfg, self.db)
                self._thread("retention", self.retention.run)
            # job outcomes and node health -> webhooks
            self._thread("notify", Notifier(self.cfg, self.db, poll_s=max(self.poll_s, 1.0)).run)
            self._thread("health", HealthWatch(self.cfg, self.db, echo=self._echo_pacs,
                                               receiver_alive=self.receiver_alive).run)
            if self.cfg.audit.syslog_host:  # the audit trail to a syslog collector (ATNA, RFC 5424)
                self._thread("audit-syslog", SyslogForwarder(self.cfg, self.db).run)
        for i in range(self.n_workers):
            w = Worker(self.cfg, self.db, self.spool, name=worker_name(f"w{i}"), poll_s=self.poll_s,
                       kinds=self.worker_kinds)
            self._thread(f"worker-{i}", w.run)
        if self.receive and self.web:
            self._start_web()
        log.info("node started: receiver %s, %d worker(s), web %s", f"on ({self.receiver_processes()} process(es))"
                 if self.receive else "off", self.n_workers, "on" if self._uvicorn else "off")

    def _close_listener(self) -> None:
        """Close the shared listening socket and remove the load table (several receiver processes only)."""
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        if self._load is not None:
            metrics.count_other_receivers(None)
            self._load.close(unlink=True)
            self._load = None

    def receiver_processes(self) -> int:
        """DICOM receiver processes running (this one + children); 0 when not receiving."""
        if self.receiver is None or self.receiver.server is None:
            return 0
        kids = self.receiver_children
        return 1 + (sum(p.poll() is None for p in kids.procs) if kids else 0)

    def receiver_alive(self) -> bool:
        """True while this process listens and every receiver child process runs (reported by /healthz)."""
        rcv, kids = self.receiver, self.receiver_children
        return rcv is not None and rcv.server is not None and (kids is None or kids.alive())

    def _echo_pacs(self, name: str) -> tuple[bool, str]:
        """C-ECHO (or the DICOMweb check) of the configured PACS ``name`` for the health watch: (ok, message)."""
        c = check_peer(self.cfg, "pacs", name, timeout_s=10.0)
        return c.ok, c.message

    def _start_web(self) -> None:
        # reason: FastAPI, Starlette and Jinja2 load only in a process that serves the console (not in workers)
        from node.web.app import create_app
        import uvicorn
        app = create_app(self.cfg, self.db, data_dir=self.cfg.node.data_dir, receiver_alive=self.receiver_alive)
        server = uvicorn.Server(uvicorn.Config(app, host=self.cfg.web.host, port=self.cfg.web.port,
                                               log_level="warning", access_log=False))
        server.install_signal_handlers = lambda: None  # the main thread handles signals
        self._uvicorn = server
        t = threading.Thread(target=server.run, name="web", daemon=True)
        t.start()
        self.threads.append(t)
        log.info("web console on http://%s:%d", self.cfg.web.host, self.cfg.web.port)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let running jobs and sends finish (up to ``timeout`` s each), close the database."""
        self.stop_event.set()
        # every receiver process stops at the same moment: nobody accepts any more (the shared socket is shut
        # down for all), the children get SIGTERM now and this process's receiver stops meanwhile; each aborts its
        # associations, drains its running C-STOREs and flushes its index writer within seconds
        if self._listen is not None:
            stop_accepting(self._listen)
        if self.receiver_children is not None:
            self.receiver_children.signal_stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.receiver_children is not None:
            self.receiver_children.stop(timeout=min(timeout, 8.0))
        self._close_listener()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for t in self.threads:
            t.join(timeout=timeout)
        still = [t.name for t in self.threads if t.is_alive() and t.name.startswith("worker")]
        if still:  # a job did not finish in time: give it back to the queue rather than wait for its lease
            try:
                with self.db.session() as s:
                    ids = release_owned(s, worker_name() + ":")
                log.warning("stopped with jobs %s unfinished; they were put back in the queue", ids)
            except Exception:  # noqa: BLE001
                log.exception("could not give back unfinished jobs; their leases will expire")
        self.db.dispose()
        log.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler)."""
        while not self.stop_event.wait(1.0):
            pass
