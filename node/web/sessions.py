"""Server-side console sessions: an ASGI middleware that provides ``request.session`` from ``console_sessions``.

The cookie (``totalreg_session``, signed with the console's secret key) carries either

* ``{"sid": <random token>}`` for a signed-in user — everything else (CSRF token, flash messages, the job filter
  with its patient name or ID) stays in the database row, found by the token's SHA-256; or
* for a visitor who has not signed in, only the login form's CSRF token and flash messages (no patient data: every
  other key is dropped, never written to the cookie).

On every request the row and its user are read again: an expired (``web.session_max_age_s``), idle
(``web.session_idle_s``), deleted or signed-out session, or a user who was deleted or deactivated, gives an anonymous
request; the role is the one in ``console_users`` now. Signing in always makes a new token (no session fixation);
signing out deletes the row, so a copied cookie stops working at once. Cookies are HttpOnly and SameSite=Lax, and
Secure on https requests or always with ``web.secure_cookies``.

Pages and handlers keep using ``request.session`` as a dict; :func:`node.web.auth.sign_in` / ``sign_out`` mark the
request so that this middleware creates or deletes the row when the response starts.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, TimestampSigner
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection

from node.store.db import utcnow

from . import auth, security
from node.store.console import ConsoleSession, ConsoleUser

log = logging.getLogger(__name__)
COOKIE = "totalreg_session"
ANONYMOUS_KEYS = ("csrf", "flash")  # all a visitor's cookie may hold
NO_SESSION_PATHS = ("/static/", "/healthz", "/metrics")
TOUCH_EVERY = dt.timedelta(seconds=60)  # last_seen_at is written at most this often


@dataclass
class _State:
    data: dict[str, Any] = field(default_factory=dict)
    snapshot: str = "{}"
    row_id: int | None = None
    touch: bool = False
    drop_cookie: bool = False


def _dump(data: dict) -> str:
    return json.dumps(data, sort_keys=True, default=str)


class ConsoleSessions:
    """ASGI middleware: ``request.session`` backed by ``console_sessions`` (see the module docstring).

    ``new_session``: a callable returning SQLAlchemy sessions of the node database; ``secret_key`` signs the cookie;
    ``max_age_s`` / ``idle_s``: absolute and idle lifetime of a sign-in; ``secure_always``: mark every cookie Secure
    (else only on https requests).
    """

    def __init__(self, app, *, new_session, secret_key: str, max_age_s: int, idle_s: int,
                 secure_always: bool = False):
        self.app, self.new_session = app, new_session
        self.signer = TimestampSigner(secret_key, salt="totalreg-console-session")
        self.max_age = dt.timedelta(seconds=max_age_s)
        self.idle = dt.timedelta(seconds=idle_s)
        self.secure_always = secure_always

    async def __call__(self, scope, receive, send):
        """Load the session before the app runs; create, update or delete it when the response starts."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(NO_SESSION_PATHS):
            scope["session"] = {}
            await self.app(scope, receive, send)
            return
        raw = HTTPConnection(scope).cookies.get(COOKIE)
        state = await run_in_threadpool(self._load, scope, raw)
        scope["session"] = state.data

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = await run_in_threadpool(self._store, scope, state)
                if cookie:
                    MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    # ----------------------------------------------------------------------------------------------- cookie

    def _unsign(self, raw: str) -> dict | None:
        try:
            payload = self.signer.unsign(raw.encode("ascii"), max_age=int(self.max_age.total_seconds()))
            data = json.loads(base64.urlsafe_b64decode(payload))
        except (BadSignature, UnicodeError, binascii.Error, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _cookie(self, scope, payload: dict | None) -> str:
        secure = self.secure_always or scope.get("scheme") in ("https", "wss")
        if payload is None:
            value, max_age = "", 0
        else:
            value = self.signer.sign(base64.urlsafe_b64encode(_dump(payload).encode())).decode("ascii")
            max_age = int(self.max_age.total_seconds())
        return (f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
                + ("; Secure" if secure else ""))

    # ---------------------------------------------------------------------------------------------- database

    def _load(self, scope, raw: str | None) -> _State:
        st = _State()
        payload = self._unsign(raw) if raw else {}
        if payload is None:
            st.drop_cookie, payload = True, {}
        token = payload.get("sid")
        if isinstance(token, str):
            try:
                self._load_row(scope, st, token)
            except SQLAlchemyError as exc:
                log.error("console: cannot read the session table: %s", str(exc).splitlines()[0][:200])
            return st
        st.data = {k: payload[k] for k in ANONYMOUS_KEYS if k in payload}
        st.snapshot = _dump(st.data)
        st.drop_cookie = st.drop_cookie or len(st.data) != len(payload)  # rewrite a cookie holding anything else
        return st

    def _load_row(self, scope, st: _State, token: str) -> None:
        now = utcnow()
        with self.new_session() as s:
            row = s.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == security.hash_token(token)))
            user = s.get(ConsoleUser, row.user_id) if row is not None else None
            valid = (row is not None and row.expires_at > now and now - row.last_seen_at <= self.idle
                     and user is not None and user.active and user.role in auth.ROLES)
            if not valid:
                if row is not None:
                    s.delete(row)
                    s.commit()
                st.drop_cookie = True
                return
            try:
                data = json.loads(row.data or "{}")
            except ValueError:
                data = {}
            st.data = data if isinstance(data, dict) else {}
            st.data["csrf"] = row.csrf
            st.snapshot = _dump(st.data)
            st.row_id, st.touch = row.id, now - row.last_seen_at > TOUCH_EVERY
            scope[auth.SESSION_ID_KEY] = row.id
            scope[auth.PRINCIPAL_KEY] = auth.Principal(user.username, user.role, "session", user.id)

    def _store(self, scope, st: _State) -> str | None:
        for open_session in scope.pop(auth.OPEN_DB_SESSIONS_KEY, []):
            open_session.close()  # the handler is done; its transaction would block ours (SQLite)
        try:
            return self._store_db(scope, st)
        except SQLAlchemyError as exc:
            log.error("console: cannot write the session table: %s", str(exc).splitlines()[0][:200])
            return None

    def _store_db(self, scope, st: _State) -> str | None:
        data = scope.get("session", st.data)
        sign_in, sign_out = scope.get(auth.SIGN_IN_KEY), scope.get(auth.SIGN_OUT_KEY)
        now = utcnow()
        if st.row_id is not None and (sign_in or sign_out):
            with self.new_session() as s:
                s.execute(delete(ConsoleSession).where(ConsoleSession.id == st.row_id))
                s.commit()
        if sign_in:
            token, csrf = security.new_session_token(), data.get("csrf") or security.new_csrf_token()
            rest = {k: v for k, v in data.items() if k != "csrf"}
            with self.new_session() as s:
                s.execute(delete(ConsoleSession).where(or_(ConsoleSession.expires_at <= now,
                                                           ConsoleSession.last_seen_at < now - self.idle)))
                s.add(ConsoleSession(token_hash=security.hash_token(token), user_id=int(sign_in), csrf=csrf,
                                     data=_dump(rest), created_at=now, last_seen_at=now,
                                     expires_at=now + self.max_age))
                s.commit()
            return self._cookie(scope, {"sid": token})
        if st.row_id is not None and not sign_out:
            changed = _dump(data) != st.snapshot
            if changed or st.touch:
                values: dict[str, Any] = {"last_seen_at": now}
                if changed:
                    values.update(data=_dump({k: v for k, v in data.items() if k != "csrf"}),
                                  csrf=data.get("csrf") or security.new_csrf_token())
                with self.new_session() as s:
                    s.execute(update(ConsoleSession).where(ConsoleSession.id == st.row_id).values(**values))
                    s.commit()
            return None
        anonymous = {k: data[k] for k in ANONYMOUS_KEYS if k in data}
        if sign_out or st.drop_cookie or _dump(anonymous) != st.snapshot:
            return self._cookie(scope, anonymous or None)
        return None
