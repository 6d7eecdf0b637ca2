"""The console's audit pages: ``/audit`` (filter by user, action, object, date; admins only — viewers get 403),
``/audit/export.jsonl`` (the filtered records as JSON lines) and ``GET /api/audit`` (admin token or session).

:func:`install` adds the routes and the :class:`node.web.audit_middleware.AuditMiddleware` to the console app.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from node import audit
from node.web import auth, notifications
from node.web.audit_middleware import AuditMiddleware
from node.web.deps import MAX_ID, api_admin, db, page_admin
from node.web.pages import render

router = APIRouter()
PAGE = 200


def _day(value: str, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time())
    except ValueError:
        raise HTTPException(422, f"{name}: a date YYYY-MM-DD") from None


def _filters(user: str, action: str, object_id: str, date_from: str, date_to: str) -> dict:
    until = _day(date_to, "date_to")
    return {"actor": user.strip()[:160], "action": action.strip()[:48], "object_id": object_id.strip()[:128],
            "since": _day(date_from, "date_from"), "until": until + dt.timedelta(days=1) if until else None}


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, user: str = "", action: str = "", object_id: str = "", date_from: str = "",
               date_to: str = "", before: int | None = Query(None, ge=1, le=MAX_ID),
               p: auth.Principal = Depends(page_admin), session: Session = Depends(db)):
    """The audit log, newest first, ``PAGE`` records a page (``before``: the id the next page starts below)."""
    f = _filters(user, action, object_id, date_from, date_to)
    rows = audit.search(session, before_id=before, limit=PAGE, **f)
    session.rollback()
    return render(request, "audit.html", p, nav="audit", rows=rows, page=PAGE,
                  f={"user": user, "action": action, "object_id": object_id, "date_from": date_from,
                     "date_to": date_to}, next_before=rows[-1].id if len(rows) == PAGE else None)


@router.get("/audit/export.jsonl", include_in_schema=False)
def audit_export(request: Request, user: str = "", action: str = "", object_id: str = "", date_from: str = "",
                 date_to: str = "", p: auth.Principal = Depends(page_admin), session: Session = Depends(db)):
    """The filtered records, oldest first, as a JSON-lines download."""
    f = _filters(user, action, object_id, date_from, date_to)
    rows = list(reversed(audit.search(session, limit=100_000, **f)))
    body = "".join(json.dumps(r.as_dict(), sort_keys=True) + "\n" for r in rows)
    return StreamingResponse(iter([body]), media_type="application/x-ndjson",
                             headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'})


@router.get("/api/audit", tags=["admin"])
def audit_api(user: str = "", action: str = "", object_id: str = "", date_from: str = "", date_to: str = "",
              before: int | None = Query(None, ge=1, le=MAX_ID), limit: int = Query(PAGE, ge=1, le=1000),
              p: auth.Principal = Depends(api_admin), session: Session = Depends(db)) -> dict:
    """Audit records, newest first (admins only): filters ``user``, ``action`` (exact, or a prefix ending in
    '.'), ``object_id``, ``date_from``/``date_to`` (YYYY-MM-DD, UTC, inclusive); page with ``before``."""
    rows = audit.search(session, before_id=before, limit=limit, **_filters(user, action, object_id, date_from,
                                                                             date_to))
    return {"records": [r.as_dict() for r in rows]}


def install(app, cfg, new_session, data_dir: Path) -> None:
    """Add the audit routes, the notification page and the audit middleware to the console ``app``."""
    app.include_router(router)
    app.include_router(notifications.router)
    app.add_middleware(AuditMiddleware, new_session=new_session,
                       key=auth.secret_key(cfg.web.secret_key, Path(data_dir)))
