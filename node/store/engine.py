"""The node database's engine: SQLite (WAL, ``BEGIN IMMEDIATE``, owner-only files) or PostgreSQL (pre-ping).

Below :mod:`node.store.db` and :mod:`node.store.migrate` (both build their engines here)."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url


def _private_sqlite_files(path: Path) -> None:
    """Create the SQLite file owner-only (0600) before SQLite opens it; tighten existing ones.

    The index holds patient names and IDs. SQLite gives its -wal and -shm files the database file's mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # never open+close an existing database file: closing ANY descriptor of it drops every
        # POSIX lock this process holds on it (SQLite's too); another process closing its last connection may then
        # take the file's lock, checkpoint and DELETE the live WAL under this process's connections
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def _set_wal(cur, wait_s: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL`` on a new connection, retried while another process holds the file: switching a
    fresh database to WAL needs an exclusive lock and SQLite can answer SQLITE_BUSY there without calling its busy
    handler (two processes opening one new database at once: "database is locked")."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for ``url`` (sqlite:///path or postgresql://...).

    SQLite: WAL journal, 30 s busy timeout, ``BEGIN IMMEDIATE`` for every transaction, parent folder created;
    ``sqlite_synchronous`` FULL (every commit fsyncs the WAL) or NORMAL (the receiver's index writer: a commit
    survives a crash of the process but not a power loss; the spool files it indexes are fsynced and
    :func:`node.receive.ingest.reindex_spool` re-indexes them at start-up).
    PostgreSQL: pre-ping; pass ``?options=-csearch_path%3Dmyschema`` in the URL to use a schema.
    """
    u = make_url(url)
    if u.drivername == "postgresql":  # SQLAlchemy 2.1 defaults to psycopg 3; the node ships psycopg2
        u = u.set(drivername="postgresql+psycopg2")
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            _private_sqlite_files(Path(u.database))
        sync = {"FULL": "FULL", "NORMAL": "NORMAL"}[sqlite_synchronous.upper()]
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _rec):  # pragma: no cover - trivial
            dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            _set_wal(cur)
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # pragma: no cover - trivial
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(u, pool_pre_ping=True, pool_size=10, max_overflow=20)
