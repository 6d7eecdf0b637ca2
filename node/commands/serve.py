"""`totalreg serve --config node.yaml`: run the whole node (listener, assembly, workers, dispatcher, console).

Every key has a default: ``totalreg serve`` alone listens on port 11112 as TOTALREG, keeps SQLite and the spool
under ./var and writes results to the folder destination.  SIGTERM or Ctrl-C stops gracefully.
"""
from __future__ import annotations

import os

import signal

from node.config import load_config
from node.ops.logging_setup import configure
from node.service import NodeService


def add_parser(subparsers) -> None:
    """Register the `serve` sub-command."""
    p = subparsers.add_parser("serve", help="run the node: DICOM listener, workers, dispatcher, web console")
    p.add_argument("--config", "-c", default=None, help="node.yaml (default: embedded defaults)")
    p.add_argument("--workers", type=int, default=None, help="worker threads (default: jobs.workers)")
    p.add_argument("--no-web", action="store_true", help="do not start the web console")
    p.set_defaults(func=run)


def _install_signals(service) -> None:
    def _stop(signum, _frame):
        service.stop_event.set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def run(args) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""

    os.umask(0o077)  # spool, database, results and logs hold patient data: owner-only
    cfg = load_config(args.config)
    configure(cfg.logging, verbose=getattr(args, "verbose", False))
    service = NodeService(cfg, workers=args.workers, web=False if args.no_web else None)
    _install_signals(service)
    service.start()
    print(f"totalreg: node {cfg.node.ae_title} listening on {cfg.node.host}:{cfg.node.port}", flush=True)
    try:
        service.wait()
    finally:
        service.stop()
    return 0
