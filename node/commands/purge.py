"""`totalreg purge [--dry-run] [--json] --config node.yaml`: one retention pass now (``retention:`` settings).

Lists exactly what goes (or, with ``--dry-run``, would go): each received study, retrieved prior and job results
folder with its bytes and the reason (age limit or watermark), the job records and events; a real purge is recorded
as an event with counts and bytes (see :mod:`node.retention.purge`).
"""
from __future__ import annotations

import json
import os

from node import audit
from node.config import load_config
from node.retention.purge import purge
from node.store.db import open_database


def add_parser(subparsers) -> None:
    """Register the `purge` sub-command."""
    p = subparsers.add_parser("purge", help="delete what the retention settings say may go (--dry-run: list it)")
    p.add_argument("--config", "-c", default=None, help="node.yaml (default: embedded defaults)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    """Plan (and unless --dry-run, run) one purge and print it; returns 0."""
    os.umask(0o077)
    cfg = load_config(args.config)
    db = open_database(cfg)
    try:
        res = purge(db, cfg, dry_run=args.dry_run, actor=(audit.cli_actor(), "cli"))
    finally:
        db.dispose()
    p = res.plan
    if args.json:
        print(json.dumps(dict(p.as_dict(), dry_run=args.dry_run, done=None if args.dry_run else res.summary()),
                         indent=1))
        return 0
    u = p.usage
    if u is not None:
        print(f"usage ({u.metric}): {u.used} bytes; high watermark {u.high_bytes}, low {u.low_bytes}; spool "
              f"{u.spool_bytes}, results {u.results_bytes} bytes")
    verb = "would delete" if args.dry_run else "deleting"
    print(f"{verb}: {p.summary()}")
    for item in p.items:
        print(f"  {item.line()}")
    if p.job_records:
        print(f"  job records: {', '.join(map(str, p.job_records))}")
    if p.n_events:
        print(f"  events before {p.events_before:%Y-%m-%d %H:%M:%S}: {p.n_events}")
    if p.protected_studies:
        print(f"kept: {p.protected_studies} eligible studies that queued or running jobs need")
    if not args.dry_run:
        print(f"deleted: {res.summary()}; {res.bytes} bytes")
        for k in res.kept:
            print(f"  kept (changed since the plan): {k}")
    return 0
