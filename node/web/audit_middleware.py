"""Audit every console and API request that reads a job or patient data, or changes rules, users, tokens, settings.

:class:`AuditMiddleware` (pure ASGI, outermost) looks at each finished request: when its method and path are in
:data:`AUDITED` (or it is any other change under ``/admin`` or ``/api``), it appends one ``audit_log`` row — who (the
console user from the server-side session, or the API token's name), from where (the client address), what
(action, object), outcome (from the HTTP status) — in its own transaction, off the event loop. A job's patient is
recorded as a keyed hash (:func:`node.audit.patient_ref`), never by name or ID. Failing to write a record is logged
as an error; it never changes the response.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable

from anyio import to_thread
from sqlalchemy import func, select

from node import audit
from node.store.console import ApiToken, RuleVersion
from node.store.db import Job, Study
from node.web import auth, security

log = logging.getLogger(__name__)

#: (methods, path pattern, action, object type); the pattern's first group is the object id
AUDITED: tuple[tuple[frozenset, re.Pattern, str, str], ...] = tuple(
    (frozenset(m.split()), re.compile(p), a, o) for m, p, a, o in (
        ("GET", r"^/(?:api/)?jobs/(\d+)$", "job.view", "job"),
        ("GET", r"^/(?:api/)?jobs/(\d+)/qc\.png$", "job.qc_image", "job"),
        ("GET", r"^/jobs/(\d+)/viewer\.json$", "job.viewer", "job"),
        ("GET", r"^/jobs/(\d+)/viewer/([\w.-]+)\.nii\.gz$", "job.viewer_data", "job"),
        ("GET POST", r"^/(?:api/)?jobs()$", "jobs.list", "jobs"),
        ("POST", r"^/api/jobs/search()$", "jobs.list", "jobs"),
        ("POST", r"^/(?:api/)?jobs/(\d+)/retry$", "job.retry", "job"),
        ("POST", r"^/(?:api/)?jobs/(\d+)/cancel$", "job.cancel", "job"),
        ("POST", r"^/(?:api/)?jobs/(\d+)/resend$", "job.resend", "job"),
        ("POST PUT", r"^/(?:api/)?rules()$", "rules.change", "rules"),
        ("POST", r"^/(?:api/)?rules/dry-run()$", "rules.dry_run", "rules"),
        ("POST", r"^/admin/users()$", "user.create", "user"),
        ("POST", r"^/(?:admin|api)/tokens()$", "token.create", "token"),
        ("POST", r"^/admin/tokens/(\d+)/revoke$", "token.revoke", "token"),
        ("POST", r"^/(?:api/)?account/password()$", "user.password", "user"),
        ("POST", r"^/login()$", "auth.login", "user"),
        ("POST", r"^/logout()$", "auth.logout", "user"),
        ("GET", r"^/(?:api/)?audit()$", "audit.view", "audit"),
        ("GET", r"^/audit/export\.jsonl()$", "audit.export", "audit"),
        ("POST", r"^/notifications/(\d+)/retry$", "notify.retry", "notification"),
    ))
CHANGE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CHANGE_PREFIXES = ("/admin", "/api/", "/settings", "/retention")  # any other change there: action "setting.change"


def match(method: str, path: str) -> tuple[str, str, str, str] | None:
    """(action, object type, object id, extra) of an audited request, else None."""
    for methods, pattern, action, obj in AUDITED:
        m = pattern.match(path)
        if m and method in methods:
            groups = m.groups()
            return action, obj, groups[0] if groups else "", groups[1] if len(groups) > 1 else ""
    if method in CHANGE_METHODS and path.startswith(CHANGE_PREFIXES) and not path.startswith("/api/destinations"):
        return "setting.change", "setting", path, ""
    return None


def outcome_of(status: int, location: str, path: str) -> str:
    """success | denied | not_found | invalid | error, from the response status (a redirect to /login: denied)."""
    if status in (301, 302, 303, 307) and location.endswith("/login") and path not in ("/logout", "/login"):
        return audit.DENIED
    if status < 400:
        return audit.SUCCESS
    if status in (401, 403, 429):
        return audit.DENIED
    if status == 404:
        return audit.NOT_FOUND
    if status == 422:
        return "invalid"
    return audit.ERROR


class _Scope(dict):
    """An ASGI scope that keeps the last principal the session middleware put in it (``principal``), so that a
    sign-out, which removes it, is still recorded with the user who signed out."""

    principal = None

    def __setitem__(self, key, value):
        if key == auth.PRINCIPAL_KEY and value is not None:
            self.principal = value
        super().__setitem__(key, value)


class AuditMiddleware:
    """ASGI middleware writing one audit record per audited request (see module docstring).

    ``new_session``: returns a SQLAlchemy Session of the node database; ``key``: the node secret used for patient
    references (:func:`node.audit.patient_ref`)."""

    def __init__(self, app, new_session: Callable, key: str):
        self.app, self.new_session, self.key = app, new_session, key

    async def __call__(self, scope, receive, send):
        """Pass the request on; afterwards record it when it is audited."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        what = match(scope["method"], scope["path"])
        if what is None:
            await self.app(scope, receive, send)
            return
        seen: dict = {"status": 500, "location": ""}
        scope = _Scope(scope)  # remembers the principal even when sign-out removes it from the scope

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"location":
                        seen["location"] = v.decode("latin-1")
            await send(message)

        body = bytearray()
        inner_receive = receive
        if what[0] == "auth.login":  # keep the (small) sign-in form: a refused sign-in names the user name tried

            async def inner_receive():
                message = await receive()
                if message.get("type") == "http.request" and len(body) < 65536:
                    body.extend(message.get("body", b"")[:65536 - len(body)])
                return message

        try:
            await self.app(scope, inner_receive, send_wrapper)
        finally:
            try:
                await to_thread.run_sync(self._record, scope, what, seen["status"], seen["location"], bytes(body))
            except Exception:  # noqa: BLE001 - an audit hiccup must not turn a served request into an error
                log.exception("audit: could not record %s %s", scope["method"], scope["path"])

    def _record(self, scope, what, status: int, location: str, body: bytes = b"") -> None:
        action, object_type, object_id, extra = what
        p = scope.get(auth.PRINCIPAL_KEY) or getattr(scope, "principal", None)
        headers = dict(scope.get("headers") or [])
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        client = scope.get("client")
        with self.new_session() as s:
            actor, role, via = (p.name, p.role, p.via) if p is not None else ("", "", "")
            if bearer[:7].lower() == "bearer ":
                tok = s.scalar(select(ApiToken).where(ApiToken.token_hash == security.hash_token(bearer[7:].strip())))
                actor, role, via = (f"token:{tok.name}", tok.role, "token") if tok is not None else ("token:?", "", "token")
            outcome = outcome_of(status, location, scope["path"])
            detail, ref = "", ""
            if object_type == "job" and object_id:
                ref = self._patient_of_job(s, int(object_id))
                detail = f"volume {extra}" if extra else ""
            elif action == "rules.change" and outcome == audit.SUCCESS:
                object_id = str(s.scalar(select(func.max(RuleVersion.version))) or "")
                detail = f"routing rules saved as version {object_id}"
            elif action in ("auth.login", "auth.logout", "user.password") and outcome == audit.SUCCESS:
                object_id = actor  # who signed in / out, whose password changed
            elif action == "auth.login" and outcome != audit.SUCCESS:
                from urllib.parse import parse_qs
                tried = parse_qs(body.decode("utf-8", "replace")).get("username", [""])[0][:64]
                detail = f"sign-in refused for user name {tried!r}"
            audit.record(s, action, actor=actor, role=role, via=via, address=client[0] if client else "",
                         object_type=object_type, object_id=object_id, patient_ref=ref, outcome=outcome,
                         status=status, method=scope["method"], path=scope["path"], detail=detail)
            s.commit()

    def _patient_of_job(self, s, job_id: int) -> str:
        row = s.execute(select(Study.patient_id, Study.issuer).join(Job, Job.study_uid == Study.study_uid)
                        .where(Job.id == job_id)).first()
        return audit.patient_ref(self.key, row[0], row[1]) if row else ""
