"""The console's Notifications page: targets and delivery state for admins, 403 for viewers, retry of a failed one."""
from __future__ import annotations

from sqlalchemy import select

from conftest import csrf_of
from node.store.notify_outbox import FAILED, PENDING, NotifyDelivery, NotifyEvent


def test_notifications_page(admin, viewer, node_db):
    db, ids = node_db
    with db.session() as s:
        ev = NotifyEvent(kind="job.failed", job_id=ids["failed"], payload={"job_id": ids["failed"]}, fanned_out=True)
        s.add(ev)
        s.flush()
        s.add(NotifyDelivery(event_id=ev.id, target="ris-bridge", state=FAILED, attempts=10,
                             last_error="http://ris/hook answered HTTP 503", last_status=503))
    assert viewer.get("/notifications").status_code == 403
    page = admin.get("/notifications")
    assert page.status_code == 200
    assert page.text.count('class="delivery st-failed"') == 1
    assert "answered HTTP 503" in page.text and f'href="/jobs/{ids["failed"]}"' in page.text
    assert "No notification targets are configured" in page.text
    with db.session() as s:
        d_id = s.scalar(select(NotifyDelivery.id))
    r = admin.post(f"/notifications/{d_id}/retry", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    with db.session() as s:
        d = s.get(NotifyDelivery, d_id)
        assert (d.state, d.attempts) == (PENDING, 0)
    assert admin.post("/notifications/99999/retry", data={"csrf_token": csrf_of(page.text)}).status_code == 404
