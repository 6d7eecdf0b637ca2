"""Per-app context and the FastAPI dependencies shared by the console pages and the REST API."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from node.config import NodeConfig

from . import auth
from .system import PeerCheck


@dataclass
class Context:
    """Everything a request handler needs: configuration, database sessions, folders, live checks."""

    cfg: NodeConfig
    new_session: Callable[[], Session]
    data_dir: Path
    templates: Jinja2Templates
    receiver_alive: Callable[[], bool] | None = None
    peer_checks: dict[tuple[str, str], PeerCheck] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    throttle: auth.LoginThrottle = field(default_factory=auth.LoginThrottle)
    extra: dict[str, Any] = field(default_factory=dict)


MAX_ID = 2 ** 63 - 1  # the largest integer a database id column holds (BIGINT / SQLite INTEGER)
MAX_OFFSET = 10 ** 12  # list offsets and page numbers beyond this are refused (422), never passed to SQL
#: a database id in a URL path: 1 .. MAX_ID, else 422 (a bigger number would overflow the database driver)
DbId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a database id (1 to 2^63-1)")]


class LoginRequired(Exception):
    """Raised by page dependencies when nobody is signed in (answered with a redirect to /login)."""


def ctx(request: Request) -> Context:
    """The app's :class:`Context`."""
    return request.app.state.ctx


def db(request: Request) -> Iterator[Session]:
    """A database session for one request (handlers commit what they change). It is closed when the response
    starts (by :class:`node.web.sessions.ConsoleSessions`, whose own write to the session table must not wait for
    this one's transaction — SQLite transactions here all take the write lock) and again at the end."""
    s = ctx(request).new_session()
    request.scope.setdefault(auth.OPEN_DB_SESSIONS_KEY, []).append(s)
    try:
        yield s
    finally:
        s.close()


def page_user(request: Request) -> auth.Principal:
    """The signed-in console user; redirects to the login page when there is none."""
    p = auth.session_principal(request)
    if p is None:
        raise LoginRequired()
    return p


def page_admin(p: auth.Principal = Depends(page_user)) -> auth.Principal:
    """The signed-in console user, who must be an admin (403 otherwise)."""
    auth.require_admin(p)
    return p


def api_user(request: Request, session: Session = Depends(db)) -> auth.Principal:
    """The API caller: a Bearer token, or a console session (whose unsafe methods need X-CSRF-Token)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        p = auth.token_principal(session, header[7:].strip())
        if p is None:
            raise HTTPException(401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        if p.role == "sender":
            raise HTTPException(403, "a sender token may only store instances (STOW-RS, POST /dicom-web/studies)")
        return p
    p = auth.session_principal(request)
    if p is None:
        raise HTTPException(401, "sign in or send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        auth.check_csrf(request, request.headers.get("x-csrf-token"))
    return p


def api_admin(p: auth.Principal = Depends(api_user)) -> auth.Principal:
    """The API caller, who must have the admin role (403 otherwise)."""
    auth.require_admin(p)
    return p
