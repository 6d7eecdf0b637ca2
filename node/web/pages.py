"""Server-rendered console pages (Jinja2). Every POST checks the session's CSRF token; URLs carry job ids only —
patient filters travel by POST and are kept in the server-side session (node.web.sessions), never in a cookie."""
from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import ConfigError
from node.store.db import JOB_STATES

from . import actions, auth, queries

from node.retention.runner import dashboard_view
from node.route import rules_store
from .deps import MAX_OFFSET, Context, DbId, ctx, db, page_admin, page_user
from .dryrun import run_dry
from node.store.console import ApiToken, ConsoleUser
from node.ops.disk import disk
from .system import check_peer, compute_device, peers

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
FLASH_CHARS = 300  # a flash message is cut to this length (it may quote what a user typed)


def render(request: Request, name: str, user: auth.Principal | None, status_code: int = 200, **context):
    """Render a template with the common context (user, CSRF token, flash messages, active nav item)."""
    c: Context = ctx(request)
    flashes = request.session.pop("flash", []) if "flash" in request.session else []
    context.update(user=user, csrf=auth.csrf_token(request), flashes=flashes, node_ae=c.cfg.node.ae_title)
    return c.templates.TemplateResponse(request, name, context, status_code=status_code)


def flash(request: Request, message: str, level: str = "ok") -> None:
    """Queue a one-time message for the next page (level ok | error | info)."""
    request.session["flash"] = (request.session.get("flash") or [])[-4:] + [[level, message[:FLASH_CHARS]]]


def back(url: str) -> RedirectResponse:
    """303 redirect (POST → GET)."""
    return RedirectResponse(url, status_code=303)


# -------------------------------------------------------------------------------------------------------- login

@router.get("/login")
def login_page(request: Request):
    if auth.session_principal(request):
        return back("/")
    return render(request, "login.html", None)


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
          session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    throttle, address = ctx(request).throttle, auth.client_address(request)
    shown_name = username[:auth.MAX_USERNAME_CHARS]
    wait = throttle.wait_s(address, username)
    if wait > 0:
        return render(request, "login.html", None, status_code=429, username=shown_name,
                      error=f"Too many wrong passwords from this computer; try again in "
                            f"{max(1, math.ceil(wait / 60))} min.")
    user = auth.authenticate(session, username, password)
    if user is None:
        throttle.failed(address, username)
        log.warning("console: failed sign-in from %s (user name of length %d)", address, len(username))
        return render(request, "login.html", None, status_code=401, error="Wrong user name or password.",
                      username=shown_name)
    throttle.succeeded(address, username)
    auth.sign_in(request, user)
    log.info("console: %s signed in from %s", user.username, address)
    return back("/")


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")):
    auth.check_csrf(request, csrf_token)
    auth.sign_out(request)
    return back("/login")


# ------------------------------------------------------------------------------------------------------ account

@router.get("/account")
def account_page(request: Request, user: auth.Principal = Depends(page_user)):
    return render(request, "account.html", user, nav="account")


@router.post("/account/password")
def account_password(request: Request, old_password: str = Form(""), new_password: str = Form(""),
                     new_password2: str = Form(""), csrf_token: str = Form(""),
                     user: auth.Principal = Depends(page_user), session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    if new_password != new_password2:
        return render(request, "account.html", user, status_code=422, nav="account",
                      error="The two new passwords differ.")
    try:
        change_own_password(request, session, user, old_password, new_password)
    except HTTPException as exc:
        return render(request, "account.html", user, status_code=exc.status_code, nav="account",
                      error=str(exc.detail))
    flash(request, "Password changed. Your other sessions were signed out.")
    return back("/account")


def change_own_password(request: Request, session: Session, user: auth.Principal, old_password: str,
                        new_password: str) -> None:
    """Change the signed-in user's password (old one required; wrong ones count against the sign-in throttle).
    HTTPException 400 (an API token), 401 (wrong old password), 422 (unusable new one) or 429 (throttled)."""
    if user.user_id is None:
        raise HTTPException(400, "an API token has no password; sign in to the console to change yours")
    throttle, address = ctx(request).throttle, auth.client_address(request)
    wait = throttle.wait_s(address, user.name)
    if wait > 0:
        raise HTTPException(429, f"Too many wrong passwords from this computer; try again in "
                                 f"{max(1, math.ceil(wait / 60))} min.")
    try:
        auth.change_password(session, user.user_id, old_password, new_password,
                             keep_session=request.scope.get(auth.SESSION_ID_KEY))
    except auth.WrongPassword as exc:
        session.rollback()
        throttle.failed(address, user.name)
        raise HTTPException(401, f"Not changed: {exc}.") from None
    except ValueError as exc:
        session.rollback()
        raise HTTPException(422, f"Not changed: {exc}.") from None
    log.info("console: %s changed their password", user.name)


# ---------------------------------------------------------------------------------------------------- dashboard

@router.get("/")
def dashboard(request: Request, user: auth.Principal = Depends(page_user), session: Session = Depends(db)):
    c = ctx(request)
    ov = queries.overview(session)
    session.rollback()
    d = disk(c.data_dir)
    peer_rows = [(kind, name, addr, action, c.peer_checks.get((kind, name))) for kind, name, addr, action in peers(c.cfg)]
    return render(request, "dashboard.html", user, nav="dashboard", ov=ov, disk=d, device=compute_device(),
                  peers=peer_rows, min_free_mb=c.cfg.node.min_free_disk_mb,
                  receiver=None if c.receiver_alive is None else bool(c.receiver_alive()),
                  retention=dashboard_view(c.data_dir))  # disk use, its trend and the next purge


@router.post("/peers/echo")
def echo_peer(request: Request, kind: str = Form(...), name: str = Form(...), csrf_token: str = Form(""),
              user: auth.Principal = Depends(page_user)):
    auth.check_csrf(request, csrf_token)
    c = ctx(request)
    try:
        result = check_peer(c.cfg, kind, name)
    except KeyError:
        raise HTTPException(404, f"no {kind} called '{name}' is configured") from None
    c.peer_checks[(kind, name)] = result
    flash(request, f"{name}: {result.message}", "ok" if result.ok else "error")
    return back("/#health")


# --------------------------------------------------------------------------------------------------------- jobs

def _filter_from_session(request: Request) -> queries.JobFilter:
    raw = request.session.get("job_filter") or {}
    f = queries.JobFilter(patient=raw.get("patient", ""), state=raw.get("state", ""), rule=raw.get("rule", ""),
                          suspicious=bool(raw.get("suspicious")))
    for key in ("date_from", "date_to"):
        if raw.get(key):
            setattr(f, key, dt.date.fromisoformat(raw[key]))
    return f


@router.get("/jobs")
def jobs_page(request: Request, page: Annotated[int, Query(le=MAX_OFFSET // PAGE_SIZE)] = 1, state: str = "",
              user: auth.Principal = Depends(page_user), session: Session = Depends(db)):
    c = ctx(request)
    if state in JOB_STATES:  # links from the dashboard (a state is not patient data)
        request.session["job_filter"] = {"state": state}
        return back("/jobs")
    f = _filter_from_session(request)
    page = max(1, page)
    rows, total = queries.list_jobs(session, f, c.cfg.qc, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    rules = sorted(set(queries.rule_names(session)) | {r.name for r in c.cfg.rules})
    session.rollback()
    return render(request, "jobs.html", user, nav="jobs", rows=rows, total=total, page=page,
                  pages=max(1, -(-total // PAGE_SIZE)), f=f, states=JOB_STATES, rules=rules)


@router.post("/jobs")
def jobs_filter(request: Request, patient: str = Form(""), state: str = Form(""), rule: str = Form(""),
                date_from: str = Form(""), date_to: str = Form(""), suspicious: str = Form(""),
                clear: str = Form(""), csrf_token: str = Form(""), user: auth.Principal = Depends(page_user)):
    auth.check_csrf(request, csrf_token)
    if clear:
        request.session.pop("job_filter", None)
        return back("/jobs")
    for label, value in (("from", date_from), ("to", date_to)):
        if value:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                flash(request, f"The '{label}' date {value!r} is not a date (YYYY-MM-DD).", "error")
                return back("/jobs")
    if state and state not in JOB_STATES:
        flash(request, f"Unknown state {state!r}.", "error")
        return back("/jobs")
    request.session["job_filter"] = {"patient": patient.strip()[:64], "state": state, "rule": rule[:128],
                                     "date_from": date_from, "date_to": date_to, "suspicious": bool(suspicious)}
    return back("/jobs")


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: DbId, user: auth.Principal = Depends(page_user),
             session: Session = Depends(db)):
    c = ctx(request)
    job = queries.get_job(session, job_id, c.cfg.qc)
    if job is None:
        raise HTTPException(404, f"there is no job {job_id}")
    log_lines = queries.job_log(session, job_id)
    session.rollback()
    stages = {k: v for k, v in job.timings.items() if k != "total"}  # the worker also records 'total'
    total_s = job.timings.get("total", sum(stages.values()))
    return render(request, "job.html", user, nav="jobs", job=job, log=log_lines, stages=stages, total_s=total_s,
                  thresholds=c.cfg.qc)


def qc_png_path(c: Context, session: Session, job_id: int) -> Path:
    """The job's QC picture, which must lie inside its result folder or the node's data folder (404 otherwise)."""
    found = queries.job_qc_png(session, job_id)
    if found is None or not found[0]:
        raise HTTPException(404, f"job {job_id} has no QC picture")
    png, result_dir = found
    path = Path(png)
    if not path.is_absolute() and result_dir:
        path = Path(result_dir) / path
    path = path.resolve()
    roots = [Path(r).resolve() for r in (result_dir, c.data_dir) if r]
    if not any(path.is_relative_to(r) for r in roots):
        raise HTTPException(404, f"job {job_id}'s QC picture is outside its result folder")
    if not path.is_file():
        raise HTTPException(404, f"job {job_id}'s QC picture is missing on disk")
    return path


@router.get("/jobs/{job_id}/qc.png")
def job_qc_png(request: Request, job_id: DbId, user: auth.Principal = Depends(page_user),
               session: Session = Depends(db)):
    path = qc_png_path(ctx(request), session, job_id)
    session.rollback()
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _job_action(request: Request, job_id: int, csrf_token: str, user: auth.Principal, session: Session, what: str):
    auth.check_csrf(request, csrf_token)
    try:
        if what == "retry":
            state = actions.retry(session, job_id, by=user.name)
            flash(request, f"Job {job_id} is back in the queue (state {state}).")
        elif what == "cancel":
            state = actions.cancel(session, job_id, by=user.name)
            flash(request, f"Job {job_id} was cancelled (state {state}).")
        else:
            n = actions.resend(session, job_id, by=user.name)
            flash(request, f"Results of job {job_id} queued again for {n} destination(s).")
    except actions.ActionError as exc:
        session.rollback()
        flash(request, str(exc), "error")
    return back(f"/jobs/{job_id}")


@router.post("/jobs/{job_id}/retry")
def job_retry(request: Request, job_id: DbId, csrf_token: str = Form(""), user=Depends(page_admin),
              session: Session = Depends(db)):
    return _job_action(request, job_id, csrf_token, user, session, "retry")


@router.post("/jobs/{job_id}/cancel")
def job_cancel(request: Request, job_id: DbId, csrf_token: str = Form(""), user=Depends(page_admin),
               session: Session = Depends(db)):
    return _job_action(request, job_id, csrf_token, user, session, "cancel")


@router.post("/jobs/{job_id}/resend")
def job_resend(request: Request, job_id: DbId, csrf_token: str = Form(""), user=Depends(page_admin),
               session: Session = Depends(db)):
    return _job_action(request, job_id, csrf_token, user, session, "resend")


# -------------------------------------------------------------------------------------------------------- rules

def _rules_page(request: Request, user, session: Session, *, text: str | None = None, problems=None,
                dry=None, dry_error: str = "", study_uid: str = "", status_code: int = 200):
    c = ctx(request)
    row = rules_store.latest(session)
    current = rules_store.current_text(session, c.cfg)
    text = current if text is None else text
    problem_lines = {p.line for p in problems or [] if p.line}
    history = rules_store.history(session, c.cfg)
    studies = queries.recent_studies(session)
    return render(request, "rules.html", user, status_code=status_code, nav="rules", text=text,
                  lines=text.splitlines() or [""], problems=problems or [], problem_lines=problem_lines,
                  rules_version=row.version if row else 0, saved_by=row.author if row else "", saved_at=row.created_at
                  if row else None, history=history, dry=dry, dry_error=dry_error, studies=studies,
                  study_uid=study_uid, destinations=[d.name for d in c.cfg.destinations])


@router.get("/rules")
def rules_page(request: Request, user: auth.Principal = Depends(page_user), session: Session = Depends(db)):
    return _rules_page(request, user, session)


@router.post("/rules")
def rules_save(request: Request, text: str = Form(""), comment: str = Form(""), csrf_token: str = Form(""),
               user: auth.Principal = Depends(page_admin), session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    text = text.replace("\r\n", "\n")
    try:
        row = rules_store.save(session, text, ctx(request).cfg, author=user.name, comment=comment)
    except ConfigError as exc:
        session.rollback()
        return _rules_page(request, user, session, text=text, problems=rules_store.problems_of(exc),
                           status_code=422)
    log.info("console: %s saved routing rules version %d", user.name, row.version)
    flash(request, f"Rules saved as version {row.version}.")
    return back("/rules")


@router.post("/rules/dry-run")
def rules_dry_run(request: Request, text: str = Form(""), study_uid: str = Form(""), csrf_token: str = Form(""),
                  user: auth.Principal = Depends(page_user), session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    text = text.replace("\r\n", "\n")
    try:
        rules = rules_store.validate(text, ctx(request).cfg)
    except ConfigError as exc:
        return _rules_page(request, user, session, text=text, problems=rules_store.problems_of(exc),
                           study_uid=study_uid, status_code=422)
    dry, error = run_dry(ctx(request).cfg, rules, session, study_uid.strip())
    session.rollback()
    return _rules_page(request, user, session, text=text, dry=dry, dry_error=error, study_uid=study_uid.strip())


# -------------------------------------------------------------------------------------------------------- admin

def _admin_page(request: Request, user, session: Session, new_token: str = "", status_code: int = 200):
    users = list(session.scalars(select(ConsoleUser).order_by(ConsoleUser.username)))
    tokens = list(session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))
    return render(request, "admin.html", user, status_code=status_code, nav="admin", users=users, tokens=tokens,
                  new_token=new_token)


@router.get("/admin")
def admin_page(request: Request, user=Depends(page_admin), session: Session = Depends(db)):
    return _admin_page(request, user, session)


@router.post("/admin/users")
def admin_add_user(request: Request, username: str = Form(""), password: str = Form(""), role: str = Form("viewer"),
                   csrf_token: str = Form(""), user=Depends(page_admin), session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    try:
        auth.create_user(session, username, password, role)
    except ValueError as exc:
        session.rollback()
        flash(request, str(exc), "error")
    else:
        flash(request, f"User '{username.strip()}' ({role}) created.")
    return back("/admin")


@router.post("/admin/tokens")
def admin_add_token(request: Request, name: str = Form(""), role: str = Form("viewer"), csrf_token: str = Form(""),
                    user=Depends(page_admin), session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    try:
        _, token = auth.create_token(session, name, role, created_by=user.name)
    except ValueError as exc:
        session.rollback()
        flash(request, str(exc), "error")
        return back("/admin")
    return _admin_page(request, user, session, new_token=token)


@router.post("/admin/tokens/{token_id}/revoke")
def admin_revoke_token(request: Request, token_id: DbId, csrf_token: str = Form(""), user=Depends(page_admin),
                       session: Session = Depends(db)):
    auth.check_csrf(request, csrf_token)
    row = session.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(404, f"there is no token {token_id}")
    row.revoked = True
    session.commit()
    flash(request, f"Token '{row.name}' revoked.")
    return back("/admin")
