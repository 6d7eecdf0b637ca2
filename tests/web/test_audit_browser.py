"""In Chromium against uvicorn: a viewer opens a job page; the admin finds that access on the console's Audit page
with the filter form, and sees the Notifications page. Saves docs/screenshots/audit.png and notifications.png."""
from __future__ import annotations

import pytest

from conftest import ADMIN_PASSWORD, VIEWER_PASSWORD
from node.store.notify_outbox import DELIVERED, FAILED, NotifyDelivery, NotifyEvent
from test_web_browser import SHOTS, page, server  # noqa: F401 - fixtures: Chromium page, uvicorn on a free port

pytestmark = pytest.mark.browser


def _sign_in(page, server, user, password):  # noqa: F811 - page is the fixture's value
    page.goto(server + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]:has-text('Sign in')")
    page.wait_for_url(server + "/")


def test_admin_finds_a_viewers_job_access(server, page, node_db, node_cfg):  # noqa: F811
    from node.config import NotificationTarget
    from node.store.db import utcnow
    from node.web.auth import create_user
    db, ids = node_db
    node_cfg.notifications.append(NotificationTarget(name="ris-bridge", url="https://ris.example.org/hook",
                                                     secret="s3cret", events=["job.failed", "job.dead", "node.*"]))
    with db.session() as s:
        create_user(s, "vera", VIEWER_PASSWORD, "viewer")
        ev = NotifyEvent(kind="job.failed", job_id=ids["failed"], payload={"job_id": ids["failed"]}, fanned_out=True)
        ev2 = NotifyEvent(kind="node.disk_low", payload={"message": "812 MB free in /var/lib/totalreg (minimum "
                                                                    "1024 MB)"}, fanned_out=True)
        s.add_all([ev, ev2])
        s.flush()
        s.add_all([NotifyDelivery(event_id=ev.id, target="ris-bridge", state=DELIVERED, attempts=1, last_status=200,
                                  delivered_at=utcnow()),
                   NotifyDelivery(event_id=ev2.id, target="ris-bridge", state=FAILED, attempts=10, last_status=503,
                                  last_error="https://ris.example.org/hook answered HTTP 503")])
    _sign_in(page, server, "vera", VIEWER_PASSWORD)
    page.goto(f"{server}/jobs/{ids['done']}")
    assert page.locator("nav a[href='/audit']").count() == 0
    page.click("button:has-text('Sign out')")
    page.wait_for_url(server + "/login")

    _sign_in(page, server, "admin", ADMIN_PASSWORD)
    page.click("nav a[href='/audit']")
    page.fill("input[name=user]", "vera")
    page.fill("input[name=action]", "job.view")
    page.click("button:has-text('Filter')")
    rows = page.locator("tr.audit-row")
    assert rows.count() == 1
    text = rows.first.inner_text()
    assert "vera" in text and "job.view" in text and f"job #{ids['done']}" in text and "success" in text
    page.fill("input[name=action]", "job.")  # a prefix: the page's QC picture and viewer data were read too
    page.click("button:has-text('Filter')")
    actions = {a.strip() for a in page.locator("tr.audit-row td.mono:nth-child(4)").all_inner_texts()}
    assert {"job.view", "job.qc_image"} <= actions
    page.goto(server + "/audit")
    page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)

    page.click("nav a[href='/notifications']")
    assert page.locator("tr.delivery").count() == 2
    assert "answered HTTP 503" in page.inner_text("tr.st-failed")
    assert "https://ris.example.org/hook" in page.inner_text("section.card") and "HMAC-SHA256" in \
        page.inner_text("section.card")
    page.screenshot(path=str(SHOTS / "notifications.png"), full_page=True)
