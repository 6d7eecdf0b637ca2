"""A node's SQLite database stays one database for every process while the node runs (found by bench/soak).

Closing any descriptor of a file drops all POSIX locks the process holds on it, SQLite's included. The node opens a
second engine (the receiver's index writer) after its first engine's connections are open; when that engine's
set-up opened and closed node.db, another process (``totalreg purge --dry-run``, ``totalreg check``, ``sqlite3``)
closing its last connection could take the exclusive lock, checkpoint and delete the live WAL: the node then wrote
into an unlinked WAL that no other process sees."""
from __future__ import annotations

import subprocess
import sys

from sqlalchemy import func, select

from node.store.db import Database, Event

READER = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
          "print(c.execute('select count(*) from events').fetchone()[0]); c.close()")


def _count_elsewhere(path) -> int:
    out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_another_process_sees_what_the_node_writes_after_a_second_engine_opened(tmp_path):
    path = tmp_path / "node.db"
    db = Database(f"sqlite:///{path}")
    with db.session() as s:  # the pooled connection stays open, as in a running node
        s.add(Event(message="first"))
    second = Database(f"sqlite:///{path}", create=False)  # the receiver's index writer engine
    assert _count_elsewhere(path) == 1  # another process opens and closes the database
    for i in range(3):
        with db.session() as s:
            s.add(Event(message=f"later {i}"))
    with db.session() as s:
        assert s.scalar(select(func.count(Event.id))) == 4
    assert _count_elsewhere(path) == 4  # was 1: the WAL holding the 3 later rows had been deleted
    assert (tmp_path / "node.db-wal").exists()
    second.dispose()
    db.dispose()
