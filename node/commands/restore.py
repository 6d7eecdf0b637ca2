"""`totalreg restore DIR --config node.yaml`: put a backup made by `totalreg backup` into the node of this
configuration (which must hold no data), rewrite the file paths to its data_dir and check index and disk."""
from __future__ import annotations

import os

from node.config import load_config
from node.ops.backup import restore
from node.retention.check import check
from node.store.db import open_database


def add_parser(subparsers) -> None:
    """Register the `restore` sub-command."""
    p = subparsers.add_parser("restore", help="restore a backup folder into a node without data")
    p.add_argument("dir", help="the backup folder")
    p.add_argument("--config", "-c", default=None, help="node.yaml of the target node (default: embedded defaults)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Restore, then run the index/disk check; 0 when it is clean."""
    os.umask(0o077)
    cfg = load_config(args.config)
    m = restore(cfg, args.dir)
    print(f"restored the backup of {m['data_dir']} ({m['created_at']}) into {cfg.node.data_dir}: "
          f"{m['counts']['jobs']} jobs, {m['counts']['instances']} instances; {m['rewritten']} paths rewritten")
    db = open_database(cfg)
    try:
        rep = check(db, cfg)
    finally:
        db.dispose()
    print(rep.text())
    return 0 if rep.ok else 1
