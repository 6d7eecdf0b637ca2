"""`totalreg worker --config node.yaml`: run only job workers (scale-out).

Several worker processes, on one or several hosts, share the node's PostgreSQL database (``node.database``) and its
spool (``node.data_dir`` on shared storage).  Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` and leased; a worker
that dies has its job re-queued once the lease (``jobs.lease_s``) expires.  SIGTERM: finish the running job, stop.
"""
from __future__ import annotations

import os

import signal

from node.config import load_config
from node.ops.logging_setup import configure
from node.service import NodeService


def add_parser(subparsers) -> None:
    """Register the `worker` sub-command."""
    p = subparsers.add_parser("worker", help="run job workers only (several processes/hosts share PostgreSQL)")
    p.add_argument("--config", "-c", default=None, help="node.yaml (default: embedded defaults)")
    p.add_argument("--threads", type=int, default=1, help="worker threads in this process (default 1)")
    p.add_argument("--kinds", default=None, help="comma-separated job kinds to take (default: all)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls when idle")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run workers until SIGTERM/SIGINT; returns the exit code."""

    os.umask(0o077)  # spool, database, results and logs hold patient data: owner-only
    cfg = load_config(args.config)
    configure(cfg.logging, verbose=getattr(args, "verbose", False))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    service = NodeService(cfg, workers=max(1, args.threads), receive=False, web=False, worker_kinds=kinds,
                          poll_s=args.poll)

    def _stop(signum, _frame):
        service.stop_event.set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    service.start()
    print(f"totalreg: {service.n_workers} worker(s) on {cfg.node.database_url().split('@')[-1]}", flush=True)
    try:
        service.wait()
    finally:
        service.stop(timeout=cfg.jobs.lease_s)
    return 0
