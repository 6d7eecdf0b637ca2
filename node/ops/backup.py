"""Backup and restore of a node: its database and the files its rows point at (``totalreg backup DIR`` /
``totalreg restore DIR``; deploy/BACKUP.md).

A backup folder holds:

* ``node.db`` — SQLite: an online, consistent copy made with ``sqlite3.Connection.backup`` while the node runs;
  or ``node.pgdump`` — PostgreSQL: ``pg_dump --format=custom`` (of the URL's schema when it selects one);
* ``spool/<Study>/<Series>/<SOP>.dcm`` and ``results/<job id>/`` — exactly the files the copied rows name, taken
  from the copy (not from the live index), so the backup is consistent: a row without its file is listed in
  ``manifest.json`` (``missing``), a file no row names is not copied;
* ``secret_key`` (the console's cookie key) when present, and ``manifest.json`` (source data_dir, database kind,
  counts, bytes, time).

While a backup copies files, the periodic purge pauses (``<data_dir>/retention/backup.lock``). ``restore`` puts
the database and files into the data_dir of another configuration (the target must hold no data) and rewrites the
absolute paths in ``instances.path``, ``jobs.result_dir`` and ``jobs.qc_png`` to the new data_dir.
Sizes are bytes.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from node.errors import UserError
from node.store.db import Database, Event, Instance, Job, Send, Study

MANIFEST = "manifest.json"


class BackupError(UserError, RuntimeError):
    """A backup or restore that cannot be done (the message says why)."""


def lock_path(data_dir: str | Path) -> Path:
    """The file whose presence pauses the periodic purge while a backup copies files."""
    return Path(data_dir).resolve() / "retention" / "backup.lock"


def backup_running(data_dir: str | Path, max_age_s: float = 6 * 3600) -> bool:
    """True while a backup of this data_dir copies files (a lock younger than ``max_age_s``)."""
    try:
        return (_dt.datetime.now().timestamp() - lock_path(data_dir).stat().st_mtime) < max_age_s
    except FileNotFoundError:
        return False


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    return Path(u.database).resolve() if u.get_backend_name() == "sqlite" else None


def _pg_args(url: str) -> tuple[str, str | None]:
    """(libpq URL without the SQLAlchemy driver suffix, schema selected by ?options=-csearch_path=... or None)."""
    plain = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    opts = parse_qs(urlsplit(plain).query).get("options", [""])[0]
    schema = None
    for part in unquote(opts).split():
        if part.startswith("-csearch_path="):
            schema = part.split("=", 1)[1].split(",")[0]
    return plain, schema


def _copy(src: Path, dst: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(src, dst)
    return dst.stat().st_size


def _rel(path: str, data_dir: Path) -> Path | None:
    try:
        return Path(path).resolve().relative_to(data_dir)
    except ValueError:
        return None


def backup(cfg, dest: str | Path) -> dict:
    """Back up the node of ``cfg`` into the new (or empty) folder ``dest``; returns the manifest."""
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir = Path(cfg.node.data_dir).resolve()
    url = cfg.node.database_url()
    lock = lock_path(data_dir)
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock.write_text(str(os.getpid()))
    try:
        sq = _sqlite_file(url)
        if sq is not None:
            src = sqlite3.connect(sq)
            dst = sqlite3.connect(dest / "node.db")
            try:
                src.backup(dst)  # online and consistent, even while the node writes
            finally:
                dst.close()
                src.close()
            os.chmod(dest / "node.db", 0o600)
            copy_db = Database(f"sqlite:///{dest / 'node.db'}", create=False)
            kind = "sqlite"
        else:
            plain, schema = _pg_args(url)
            cmd = ["pg_dump", "--format=custom", "--no-owner", "--file", str(dest / "node.pgdump"), plain]
            if schema:
                cmd[1:1] = ["--schema", schema]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BackupError(f"pg_dump failed: {r.stderr.strip()[-500:]}")
            copy_db = Database(url, create=False)  # rows are read live: files added after the dump are not copied
            kind = "postgresql"
        missing: list[str] = []
        n_files = nbytes = 0
        try:
            with copy_db.session() as s:
                counts = dict(studies=s.scalar(select(func.count(Study.id))),
                              instances=s.scalar(select(func.count(Instance.id))),
                              jobs=s.scalar(select(func.count(Job.id))), sends=s.scalar(select(func.count(Send.id))),
                              events=s.scalar(select(func.count(Event.id))))
                last = 0
                while True:
                    rows = s.execute(select(Instance.id, Instance.path).where(Instance.id > last)
                                     .order_by(Instance.id).limit(5000)).all()
                    if not rows:
                        break
                    last = rows[-1][0]
                    for _id, path in rows:
                        rel = _rel(path, data_dir)
                        try:
                            if rel is None:
                                raise FileNotFoundError
                            nbytes += _copy(Path(path), dest / rel)
                            n_files += 1
                        except FileNotFoundError:
                            missing.append(path)
                result_dirs = [d for (d,) in s.execute(select(Job.result_dir).where(Job.result_dir != ""))]
        finally:
            copy_db.dispose()
        for d in result_dirs:
            rel = _rel(d, data_dir)
            if rel is None or not Path(d).is_dir():
                missing.append(d)
                continue
            shutil.copytree(d, dest / rel, dirs_exist_ok=True)
            for p in (dest / rel).rglob("*"):
                if p.is_file():
                    n_files += 1
                    nbytes += p.stat().st_size
        if (data_dir / "secret_key").is_file():
            _copy(data_dir / "secret_key", dest / "secret_key")
    finally:
        lock.unlink(missing_ok=True)
    manifest = dict(created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    data_dir=str(data_dir), database=kind, counts=counts, files=n_files, bytes=nbytes,
                    missing=missing)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _has_data(db: Database) -> bool:
    try:
        with db.session() as s:
            return bool(s.scalar(select(func.count(Job.id)))) or bool(s.scalar(select(func.count(Study.id))))
    except Exception:  # noqa: BLE001 - no tables yet
        return False


def restore(cfg, src: str | Path) -> dict:
    """Restore the backup folder ``src`` into the node of ``cfg`` (which must hold no data); returns the manifest
    with ``rewritten`` (rows whose paths moved to the new data_dir)."""
    src = Path(src).resolve()
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError):
        raise BackupError(f"{src} is not a backup made by `totalreg backup` (no {MANIFEST})") from None
    data_dir = Path(cfg.node.data_dir).resolve()
    url = cfg.node.database_url()
    sq = _sqlite_file(url)
    if (manifest["database"] == "sqlite") != (sq is not None):
        raise BackupError(f"the backup holds a {manifest['database']} database; the configuration names "
                          f"{'SQLite' if sq else 'PostgreSQL'} (restore into the same kind)")
    for sub in ("spool", "results"):
        if (data_dir / sub).is_dir() and any((data_dir / sub).iterdir()):
            raise BackupError(f"{data_dir / sub} is not empty: restore into a node without data")
    if sq is not None:
        if sq.exists() and sq.stat().st_size > 0:
            probe = Database(url, create=False)
            busy = _has_data(probe)
            probe.dispose()
            if busy:
                raise BackupError(f"{sq} already holds data: restore into a node without data")
            for suffix in ("", "-wal", "-shm"):
                Path(str(sq) + suffix).unlink(missing_ok=True)
        sq.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        s_src = sqlite3.connect(src / "node.db")
        s_dst = sqlite3.connect(sq)
        try:
            s_src.backup(s_dst)
        finally:
            s_dst.close()
            s_src.close()
        os.chmod(sq, 0o600)
    else:
        probe = Database(url, create=False)
        busy = _has_data(probe)
        probe.dispose()
        if busy:
            raise BackupError("the target PostgreSQL database already holds node data: restore into an empty one")
        plain, schema = _pg_args(url)
        r = subprocess.run(["pg_restore", "--no-owner", "--clean", "--if-exists", "--dbname", plain,
                            str(src / "node.pgdump")], capture_output=True, text=True)
        if r.returncode != 0:
            raise BackupError(f"pg_restore failed: {r.stderr.strip()[-500:]}")
    for sub in ("spool", "results"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, data_dir / sub, dirs_exist_ok=True)
    if (src / "secret_key").is_file() and not (data_dir / "secret_key").exists():
        _copy(src / "secret_key", data_dir / "secret_key")
    old = manifest["data_dir"].rstrip("/") + "/"
    new = str(data_dir).rstrip("/") + "/"
    db = Database(url)  # brings the schema up to date (migrations) before the paths are rewritten
    rewritten = 0
    try:
        if old != new:
            with db.session() as s:
                for table, col in (("instances", "path"), ("jobs", "result_dir"), ("jobs", "qc_png")):
                    rewritten += s.execute(text(
                        f"UPDATE {table} SET {col} = :new || substr({col}, :n) "
                        f"WHERE substr({col}, 1, :m) = :old"), dict(new=new, old=old, n=len(old) + 1,
                                                                    m=len(old))).rowcount or 0
    finally:
        db.dispose()
    manifest["rewritten"] = rewritten
    return manifest
