"""The console's queries and writes on PostgreSQL (the scale-out database), in a fresh schema."""
from __future__ import annotations

import importlib.util
import uuid

import pytest
from fastapi.testclient import TestClient

from node.store.db import Database, Job
from tools import require
from web_populate import populate

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_db(pg_url, tmp_path):
    import sqlalchemy as sa
    if importlib.util.find_spec("psycopg") is None and pg_url.startswith("postgresql://"):
        pg_url = "postgresql+psycopg2://" + pg_url.removeprefix("postgresql://")  # SQLAlchemy 2.1 default: psycopg 3
    schema = f"tr_web_{uuid.uuid4().hex[:10]}"
    try:
        eng = sa.create_engine(pg_url)
        with eng.begin() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # noqa: BLE001
        require(f"PostgreSQL not reachable at {pg_url}: {exc.__class__.__name__}")
    sep = "&" if "?" in pg_url else "?"
    db = Database(f"{pg_url}{sep}options=-csearch_path%3D{schema}")
    yield db
    db.dispose()
    with eng.begin() as c:
        c.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    eng.dispose()


def test_console_on_postgres(pg_db, node_cfg, tmp_path):
    from node.web.app import create_app
    from node.web.auth import create_token
    ids = populate(pg_db, tmp_path / "var" / "results", qc_png=False)
    app = create_app(node_cfg, pg_db, data_dir=tmp_path / "var")
    with pg_db.session() as s:
        token = create_token(s, "pg", "admin", created_by="admin")[1]
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        st = c.get("/api/status", headers=h).json()
        assert st["jobs_by_state"] == {"queued": 1, "running": 0, "done": 2, "failed": 1, "dead": 1}
        assert st["studies"] == 3 and st["queue_length"] == 1
        r = c.post("/api/jobs/search", json={"patient": "jane"}, headers=h).json()
        assert sorted(j["id"] for j in r["jobs"]) == sorted([ids["done"], ids["failed"], ids["suspicious"]])
        assert c.post(f"/api/jobs/{ids['failed']}/retry", headers=h).json()["state"] == "queued"
        assert c.put("/api/rules", json={"text": "- name: a\n  send_to: [local]\n"}, headers=h).json()["version"] == 1
        assert c.put("/api/rules", json={"text": "- name: b\n"}, headers=h).json()["version"] == 2
        assert [x["version"] for x in c.get("/api/rules/history", headers=h).json()] == [2, 1]
        assert 'totalreg_jobs{state="queued"} 2.0' in c.get("/metrics").text
    with pg_db.session() as s:
        assert s.get(Job, ids["failed"]).state == "queued"
