"""`totalreg audit export [--since DATE] [--until DATE] [--config node.yaml] > audit.jsonl`: the audit trail as
JSON lines (one record per line, oldest first; times UTC with a trailing Z; patients only as keyed hashes)."""
from __future__ import annotations

import datetime as dt
import sys

from node import audit
from node.config import ConfigError, load_config
from node.store.db import open_database


def add_parser(subparsers) -> None:
    """Register `totalreg audit export`."""
    p = subparsers.add_parser("audit", help="the audit trail (who read or changed what): export as JSON lines")
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    ex = sub.add_parser("export", help="write audit records as JSON lines to standard output")
    ex.add_argument("--config", "-c", default=None, help="node.yaml of the node (default: embedded defaults)")
    ex.add_argument("--since", default=None, help="from this UTC date or time (YYYY-MM-DD[THH:MM[:SS]]), inclusive")
    ex.add_argument("--until", default=None, help="up to this UTC date or time, exclusive")
    ex.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _when(value: str | None, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        raise ConfigError(f"--{name}: a date or time like 2026-12-01 or 2026-12-01T08:00") from None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def export(db, since: dt.datetime | None = None, until: dt.datetime | None = None):
    """The records of ``db`` (a node.store.db.Database) as JSON-lines strings (no newline), oldest first."""
    with db.session() as s:
        yield from audit.export_lines(s, since=since, until=until)


def run(args) -> int:
    """Print the records; returns 0."""
    since, until = _when(args.since, "since"), _when(args.until, "until")
    db = open_database(load_config(args.config))
    try:
        n = 0
        for line in export(db, since, until):
            sys.stdout.write(line + "\n")
            n += 1
        print(f"totalreg: {n} audit records", file=sys.stderr)
    finally:
        db.dispose()
    return 0
