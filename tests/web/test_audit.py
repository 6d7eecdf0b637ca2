"""The audit trail: a viewer opening a job page leaves a record an admin finds in the console (and in the export);
viewers cannot read the audit log; rule, user and token changes and API access are audited; records are
append-only."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from conftest import csrf_of
from node import audit
from node.store.audit_log import AuditAppendOnly, AuditRecord
from test_web_postgres import pg_db  # noqa: F401 - fixture: the node database in a fresh PostgreSQL schema


def _records(db, **filters) -> list[AuditRecord]:
    with db.session() as s:
        return audit.search(s, **filters)


def test_viewer_job_page_is_audited_and_admin_finds_it(viewer, admin, node_db, node_cfg, tmp_path):
    db, ids = node_db
    job = ids["done"]
    assert viewer.get(f"/jobs/{job}").status_code == 200
    rec = _records(db, actor="vera", action="job.view")
    assert len(rec) == 1
    r = rec[0]
    assert (r.role, r.via, r.object_type, r.object_id, r.outcome, r.status) == ("viewer", "session", "job",
                                                                                 str(job), "success", 200)
    assert r.address == "testclient"
    key = node_cfg.web.secret_key
    assert r.patient_ref == audit.patient_ref(key, "PAT-0042") and len(r.patient_ref) == 24
    # the admin finds it in the console, filtered by user and action
    page = admin.get("/audit", params={"user": "vera", "action": "job.view"})
    assert page.status_code == 200
    assert page.text.count('class="audit-row"') == 1
    assert f'href="/jobs/{job}"' in page.text and r.patient_ref in page.text
    assert "PAT-0042" not in page.text and "DOE" not in page.text  # no patient IDs or names in the log
    other = admin.get("/audit", params={"user": "vera", "action": "rules.change"})
    assert other.text.count('class="audit-row"') == 0
    # ... and in the export (console download and the CLI)
    lines = admin.get("/audit/export.jsonl", params={"user": "vera"}).text.splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["auth.login", "job.view"]
    from node.commands.audit import export
    out = list(export(db, since=None))
    views = [json.loads(x) for x in out if json.loads(x)["action"] == "job.view"]
    assert [(v["actor"], v["object_id"]) for v in views] == [("vera", str(job))]


def test_viewer_gets_403_on_the_audit_log(viewer, tokens, app, node_db):
    assert viewer.get("/audit").status_code == 403
    assert viewer.get("/audit/export.jsonl").status_code == 403
    with TestClient(app) as c:
        assert c.get("/api/audit", headers={"Authorization": f"Bearer {tokens['viewer']}"}).status_code == 403
        r = c.get("/api/audit", headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert r.status_code == 200
        denied = [x for x in r.json()["records"] if x["action"] == "audit.view" and x["outcome"] == "denied"]
        assert [x["actor"] for x in denied] == ["token:test-viewer", "vera"]  # newest first
    assert [(x.actor, x.outcome, x.status) for x in _records(node_db[0], action="audit.view", actor="vera")] == \
        [("vera", "denied", 403)]
    assert "Audit" not in viewer.get("/").text.split("</nav>")[0]  # no link for viewers


def test_rule_user_and_token_changes_are_audited(admin, node_db, tokens, app):
    db, _ = node_db
    rules = admin.get("/rules").text
    token = csrf_of(rules)
    current = admin.get("/api/rules").json()
    r = admin.post("/rules", data={"text": current["text"], "comment": "audit test", "csrf_token": token},
                   follow_redirects=False)
    assert r.status_code == 303
    rec = _records(db, action="rules.change")
    assert [(x.actor, x.outcome, x.object_id) for x in rec] == [("admin", "success", "1")]
    assert rec[0].detail == "routing rules saved as version 1"
    bad = admin.post("/rules", data={"text": "- name: [", "csrf_token": token}, follow_redirects=False)
    assert bad.status_code == 422
    assert [x.outcome for x in _records(db, action="rules.change")] == ["invalid", "success"]
    with TestClient(app) as c:  # over the API with a token
        r = c.put("/api/rules", json={"text": current["text"]}, headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert r.status_code == 200
    assert [(x.actor, x.via, x.object_id) for x in _records(db, action="rules.change")][0] == \
        ("token:test-admin", "token", "2")
    admin.post("/admin/users", data={"username": "newbie", "password": "long-enough-1", "role": "viewer",
                                     "csrf_token": token})
    admin.post("/admin/tokens", data={"name": "ris", "role": "viewer", "csrf_token": token})
    assert [x.action for x in _records(db, action="user.")] == ["user.create"]
    assert [x.action for x in _records(db, action="token.")] == ["token.create"]


def test_api_and_viewer_data_access_is_audited(app, tokens, node_db):
    db, ids = node_db
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    with TestClient(app) as c:
        assert c.get(f"/api/jobs/{ids['done']}", headers=h).status_code == 200
        assert c.get(f"/api/jobs/{ids['done']}/qc.png", headers=h).status_code == 200
        assert c.get("/api/jobs/999999", headers=h).status_code == 404
        assert c.get(f"/api/jobs/{ids['done']}").status_code == 401
    got = [(x.action, x.actor, x.object_id, x.outcome) for x in reversed(_records(db, action="job."))]
    assert got == [("job.view", "token:test-viewer", str(ids["done"]), "success"),
                   ("job.qc_image", "token:test-viewer", str(ids["done"]), "success"),
                   ("job.view", "token:test-viewer", "999999", "not_found"),
                   ("job.view", "", str(ids["done"]), "denied")]
    # the viewer's data endpoints (node/web/viewer.py), whatever they answer for this job without DICOM results
    with TestClient(app) as c:
        from conftest import VIEWER_PASSWORD, login
        from node.web.auth import create_user
        with db.session() as s:
            create_user(s, "vic", VIEWER_PASSWORD, "viewer")
        assert login(c, "vic", VIEWER_PASSWORD).status_code == 303
        st1 = c.get(f"/jobs/{ids['done']}/viewer.json").status_code
        st2 = c.get(f"/jobs/{ids['done']}/viewer/current.nii.gz").status_code
    got = [(x.action, x.object_id, x.status, x.detail) for x in reversed(_records(db, actor="vic", action="job."))]
    assert got == [("job.viewer", str(ids["done"]), st1, ""),
                   ("job.viewer_data", str(ids["done"]), st2, "volume current")]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path):
    """The node database on SQLite, and on the real PostgreSQL (a fresh schema, upgraded by its migrations)."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg_db")
        return
    from node.store.db import Database
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    yield db
    db.dispose()


def test_audit_log_is_append_only(any_db):
    db = any_db
    with db.session() as s:
        audit.record(s, "purge", actor="node", via="node", object_type="retention", object_id="received",
                     detail="2 studies")
    with pytest.raises(AuditAppendOnly):
        with db.session() as s:
            s.scalar(select(AuditRecord)).detail = "changed"
    with pytest.raises(AuditAppendOnly):
        with db.session() as s:
            s.delete(s.scalar(select(AuditRecord)))
    sqls = ["UPDATE audit_log SET detail = 'x'", "DELETE FROM audit_log"]
    if db.is_postgres:
        sqls.append("TRUNCATE audit_log")
    for sql in sqls:  # the database refuses too (triggers made by the migration)
        with pytest.raises(Exception, match="append-only"):
            with db.engine.begin() as conn:
                conn.execute(text(sql))
    assert [r.detail for r in _records(db, action="purge")] == ["2 studies"]


def test_cli_password_change_is_audited_and_exported(app, node_db, tmp_path, capsys):
    db, _ = node_db
    cfg_file = tmp_path / "node.yaml"
    cfg_file.write_text(f"node: {{data_dir: {tmp_path / 'var'}}}\n")  # the same database as the console's
    from node.cli import main
    assert main(["console", "passwd", "admin", "--config", str(cfg_file), "--generate"]) == 0
    rec = _records(db, action="user.password")
    assert [(r.via, r.object_type, r.object_id, r.outcome) for r in rec] == [("cli", "user", "admin", "success")]
    capsys.readouterr()
    assert main(["audit", "export", "--config", str(cfg_file), "--since", "2000-01-01"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["action"] for x in lines] == ["user.password"] and lines[0]["at"].endswith("Z")
    assert main(["audit", "export", "--config", str(cfg_file), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_sign_in_and_out_are_audited_with_the_user(app, node_db):
    from conftest import ADMIN_PASSWORD, login
    db, _ = node_db
    with TestClient(app) as c:
        assert login(c, "admin", "wrong-password").status_code == 401
        assert login(c, "admin", ADMIN_PASSWORD).status_code == 303
        assert c.post("/logout", data={"csrf_token": csrf_of(c.get("/").text)}, follow_redirects=False).status_code == 303
    got = [(x.action, x.actor, x.outcome) for x in reversed(_records(db, action="auth."))]
    assert got == [("auth.login", "", "denied"), ("auth.login", "admin", "success"), ("auth.logout", "admin", "success")]
    assert [x.object_id for x in _records(db, action="auth.logout")] == ["admin"]
    assert [x.detail for x in _records(db, action="auth.login") if x.outcome == "denied"] == \
        ["sign-in refused for user name 'admin'"]
