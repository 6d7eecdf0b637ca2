"""REST API, console forms, auth/CSRF, QC picture, rules store, metrics and /healthz against a real SQLite DB."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN_PASSWORD, csrf_of, login
from node.ops import metrics
from node.store.db import Job, Send
from web_populate import OTHER, PATIENT

CUR_STUDY, PRIOR_STUDY = "1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.101"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------- auth & CSRF

def test_console_needs_login_and_rejects_wrong_password(app):
    with TestClient(app) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert c.get("/jobs/1/qc.png", follow_redirects=False).status_code == 303
        r = login(c, "admin", "wrong-password")
        assert r.status_code == 401 and "Wrong user name or password" in r.text
        assert c.get("/", follow_redirects=False).status_code == 303
        assert login(c, "admin", ADMIN_PASSWORD).status_code == 303
        assert "Dashboard" in c.get("/").text


def test_login_without_csrf_token_is_refused(app):
    with TestClient(app) as c:
        c.get("/login")
        r = c.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD}, follow_redirects=False)
        assert r.status_code == 403


def test_post_without_csrf_token_changes_nothing(admin, node_db):
    db, ids = node_db
    r = admin.post(f"/jobs/{ids['failed']}/retry", data={"csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and "did not come from this console" in r.text
    with db.session() as s:
        assert s.get(Job, ids["failed"]).state == "failed"


def test_viewer_is_read_only(viewer, node_db):
    db, ids = node_db
    page = viewer.get(f"/jobs/{ids['failed']}").text
    assert 'id="retry"' not in page  # no buttons for a viewer
    token = csrf_of(page)
    r = viewer.post(f"/jobs/{ids['failed']}/retry", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 403
    r = viewer.post("/rules", data={"csrf_token": token, "text": "- name: x\n"}, follow_redirects=False)
    assert r.status_code == 403
    assert viewer.get("/admin").status_code == 403
    with db.session() as s:
        assert s.get(Job, ids["failed"]).state == "failed"


def test_api_needs_a_valid_token_and_admin_for_actions(app, tokens, node_db):
    _, ids = node_db
    with TestClient(app) as c:
        assert c.get("/api/jobs").status_code == 401
        assert c.get("/api/jobs", headers=bearer("trn_not-a-token")).status_code == 401
        assert c.get("/api/jobs", headers=bearer(tokens["viewer"])).status_code == 200
        r = c.post(f"/api/jobs/{ids['failed']}/retry", headers=bearer(tokens["viewer"]))
        assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_admin_creates_and_revokes_tokens(admin, app):
    page = admin.get("/admin").text
    r = admin.post("/admin/tokens", data={"csrf_token": csrf_of(page), "name": "prometheus", "role": "viewer"})
    token = re.search(r'id="new-token">([^<]+)<', r.text).group(1)
    with TestClient(app) as c:
        assert c.get("/api/status", headers=bearer(token)).status_code == 200
    tid = re.search(r'/admin/tokens/(\d+)/revoke', r.text).group(1)
    admin.post(f"/admin/tokens/{tid}/revoke", data={"csrf_token": csrf_of(page)})
    with TestClient(app) as c:
        assert c.get("/api/status", headers=bearer(token)).status_code == 401


def test_api_token_creation_returns_token_once(app, tokens):
    with TestClient(app) as c:
        r = c.post("/api/tokens", json={"name": "ris-bridge", "role": "admin"}, headers=bearer(tokens["admin"]))
        assert r.status_code == 201 and r.json()["token"].startswith("trn_")
        assert c.post("/api/tokens", json={"name": "x"}, headers=bearer(tokens["viewer"])).status_code == 403


# ------------------------------------------------------------------------------------------------- jobs API

def test_api_lists_jobs_with_state_and_qc(app, tokens, node_db):
    _, ids = node_db
    with TestClient(app) as c:
        body = c.get("/api/jobs", headers=bearer(tokens["viewer"])).json()
        assert body["total"] == 5
        assert [j["id"] for j in body["jobs"]] == sorted(ids.values(), reverse=True)
        by_id = {j["id"]: j for j in body["jobs"]}
        done = by_id[ids["done"]]
        assert done["state"] == "done" and done["outcome"] == "registered"
        assert done["qc"] == {"similarity_before": 0.412, "similarity_after": 0.803, "folding_percent": 0.012,
                              "sdlogj": 0.071}
        assert done["suspicious"] is False and done["qc_problems"] == []
        sus = by_id[ids["suspicious"]]
        assert sus["suspicious"] is True
        assert any("folding 2.4 %" in p for p in sus["qc_problems"])
        assert any("SDlogJ 0.41" in p for p in sus["qc_problems"])
        assert "patient" not in done  # the list carries no patient identifiers
        failed = c.get("/api/jobs", params={"state": "failed"}, headers=bearer(tokens["viewer"])).json()
        assert [j["id"] for j in failed["jobs"]] == [ids["failed"]]
        assert c.get("/api/jobs", params={"state": "bogus"}, headers=bearer(tokens["viewer"])).status_code == 422


def test_api_search_by_patient_in_body(app, tokens, node_db):
    _, ids = node_db
    with TestClient(app) as c:
        r = c.post("/api/jobs/search", json={"patient": OTHER["patient_id"]}, headers=bearer(tokens["viewer"]))
        assert sorted(j["id"] for j in r.json()["jobs"]) == sorted([ids["queued"], ids["dead"]])
        r = c.post("/api/jobs/search", json={"patient": "jane"}, headers=bearer(tokens["viewer"]))
        assert sorted(j["id"] for j in r.json()["jobs"]) == sorted([ids["done"], ids["failed"], ids["suspicious"]])
        r = c.post("/api/jobs/search", json={"suspicious": True}, headers=bearer(tokens["viewer"]))
        assert [j["id"] for j in r.json()["jobs"]] == [ids["suspicious"]]


def test_api_job_detail(app, tokens, node_db):
    _, ids = node_db
    with TestClient(app) as c:
        j = c.get(f"/api/jobs/{ids['done']}", headers=bearer(tokens["viewer"])).json()
        assert j["timings"] == {"load": 4.2, "prior": 1.1, "register": 48.6, "write": 6.3, "send": 2.0, "total": 62.4}
        assert j["patient"] == {"id": PATIENT["patient_id"], "name": PATIENT["patient_name"]}
        assert {s["destination"]: s["n_acknowledged"] for s in j["sends"]} == {"local": 122, "pacs-out": 122}
        assert any("registered prior" in line["text"] for line in j["log"])
        assert any("attempt 1 started" in line["text"] for line in j["log"])
        assert j["has_qc_png"] is True
        assert c.get("/api/jobs/9999", headers=bearer(tokens["viewer"])).status_code == 404


def test_api_retry_cancel_resend(app, tokens, node_db):
    db, ids = node_db
    h = bearer(tokens["admin"])
    with TestClient(app) as c:
        r = c.post(f"/api/jobs/{ids['failed']}/retry", headers=h)
        assert r.status_code == 200 and r.json()["state"] == "queued"
        r = c.post(f"/api/jobs/{ids['done']}/retry", headers=h)
        assert r.status_code == 409 and "only failed or dead" in r.json()["detail"]
        r = c.post(f"/api/jobs/{ids['queued']}/cancel", headers=h)
        assert r.status_code == 200 and r.json()["state"] == "failed"
        assert c.post(f"/api/jobs/{ids['dead']}/cancel", headers=h).status_code == 409
        r = c.post(f"/api/jobs/{ids['done']}/resend", headers=h)
        assert r.status_code == 200 and r.json()["sends_queued"] == 2
        assert c.post(f"/api/jobs/{ids['dead']}/resend", headers=h).status_code == 409
        assert c.post("/api/jobs/9999/retry", headers=h).status_code == 404
    with db.session() as s:
        assert s.get(Job, ids["failed"]).state == "queued" and s.get(Job, ids["failed"]).error == ""
        assert s.get(Job, ids["queued"]).error == "cancelled by token:test-admin"
        assert {x.state for x in s.query(Send).filter(Send.job_id == ids["done"])} == {"queued"}


def test_console_retry_changes_state(admin, node_db):
    db, ids = node_db
    page = admin.get(f"/jobs/{ids['dead']}").text
    assert 'id="retry"' in page and "timed out after 600 s" in page
    r = admin.post(f"/jobs/{ids['dead']}/retry", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 200 and "back in the queue" in r.text
    with db.session() as s:
        assert s.get(Job, ids["dead"]).state == "queued"


# ------------------------------------------------------------------------------------------------- pages, QC png

def test_job_page_shows_qc_numbers_timings_and_flag(admin, node_db):
    _, ids = node_db
    html = admin.get(f"/jobs/{ids['done']}").text
    for text in ("0.412", "0.803", "0.012", "0.071", "48.6 s", "62.4 s", 'id="qc-image"', "DOE JANE", 'id="resend"'):
        assert text in html, text
    assert "suspicious QC" not in html
    html = admin.get(f"/jobs/{ids['suspicious']}").text
    assert "suspicious QC" in html and "folding 2.4 % is above the limit of 0.5 %" in html


def test_qc_png_is_served_only_from_the_result_folder(admin, node_db, app, tokens, tmp_path):
    db, ids = node_db
    r = admin.get(f"/jobs/{ids['done']}/qc.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    with db.session() as s:
        assert r.content == open(s.get(Job, ids["done"]).qc_png, "rb").read()
    with TestClient(app) as c:
        assert c.get(f"/api/jobs/{ids['done']}/qc.png", headers=bearer(tokens["viewer"])).content == r.content
    assert admin.get(f"/jobs/{ids['queued']}/qc.png").status_code == 404
    outside = tmp_path / "secret.png"
    outside.write_bytes(r.content)
    with db.session() as s:
        s.get(Job, ids["suspicious"]).qc_png = str(outside)
        s.get(Job, ids["suspicious"]).result_dir = str(tmp_path / "var" / "results" / "job-4")
    assert admin.get(f"/jobs/{ids['suspicious']}/qc.png").status_code == 404


def test_jobs_filter_by_post_keeps_patient_out_of_urls(admin, node_db):
    _, ids = node_db
    page = admin.get("/jobs").text
    assert all("PAT-" not in href for href in re.findall(r'href="([^"]+)"', page))
    r = admin.post("/jobs", data={"csrf_token": csrf_of(page), "patient": OTHER["patient_id"]},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    page = admin.get("/jobs").text
    shown = sorted(int(x) for x in re.findall(r'href="/jobs/(\d+)"', page))
    assert shown == sorted([ids["queued"], ids["dead"]])
    admin.post("/jobs", data={"csrf_token": csrf_of(page), "clear": "1"})
    assert len(re.findall(r'href="/jobs/(\d+)"', admin.get("/jobs").text)) == 5
    r = admin.post("/jobs", data={"csrf_token": csrf_of(page), "date_from": "yesterday"})
    assert "is not a date" in r.text


def test_dashboard_numbers(admin, app, tokens):
    with TestClient(app) as c:
        st = c.get("/api/status", headers=bearer(tokens["viewer"])).json()
    assert st["studies"] == 3 and st["instances"] == 360
    assert st["jobs_by_state"] == {"queued": 1, "running": 0, "done": 2, "failed": 1, "dead": 1}
    assert st["queue_length"] == 1 and st["suspicious"] == 1
    assert st["throughput_per_hour"] == pytest.approx(2 / 24)
    assert st["device"].startswith(("CPU", "GPU"))
    html = admin.get("/").text
    assert "0.08" in html and "pacs-out" in html and "Echo" in html


def test_echo_destinations(admin, app, tokens):
    with TestClient(app) as c:
        r = c.post("/api/destinations/pacs-out/echo", headers=bearer(tokens["viewer"])).json()
        assert r["ok"] is False and "cannot reach" in r["message"] and "PACSOUT" in r["message"]
        r = c.post("/api/destinations/local/echo", headers=bearer(tokens["viewer"])).json()
        assert r["ok"] is True
        assert c.post("/api/destinations/nope/echo", headers=bearer(tokens["viewer"])).status_code == 404
    page = admin.get("/").text
    r = admin.post("/peers/echo", data={"csrf_token": csrf_of(page), "kind": "destination", "name": "pacs-out"})
    assert "cannot reach" in r.text and 'class="dot bad"' in r.text


# ------------------------------------------------------------------------------------------------- rules

BAD_RULES = """\
- name: ct-followup
  send_to: [local, nowhere]
- name: chest
  match:
    SliceThicknes: {max: 2}
"""


def test_api_rules_validation_and_versions(app, tokens):
    h = bearer(tokens["admin"])
    with TestClient(app) as c:
        before = c.get("/api/rules", headers=h).json()
        assert before["version"] == 0 and before["rules"][0]["name"] == "ct-followup"
        r = c.put("/api/rules", json={"text": BAD_RULES}, headers=h)
        assert r.status_code == 422
        problems = r.json()["problems"]
        assert {"line": 5, "message": "rules line 5 (rules[1].match.SliceThicknes): unknown key"} in problems
        r = c.put("/api/rules", json={"text": BAD_RULES.replace("SliceThicknes", "slice_thickness_mm")}, headers=h)
        assert r.status_code == 422
        assert r.json()["problems"] == [{"line": 2, "message": "rules line 2 (rules[0].send_to[1]): rule "
                                         "'ct-followup' sends to 'nowhere', which is not a destination "
                                         "(known: local, pacs-out)"}]
        assert c.get("/api/rules", headers=h).json()["version"] == 0  # nothing saved
        good = BAD_RULES.replace("SliceThicknes", "slice_thickness_mm").replace(", nowhere", "")
        r = c.put("/api/rules", json={"text": good, "comment": "thin chest"}, headers=h)
        assert r.status_code == 200 and r.json() == {"version": 1, "author": "token:test-admin"}
        now = c.get("/api/rules", headers=h).json()
        assert now["version"] == 1 and [x["name"] for x in now["rules"]] == ["ct-followup", "chest"]
        assert now["rules"][1]["match"]["slice_thickness_mm"]["max"] == 2
        assert c.put("/api/rules", json={"text": good}, headers=bearer(tokens["viewer"])).status_code == 403
        hist = c.get("/api/rules/history", headers=h).json()
        assert hist[0]["version"] == 1 and "+- name: chest" in hist[0]["diff"]


def test_console_rule_editor_shows_error_line_then_saves(admin, node_db, node_cfg):
    from node.route import rules_store
    page = admin.get("/rules").text
    r = admin.post("/rules", data={"csrf_token": csrf_of(page), "text": BAD_RULES})
    assert r.status_code == 422
    assert '>line 5</a> <span class="problem">(rules[1].match.SliceThicknes): unknown key<' in r.text
    assert 'id="L5" class="errline"' in r.text and 'id="L4" class="errline"' not in r.text
    r = admin.post("/rules", data={"csrf_token": csrf_of(page),
                                   "text": BAD_RULES.replace("SliceThicknes", "slice_thickness_mm")})
    assert r.status_code == 422 and "which is not a destination" in r.text
    assert 'id="L2" class="errline"' in r.text
    fixed = BAD_RULES.replace("SliceThicknes", "slice_thickness_mm").replace(", nowhere", "")
    r = admin.post("/rules", data={"csrf_token": csrf_of(page), "text": fixed, "comment": "add chest"})
    assert r.status_code == 200 and "Rules saved as version 1" in r.text and "add chest" in r.text
    with node_db[0].session() as s:
        assert [x.name for x in rules_store.current_rules(s, node_cfg)] == ["ct-followup", "chest"]


def test_dry_run_names_rule_and_prior(app, tokens, admin):
    with TestClient(app) as c:
        r = c.post("/api/rules/dry-run", json={"study_uid": CUR_STUDY}, headers=bearer(tokens["viewer"]))
        assert r.status_code == 200, r.text
        rule = r.json()["rules"][0]
        assert rule["rule"] == "ct-followup" and rule["matched"] is True
        assert rule["series_uid"] == CUR_STUDY + ".1"
        assert rule["prior_study_uids"] == [PRIOR_STUDY]
        r = c.post("/api/rules/dry-run", json={"study_uid": "1.2.3.4"}, headers=bearer(tokens["viewer"]))
        assert r.status_code == 404
        # an unsaved edit: a rule that takes only MR studies matches nothing
        text = "- name: mr-only\n  match: {Modality: MR}\n"
        r = c.post("/api/rules/dry-run", json={"study_uid": CUR_STUDY, "text": text},
                   headers=bearer(tokens["viewer"]))
        assert [x["matched"] for x in r.json()["rules"]] == [False]
    page = admin.get("/rules").text
    r = admin.post("/rules/dry-run", data={"csrf_token": csrf_of(page), "study_uid": CUR_STUDY,
                                           "text": "- name: ct-followup\n  send_to: [local]\n"})
    assert r.status_code == 200 and "match" in r.text and PRIOR_STUDY in r.text


# ------------------------------------------------------------------------------------------------- metrics, health

def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_exposition(app):
    with TestClient(app) as c:
        before = _samples(c.get("/metrics").text)
        metrics.INSTANCES_RECEIVED.inc(3)
        metrics.STAGE_DURATION.labels(stage="register").observe(42.0)
        metrics.SEND_FAILURES.labels(destination="pacs-out").inc()
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = _samples(r.text)
    assert after[("totalreg_jobs", (("state", "done"),))] == 2
    assert after[("totalreg_jobs", (("state", "queued"),))] == 1
    assert after[("totalreg_jobs", (("state", "dead"),))] == 1
    assert after[("totalreg_queue_length", ())] == 1
    assert after[("totalreg_instances_received_total", ())] - before[("totalreg_instances_received_total", ())] == 3
    key = ("totalreg_stage_duration_seconds_count", (("stage", "register"),))
    assert after[key] - before.get(key, 0) == 1
    bucket = ("totalreg_stage_duration_seconds_bucket", (("le", "60.0"), ("stage", "register")))
    assert after[bucket] - before.get(bucket, 0) == 1
    key = ("totalreg_send_failures_total", (("destination", "pacs-out"),))
    assert after[key] - before.get(key, 0) == 1


def test_healthz(node_cfg, node_db, tmp_path):
    from node.web.app import create_app
    alive = {"v": True}
    app = create_app(node_cfg, node_db[0], data_dir=tmp_path / "var", receiver_alive=lambda: alive["v"])
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert set(r.json()["checks"]) == {"database", "receiver", "disk"}
        alive["v"] = False
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["checks"]["receiver"]["ok"] is False
    cfg = node_cfg.model_copy(deep=True)
    cfg.node.min_free_disk_mb = 10 ** 12
    with TestClient(create_app(cfg, node_db[0], data_dir=tmp_path / "var")) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["checks"]["disk"]["ok"] is False
        assert "receiver" not in r.json()["checks"]


def test_openapi_lists_the_api(app):
    with TestClient(app) as c:
        paths = c.get("/api/openapi.json").json()["paths"]
    for p in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/retry", "/api/jobs/{job_id}/cancel",
              "/api/jobs/{job_id}/resend", "/api/rules", "/api/rules/dry-run", "/api/destinations/{name}/echo"):
        assert p in paths, p


def test_first_start_generates_admin_password_once(tmp_path, node_db, capsys, caplog):
    from node.config import NodeConfig
    from node.web.app import create_app
    cfg = NodeConfig.model_validate({"node": {"data_dir": str(tmp_path / "fresh")}, "web": {"admin_user": "root"}})
    shown: list[str] = []
    app = create_app(cfg, node_db[0], data_dir=tmp_path / "fresh", show_password=lambda t: shown.append(t) or True)
    assert len(shown) == 1
    password = re.search(r"with password (\S+)", shown[0]).group(1)
    assert len(password) >= 16
    out = capsys.readouterr()
    assert password not in out.err + out.out + caplog.text  # not in the service log
    assert not (tmp_path / "fresh" / "admin_password").exists()
    assert oct((tmp_path / "fresh" / "secret_key").stat().st_mode & 0o777) == "0o600"
    create_app(cfg, node_db[0], data_dir=tmp_path / "fresh", show_password=lambda t: shown.append(t) or True)
    assert len(shown) == 1  # shown once
    with TestClient(app) as c:
        assert login(c, "root", password).status_code == 303


def test_plain_text_password_file_of_an_older_version_is_used_once_then_deleted(tmp_path, node_db, caplog):
    from node.config import NodeConfig
    from node.web.app import create_app
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "admin_password").write_text("legacy-password-42\n")
    cfg = NodeConfig.model_validate({"node": {"data_dir": str(tmp_path / "old")}, "web": {"admin_user": "root"}})
    app = create_app(cfg, node_db[0], data_dir=tmp_path / "old", show_password=lambda t: pytest.fail(t))
    assert not (tmp_path / "old" / "admin_password").exists() and "deleted" in caplog.text
    with TestClient(app) as c:
        assert login(c, "root", "legacy-password-42").status_code == 303


def test_rules_in_force_without_console_tables(node_cfg):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    from node.route import rules_store
    with Session(create_engine("sqlite://")) as s:  # a database the console never touched
        assert rules_store.current_rules(s, node_cfg) == node_cfg.rules
        assert rules_store.effective_config(s, node_cfg) is node_cfg


def test_api_with_console_session_needs_csrf_header(admin, node_db):
    db, ids = node_db
    assert admin.get("/api/jobs").json()["total"] == 5
    assert admin.post(f"/api/jobs/{ids['failed']}/retry").status_code == 403
    token = csrf_of(admin.get("/").text)
    r = admin.post(f"/api/jobs/{ids['failed']}/retry", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["state"] == "queued"
    with db.session() as s:
        assert s.get(Job, ids["failed"]).state == "queued"


def test_sign_in_is_throttled_after_five_wrong_passwords(app):
    with TestClient(app) as c:
        for _ in range(5):
            assert login(c, "admin", "wrong-password").status_code == 401
        r = login(c, "admin", ADMIN_PASSWORD)
        assert r.status_code == 429 and "Too many wrong passwords" in r.text
        assert c.get("/", follow_redirects=False).status_code == 303
