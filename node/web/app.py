"""The web console, REST API, Prometheus ``/metrics`` and ``/healthz`` of the node, as one FastAPI app.

``create_app(cfg, session_factory, data_dir=...)`` builds it; ``totalreg serve`` runs it with uvicorn in a thread
(see :func:`serve_in_thread`). Pages are server-rendered (Jinja2) and work without JavaScript; the API is
described at ``/api/openapi.json``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import text
from sqlalchemy.orm import Session

from node.ops import metrics
from node.config import NodeConfig

from . import api, audit, auth, pages, queries, viewer  # audit: /audit, /notifications and the audit middleware
from . import stow

from node.store import console as models
from .deps import Context, LoginRequired
from .sessions import ConsoleSessions
from node.ops.disk import disk

log = logging.getLogger(__name__)
PKG = Path(__file__).resolve().parents[1]


def _session_maker(session_factory) -> Callable[[], Session]:
    """Accept a ``node.store.db.Database`` (uses ``new_session``) or any callable returning a Session."""
    return session_factory.new_session if hasattr(session_factory, "new_session") else session_factory


def _fmt_time(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "—"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _fmt_num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def create_app(cfg: NodeConfig, session_factory, *, data_dir: str | Path | None = None,
               receiver_alive: Callable[[], bool] | None = None, https_only: bool = False,
               show_password: Callable[[str], bool] | None = None) -> FastAPI:
    """The console + API app.

    ``session_factory``: a ``node.store.db.Database`` or a callable returning SQLAlchemy Sessions of the node database.
    ``data_dir``: the node's data folder (spool, secrets; default ``cfg.node.data_dir``). ``receiver_alive``: a
    callable telling whether the DICOM receiver thread is alive (reported by /healthz when given).
    ``https_only``: mark the session cookie Secure on every response (like ``web.secure_cookies``; https requests
    get it anyway). ``show_password``: where a generated admin password is shown once (default: the terminal, see
    :func:`node.web.auth.ensure_admin`). The console's tables are created if missing and the configured admin user
    is made on first start.
    """
    data_dir = Path(data_dir if data_dir is not None else cfg.node.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    new_session = _session_maker(session_factory)
    with new_session() as s:
        models.create_tables(s.get_bind())
    with new_session() as s:
        auth.ensure_admin(s, cfg.web.admin_user, cfg.web.admin_password, data_dir, show=show_password)

    templates = Jinja2Templates(directory=str(PKG / "templates"))
    templates.env.filters.update(t=_fmt_time, bytes=_fmt_bytes, num=_fmt_num)
    templates.env.globals["version"] = _version()

    app = FastAPI(title="TotalRegistrator Node", version=_version(), openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="REST API of the node: jobs, routing rules, destinations. Authenticate with "
                              "`Authorization: Bearer <token>` (tokens are created by an admin in the console).")
    w = cfg.web
    app.state.ctx = Context(cfg=cfg, new_session=new_session, data_dir=data_dir, templates=templates,
                            receiver_alive=receiver_alive,
                            throttle=auth.LoginThrottle(w.login_max_failures, w.login_window_s,
                                                        w.login_max_failures_per_address))
    app.add_middleware(ConsoleSessions, new_session=new_session, secret_key=auth.secret_key(w.secret_key, data_dir),
                       max_age_s=w.session_max_age_s, idle_s=w.session_idle_s,
                       secure_always=https_only or w.secure_cookies)
    app.add_middleware(BodyLimit)  # outermost: an oversized body is refused before anything reads it
    app.mount("/static", StaticFiles(directory=str(PKG / "static")), name="static")

    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(viewer.router)
    audit.install(app, cfg, new_session, data_dir)
    app.include_router(stow.router)  # STOW-RS in (POST /dicom-web/studies): sender tokens, streamed size limits

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/static"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired):
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return _error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        if _wants_json(request):
            return JSONResponse({"detail": problems}, status_code=422)
        return _error_page(request, 422, "; ".join(problems))

    def _error_page(request: Request, status: int, message: str):
        ctx = {"status": status, "message": message, "user": auth.session_principal(request),
               "csrf": auth.csrf_token(request), "node_ae": cfg.node.ae_title, "flashes": []}
        return templates.TemplateResponse(request, "error.html", ctx, status_code=status)

    @app.get("/metrics", include_in_schema=False)
    def _metrics():
        """Prometheus text exposition (no patient data; open like /healthz)."""
        from fastapi import Response

        def count():
            with new_session() as s:
                by_state = queries.jobs_by_state(s)
            metrics.QUEUE_LENGTH.set(by_state.get("queued", 0))
            return by_state

        body = metrics.render(metrics.JobStateCollector(count))
        return Response(body, media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["health"])
    def _healthz():
        """Node health: database reachable, receiver thread alive (when known), spool disk above the minimum."""
        checks: dict[str, dict] = {}
        t0 = time.monotonic()
        try:
            with new_session() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "message": f"reachable ({(time.monotonic() - t0) * 1e3:.0f} ms)"}
        except Exception as exc:  # report, never raise
            checks["database"] = {"ok": False, "message": f"not reachable: {exc.__class__.__name__}: "
                                                          f"{str(exc).splitlines()[0][:200]}"}
        if receiver_alive is not None:
            alive = bool(receiver_alive())
            checks["receiver"] = {"ok": alive, "message": "DICOM receiver running" if alive
                                  else "DICOM receiver thread is not running"}
        d = disk(data_dir)
        need = cfg.node.min_free_disk_mb * 1024 * 1024
        checks["disk"] = {"ok": d.free_bytes >= need, "free_bytes": d.free_bytes,
                          "message": f"{_fmt_bytes(d.free_bytes)} free in the spool (minimum "
                                     f"{cfg.node.min_free_disk_mb} MB)"}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ok" if ok else "unhealthy", "checks": checks}, status_code=200 if ok else 503)

    return app


#: request bodies larger than this are refused (413) before they are read: the sign-in and password forms are a
#: few hundred bytes; everything else (rule documents, JSON) stays far below the general limit
SMALL_FORM_PATHS, SMALL_FORM_BYTES, BODY_BYTES = ("/login", "/account/password", "/api/account/password"), \
    64 * 1024, 4 * 1024 * 1024
STOW_PREFIX = "/dicom-web/"


class BodyLimit:
    """ASGI middleware: refuse (413, naming the limit) a request body over :data:`BODY_BYTES`, or over
    :data:`SMALL_FORM_BYTES` on the sign-in and password paths — by its Content-Length before reading it, or while
    a chunked body arrives — so that hostile bodies are never parsed nor kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        """Pass the request on, or answer 413 when its body is too large."""
        if scope["type"] != "http" or scope["path"].startswith(STOW_PREFIX):
            await self.app(scope, receive, send)  # STOW-RS streams its body under web.stow limits (node.web.stow)
            return
        limit = SMALL_FORM_BYTES if scope["path"] in SMALL_FORM_PATHS else BODY_BYTES
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await self._refuse(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True  # chunked: read it here, up to the limit, then hand it on
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, limit: int) -> None:
        what = "this form" if limit == SMALL_FORM_BYTES else "a request"
        response = JSONResponse({"detail": f"the request body is too large: {what} may have at most {limit} bytes"},
                                status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.url.path.startswith(("/api/", STOW_PREFIX)) or "application/json" in accept and \
        "text/html" not in accept


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("totalregistrator-node")
    except Exception:
        return "dev"


def serve_in_thread(app: FastAPI, host: str, port: int, log_level: str = "warning"):
    """Run ``app`` with uvicorn in a daemon thread; returns (server, thread). Stop with ``server.should_exit =
    True`` and ``thread.join()``. Waits until the socket is listening (at most 10 s)."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="totalreg-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the web console could not start on {host}:{port}")
    return server, thread
