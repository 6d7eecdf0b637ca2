"""End to end in a real headless Chromium (Debian chromium driven by Playwright) against uvicorn on a free port.

Signs in, opens a finished job and checks its QC picture loaded, saves a rule with an error and sees the message,
fixes it, retries a failed job and sees its state change. Saves docs/screenshots/dashboard.png and job.png.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ADMIN_PASSWORD
from node.store.db import Job
from tools import free_port, require

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("TOTALREG_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
def server(app):
    from node.web.app import serve_in_thread
    port = free_port()
    srv, thread = serve_in_thread(app, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page():
    try:
        from playwright import sync_api
    except ImportError:
        require("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        require(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
        pg = ctx.new_page()
        pg.set_default_timeout(15_000)
        yield pg
        ctx.close()
        browser.close()


def test_console_end_to_end(server, page, node_db):
    db, ids = node_db
    SHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(server + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]:has-text('Sign in')")
    page.wait_for_url(server + "/")
    assert page.inner_text("h1") == "Dashboard"
    assert page.inner_text(".tiles").count("\n") > 5
    page.click("form:has(input[name=name][value=local]) button")  # check the folder destination
    page.wait_for_selector("#health .dot.ok")
    page.goto(server + "/")  # the check result stays; the one-time message goes
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)

    # a finished job and its QC picture
    page.goto(server + "/jobs")
    page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)
    page.click(f"a.jobid[href='/jobs/{ids['done']}']")
    page.wait_for_url(f"{server}/jobs/{ids['done']}")
    page.wait_for_function("() => { const i = document.querySelector('#qc-image'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    assert page.evaluate("document.querySelector('#qc-image').naturalWidth") == 900
    assert "0.803" in page.inner_text("table.qc")
    page.screenshot(path=str(SHOTS / "job.png"), full_page=True)

    # a rule with an error, then fixed
    page.goto(server + "/rules")
    page.fill("#rules-text", "- name: ct-followup\n  send_to: [local]\n  match:\n    SliceThicknes: {max: 2}\n")
    page.click("#save-rules")
    page.wait_for_selector("#rule-problems")
    assert "line 4 (rules[0].match.SliceThicknes): unknown key" in page.inner_text("#rule-problems")
    page.screenshot(path=str(SHOTS / "rules.png"), full_page=True)
    assert page.inner_text(".listing .errline").startswith("4")
    page.fill("#rules-text", "- name: ct-followup\n  send_to: [local]\n  match:\n    slice_thickness_mm: {max: 2}\n")
    page.click("#save-rules")
    page.wait_for_selector(".flash.ok")
    assert "Rules saved as version 1" in page.inner_text(".flash.ok")
    assert page.locator("#rule-problems").count() == 0

    # retry a failed job
    page.goto(f"{server}/jobs/{ids['failed']}")
    assert page.inner_text("h1 .badge").startswith("failed")
    page.click("#retry")
    page.wait_for_selector(".flash.ok")
    assert page.inner_text("h1 .badge").startswith("queued")
    assert page.locator("#retry").count() == 0
    with db.session() as s:
        assert s.get(Job, ids["failed"]).state == "queued"
