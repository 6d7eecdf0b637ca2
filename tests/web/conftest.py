"""Fixtures for the console tests: a real SQLite node database filled through node.db, the app, clients."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from node.config import parse_config
from node.store.db import Database
from web_populate import populate
from tools import free_port

ADMIN_PASSWORD = "correct-horse-9"
VIEWER_PASSWORD = "viewer-pass-1"


def csrf_of(html: str) -> str:
    """The CSRF token of a rendered console page."""
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


@pytest.fixture
def node_cfg(tmp_path):
    """A node configuration under tmp_path: a folder destination and a DICOM destination nobody listens on."""
    (tmp_path / "results").mkdir()
    return parse_config(f"""
node: {{ae_title: TOTALREG, data_dir: {tmp_path / 'var'}}}
web: {{admin_user: admin, admin_password: {ADMIN_PASSWORD}, secret_key: test-secret-key-0123456789}}
destinations:
  - {{name: local, kind: folder, path: {tmp_path / 'results'}}}
  - {{name: pacs-out, kind: dicom, ae_title: PACSOUT, host: 127.0.0.1, port: {free_port()}}}
rules:
  - name: ct-followup
    send_to: [local, pacs-out]
qc: {{max_folding_percent: 0.5, max_sdlogj: 0.25, min_similarity_gain: 0.0}}
""")


@pytest.fixture
def node_db(tmp_path, node_cfg):
    """The node database (SQLite file) with the jobs of tests/web/web_populate.py; yields (db, ids)."""
    db = Database(f"sqlite:///{tmp_path / 'var' / 'node.db'}")
    ids = populate(db, tmp_path / "var" / "results")
    yield db, ids
    db.dispose()


@pytest.fixture
def app(node_cfg, node_db, tmp_path):
    """The console app on the populated database (receiver reported alive)."""
    from node.web.app import create_app
    return create_app(node_cfg, node_db[0], data_dir=tmp_path / "var", receiver_alive=lambda: True)


def login(client: TestClient, user: str = "admin", password: str = ADMIN_PASSWORD):
    """Sign in through the login form; returns the response of the POST (303 to / on success)."""
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token},
                       follow_redirects=False)


@pytest.fixture
def admin(app):
    """A TestClient signed in as the configured admin."""
    with TestClient(app) as c:
        assert login(c).status_code == 303
        yield c


@pytest.fixture
def viewer(app, node_db):
    """A TestClient signed in as a viewer (read-only) user."""
    from node.web.auth import create_user
    with node_db[0].session() as s:
        create_user(s, "vera", VIEWER_PASSWORD, "viewer")
    with TestClient(app) as c:
        assert login(c, "vera", VIEWER_PASSWORD).status_code == 303
        yield c


@pytest.fixture
def tokens(node_db):
    """API tokens {'admin': ..., 'viewer': ...} created through node.web.auth."""
    from node.web.auth import create_token
    out = {}
    with node_db[0].session() as s:
        for role in ("admin", "viewer"):
            out[role] = create_token(s, f"test-{role}", role, created_by="admin")[1]
    return out
