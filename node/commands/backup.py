"""`totalreg backup DIR --config node.yaml`: an online backup of the node's database and of the files its rows
point at (spool and results) into the new folder DIR (see :mod:`node.ops.backup` and deploy/BACKUP.md)."""
from __future__ import annotations

import os

from node.config import load_config
from node.ops.backup import backup


def add_parser(subparsers) -> None:
    """Register the `backup` sub-command."""
    p = subparsers.add_parser("backup", help="back up the database, spool and results into a new folder")
    p.add_argument("dir", help="the backup folder (new, or empty)")
    p.add_argument("--config", "-c", default=None, help="node.yaml (default: embedded defaults)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Make the backup and print its counts; 0 when every row's file was copied, else 1."""
    os.umask(0o077)  # the backup holds patient data: owner-only
    m = backup(load_config(args.config), args.dir)
    c = m["counts"]
    print(f"backup of {m['data_dir']} ({m['database']}) in {args.dir}: {c['studies']} studies, {c['instances']} "
          f"instances, {c['jobs']} jobs, {c['sends']} sends, {c['events']} events; {m['files']} files, "
          f"{m['bytes']} bytes")
    for p in m["missing"][:20]:
        print(f"  missing (a row without its file): {p}")
    return 0 if not m["missing"] else 1
