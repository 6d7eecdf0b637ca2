"""`totalreg check --config node.yaml`: walk the index and the disk (spool + results) and report mismatches.

Exit code 0 when they agree, 1 otherwise (see :mod:`node.retention.check`). Run it on a quiet or stopped node.
"""
from __future__ import annotations

from node.config import load_config
from node.retention.check import check
from node.store.db import open_database


def add_parser(subparsers) -> None:
    """Register the `check` sub-command."""
    p = subparsers.add_parser("check", help="check that the index and the files on disk agree")
    p.add_argument("--config", "-c", default=None, help="node.yaml (default: embedded defaults)")
    p.add_argument("--limit", type=int, default=20, help="lines shown per kind of mismatch")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the report; 0 when the index and the disk agree, else 1."""
    cfg = load_config(args.config)
    db = open_database(cfg)
    try:
        rep = check(db, cfg)
    finally:
        db.dispose()
    print(rep.text(args.limit))
    return 0 if rep.ok else 1
