"""The console page ``/notifications`` (admins): configured targets, recent deliveries with their state, attempts,
next attempt and last error, and a button that retries a failed delivery."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.notify.delivery import retry_delivery
from node.store.notify_outbox import NotifyDelivery, NotifyEvent
from node.web import auth
from node.web.deps import DbId, ctx, db, page_admin
from node.web.pages import back, flash, render

router = APIRouter(include_in_schema=False)


@router.get("/notifications")
def notifications_page(request: Request, p: auth.Principal = Depends(page_admin), session: Session = Depends(db)):
    """Targets and the newest 200 deliveries (with their event), and counts by state."""
    rows = session.execute(select(NotifyDelivery, NotifyEvent).join(NotifyEvent, NotifyEvent.id ==
                                                                     NotifyDelivery.event_id)
                           .order_by(NotifyDelivery.id.desc()).limit(200)).all()
    counts = dict(session.execute(select(NotifyDelivery.state, func.count()).group_by(NotifyDelivery.state)).all())
    session.rollback()
    return render(request, "notifications.html", p, nav="notifications", rows=rows, counts=counts,
                  targets=ctx(request).cfg.notifications)


@router.post("/notifications/{delivery_id}/retry")
def notifications_retry(request: Request, delivery_id: DbId, csrf_token: str = Form(""),
                        p: auth.Principal = Depends(page_admin), session: Session = Depends(db)):
    """Attempt a failed delivery again now, with a fresh attempt budget."""
    auth.check_csrf(request, csrf_token)
    if not retry_delivery(session, delivery_id):
        raise HTTPException(404, f"there is no undelivered notification {delivery_id}")
    session.commit()
    flash(request, f"Notification {delivery_id} will be sent again.")
    return back("/notifications")
