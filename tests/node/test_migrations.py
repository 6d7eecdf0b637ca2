"""Schema migrations (node.store.migrate, node/store/migrations): SQLite and PostgreSQL.

* A database made by the release before migrations (tests/data/release_db, committed, never regenerated) upgrades in
  place with ``totalreg db upgrade`` (a subprocess): every row of every table keeps its values, and the console
  signs in with the old admin password.
* The models and the migrations agree: Alembic's ``compare_metadata`` between a database at head and
  ``Base.metadata`` finds nothing (a model change without its migration fails here), and the checker itself finds a
  column the migrations lack.
* One head; two processes upgrading the same fresh database at the same moment both succeed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tools import require

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "tests" / "data" / "release_db"
ADMIN_PW, VIEWER_PW = "release-admin-pw", "release-viewer-pw"  # tests/data/release_db/README.md
BACKENDS = ["sqlite", "postgresql"]


# ------------------------------------------------------------------------------------------------ helpers

def _totalreg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _rows(url: str) -> dict[str, list[dict]]:
    """Every row of every table the release had, as plain dicts ordered by id (read with plain SQL)."""
    from node.store.migrate import BASELINE_TABLES
    eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with eng.connect() as c:
            return {t: [dict(r._mapping) for r in c.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                    for t in BASELINE_TABLES}
    finally:
        eng.dispose()


def _version_rows(url: str) -> list[str]:
    eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with eng.connect() as c:
            return [r[0] for r in c.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        eng.dispose()


def _schema_diff(url: str, metadata=None) -> list:
    """Alembic's autogenerate comparison of the database at ``url`` with ``metadata`` (default Base.metadata)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from node.store.db import Base, make_engine
    eng = make_engine(url)
    try:
        with eng.connect() as c:
            mc = MigrationContext.configure(c, opts={"compare_type": True, "compare_server_default": True})
            diff = compare_metadata(mc, metadata if metadata is not None else Base.metadata)
            c.rollback()
    finally:
        eng.dispose()
    return diff


@pytest.fixture
def pg_database(pg_url):
    """A fresh, empty PostgreSQL database (public schema); yields its URL; dropped afterwards."""
    from node.store.db import make_engine
    admin = make_engine(pg_url)
    try:
        with admin.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError:
        require(f"PostgreSQL not reachable at {pg_url}")
    name = f"tr_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.connection.dbapi_connection.autocommit = True
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    base = sa.engine.make_url(pg_url)
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.connection.dbapi_connection.autocommit = True
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def _restore_pg(url: str) -> None:
    """Load node-7f8eae7.pg.sql (pg_dump of the release) into the empty database at ``url`` with psql."""
    psql = "/usr/bin/psql"
    if not os.path.exists(psql):
        require("psql (PostgreSQL client) not installed")
    # \restrict/\unrestrict are pg_dump's guards against psql meta-commands in data; older psql lacks them
    sql = "\n".join(ln for ln in (RELEASE / "node-7f8eae7.pg.sql").read_text().splitlines()
                    if not ln.startswith(("\\restrict", "\\unrestrict")))
    r = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url], input=sql, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture(params=BACKENDS)
def release_url(request, tmp_path):
    """URL of a copy of the release's database (SQLite file copied to tmp, or the pg_dump restored)."""
    if request.param == "sqlite":
        path = tmp_path / "node.db"
        path.write_bytes((RELEASE / "node-7f8eae7.sqlite").read_bytes())
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _restore_pg(url)
    return url


@pytest.fixture(params=BACKENDS)
def fresh_url(request, tmp_path):
    """URL of a new, empty database: a SQLite file under tmp, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_schema_url")


def _sign_in(client, user: str, password: str):
    """POST the console's login form (with the page's CSRF token); 303 on success."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token},
                       follow_redirects=False)


# ------------------------------------------------------------------------------------------------ tests

def test_release_database_upgrades_in_place(release_url, tmp_path):
    """totalreg db upgrade on a database of the release before migrations: nothing lost, console sign-in works."""
    from node.store import migrate
    before = _rows(release_url)
    # what the fixture holds (tests/data/release_db/README.md): the comparison below cannot pass on empty tables
    n = {t: len(v) for t, v in before.items()}
    assert (n["jobs"], n["sends"], n["events"], n["console_users"], n["api_tokens"]) == (5, 2, 6, 2, 1), n
    assert sorted(j["state"] for j in before["jobs"]) == ["dead", "done", "done", "failed", "queued"]

    r = _totalreg("db", "current", "--url", release_url)
    assert r.returncode == 1 and "not versioned" in r.stdout, r.stdout + r.stderr
    r = _totalreg("db", "upgrade", "--url", release_url)
    assert r.returncode == 0, r.stdout + r.stderr
    head = migrate.head_revision()
    assert f"not versioned -> {head}" in r.stdout
    assert _version_rows(release_url) == [head]

    after = _rows(release_url)
    for table, rows in before.items():  # later revisions may add columns: compare the release's columns
        kept = [{k: row[k] for k in rows[0]} for row in after[table]] if rows else after[table]
        assert kept == rows, f"{table} changed by the upgrade"
    assert _schema_diff(release_url) == []  # the stamped + upgraded schema is exactly the models'

    r = _totalreg("db", "upgrade", "--url", release_url)  # idempotent
    assert r.returncode == 0 and "already the newest" in r.stdout, r.stdout + r.stderr

    # the node reads it through its models, and the console signs in with the old passwords
    from fastapi.testclient import TestClient
    from node.config import parse_config
    from node.store.db import Database, Job, Send, Event
    from node.web.app import create_app
    db = Database(release_url)
    try:
        with db.session() as s:
            assert (s.query(Job).count(), s.query(Send).count(), s.query(Event).count()) == (5, 2, 6)
        cfg = parse_config(f"""
node: {{ae_title: TOTALREG, data_dir: {tmp_path / 'var'}}}
web: {{admin_user: admin, secret_key: test-secret-key-0123456789}}
""")
        with TestClient(create_app(cfg, db, data_dir=tmp_path / "var", show_password=lambda _t: True)) as c:
            assert _sign_in(c, "admin", "not-the-password").status_code == 401
            ok = _sign_in(c, "admin", ADMIN_PW)
            assert ok.status_code == 303 and ok.headers["location"] == "/", ok.status_code
            assert c.get("/jobs").status_code == 200
        with TestClient(create_app(cfg, db, data_dir=tmp_path / "var", show_password=lambda _t: True)) as c:
            assert _sign_in(c, "viewer", VIEWER_PW).status_code == 303
    finally:
        db.dispose()


def test_models_and_migrations_agree(fresh_url):
    """A database upgraded to head has exactly the models' schema (every schema change ships its migration)."""
    from node.store import migrate
    from node.store.db import Database
    migrate._SQLITE_SCHEMA.clear()  # run the migrations themselves, not a replay of them
    migrate._sqlite_schema_cache(migrate.head_revision()).unlink(missing_ok=True)
    db = Database(fresh_url)
    db.dispose()
    assert _version_rows(fresh_url) == [migrate.head_revision()]
    diff = _schema_diff(fresh_url)
    assert diff == [], ("the models differ from the migrations; write the migration "
                        f"(`totalreg db revision -m \"...\"`, see docs/CONTRACTS.md): {diff}")


def test_replayed_sqlite_schema_is_the_migrated_one(tmp_path):
    """A new SQLite database made by replaying the DDL captured from the migrations' run (the fast path for the
    second and later databases of a process) has exactly the migrated sqlite_master: tables, indexes, triggers."""
    import sqlite3
    from node.store import migrate
    from node.store.db import Database
    head = migrate.head_revision()
    cache = migrate._sqlite_schema_cache(head)
    cache.unlink(missing_ok=True)
    migrate._SQLITE_SCHEMA.clear()
    Database(f"sqlite:///{tmp_path / 'migrated.db'}").dispose()
    assert head in migrate._SQLITE_SCHEMA
    assert json.loads(cache.read_text()) == list(migrate._SQLITE_SCHEMA[head])  # for the next processes
    migrate._SQLITE_SCHEMA.clear()  # as a new process: read back from the cache file
    Database(f"sqlite:///{tmp_path / 'replayed.db'}").dispose()

    def master(name):
        with sqlite3.connect(tmp_path / name) as c:
            return sorted(c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"), key=str)
    assert master("migrated.db") == master("replayed.db")
    assert len([r for r in master("replayed.db") if r[0] == "table"]) >= len(migrate.BASELINE_TABLES) + 1
    assert _version_rows(f"sqlite:///{tmp_path / 'replayed.db'}") == [head]


def test_schema_check_finds_a_column_without_migration(tmp_path):
    """The check above can fail: a model column that no migration made is reported."""
    from node.store.db import Base, Database
    url = f"sqlite:///{tmp_path / 'n.db'}"
    Database(url).dispose()
    md = sa.MetaData()
    for t in Base.metadata.sorted_tables:
        t.to_metadata(md)
    md.tables["jobs"].append_column(sa.Column("retention_class", sa.String(16), nullable=True))
    diff = _schema_diff(url, md)
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "jobs", "retention_class")], diff


def test_one_head_and_linear_history():
    """One head (two revisions on the same parent fail here), found the same way by Alembic and by the start-up
    check; revision ids fit alembic_version (32 characters) and name their files."""
    from node.store import migrate
    assert migrate.heads() == [migrate.head_revision()]
    revs = list(migrate._script().walk_revisions())  # newest first, raises on a broken chain
    assert revs[-1].revision == migrate.BASELINE and revs[-1].down_revision is None
    for s in revs:
        assert len(s.revision) <= 32 and Path(s.path).name == f"{s.revision}.py", s.path
        assert not isinstance(s.down_revision, tuple), f"{s.revision} merges branches; keep the history linear"


_RACER = """
import sys, time
from node.store.db import make_engine
from node.store import migrate
import alembic.runtime.environment, alembic.script  # imported before the start line, so both start together
migrate._script()
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(migrate.upgrade(make_engine(sys.argv[1])))
"""


def test_two_processes_upgrade_the_same_fresh_database(fresh_url):
    """Two processes upgrading one new database at the same moment: both succeed, the schema is made once."""
    from node.store import migrate
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, fresh_url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    head = migrate.head_revision()
    results = sorted(out.strip() for out, _ in outs)
    # one of them made the schema, the other found it made (under the lock, or already at head)
    assert results == sorted([repr((None, head)), repr((head, head))]), results
    assert _version_rows(fresh_url) == [head]
    assert _schema_diff(fresh_url) == []


def test_newer_database_is_refused_and_sql_is_printed(tmp_path):
    """A database at a revision this release does not know (made by a newer one) is left alone with a plain error;
    ``db upgrade --sql`` prints the DDL without touching the database."""
    from node.store.db import Database
    url = f"sqlite:///{tmp_path / 'n.db'}"
    r = _totalreg("db", "upgrade", "--sql", "--url", url)
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE jobs" in r.stdout and "CREATE INDEX ix_jobs_claim" in r.stdout
    assert "INSERT INTO alembic_version" in r.stdout
    Database(url).dispose()
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    eng.dispose()
    with pytest.raises(RuntimeError, match="9999_from_the_future"):
        Database(url)
    r = _totalreg("db", "upgrade", "--url", url)
    assert r.returncode == 2 and "9999_from_the_future" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _version_rows(url) == ["9999_from_the_future"]


def test_sqlite_batch_alter_of_a_parent_table_keeps_child_rows(tmp_path):
    """SQLite batch mode copies a table and drops the old one; with foreign keys on, that drop would cascade into
    sends and job_runs. Inside the upgrade's connection (foreign keys off) the children survive."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from node.store import migrate
    from node.store.db import make_engine

    def batch_alter_jobs(path: Path, upgrade_connection: bool) -> tuple[int, int]:
        engine = make_engine(f"sqlite:///{path}")
        ctx_mgr = migrate._upgrade_connection(engine) if upgrade_connection else engine.begin()
        with ctx_mgr as conn:
            op = Operations(MigrationContext.configure(conn, opts={"render_as_batch": True}))
            with op.batch_alter_table("jobs", recreate="always") as b:
                b.add_column(sa.Column("retention_class", sa.String(16), nullable=True))
        with engine.connect() as c:
            counts = (c.exec_driver_sql("SELECT count(*) FROM sends").scalar(),
                      c.exec_driver_sql("SELECT count(*) FROM job_runs").scalar())
            c.rollback()
        engine.dispose()
        return counts

    for name in ("plain.db", "upgrade.db"):
        (tmp_path / name).write_bytes((RELEASE / "node-7f8eae7.sqlite").read_bytes())
    assert batch_alter_jobs(tmp_path / "plain.db", upgrade_connection=False) == (0, 0)  # the hazard is real
    assert batch_alter_jobs(tmp_path / "upgrade.db", upgrade_connection=True) == (2, 1)
