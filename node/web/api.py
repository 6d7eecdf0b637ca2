"""REST API under /api (OpenAPI at /api/openapi.json). Bearer tokens (or a console session + X-CSRF-Token).

Patient identifiers never go in URLs: filter by patient with ``POST /api/jobs/search``. Times are ISO 8601 UTC.
"""
from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from node.config import ConfigError
from node.store.db import JOB_STATES

from . import actions, auth, queries

from node.route import rules_store
from .deps import MAX_OFFSET, DbId, api_admin, api_user, ctx, db
from .dryrun import run_dry
from .pages import change_own_password, qc_png_path
from node.ops.disk import disk
from .system import check_peer, compute_device

router = APIRouter(prefix="/api")


class JobSearch(BaseModel):
    """Job filters; ``patient`` is a PatientID (exact) or part of a PatientName."""

    patient: str = ""
    state: str = ""
    rule: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    suspicious: bool = False
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class RulesIn(BaseModel):
    """A new version of the routing rules: YAML text of a list of rules."""

    text: str
    comment: str = ""


class DryRunIn(BaseModel):
    """Dry run of the saved rules (or of ``text`` when given) against a received study."""

    study_uid: str
    text: str | None = None


class TokenIn(BaseModel):
    """A new API token: what uses it, and its role."""

    name: str
    role: Literal["admin", "viewer", "sender"] = "viewer"  # sender: STOW-RS only


class PasswordIn(BaseModel):
    """A signed-in user's password change: the current password and the new one (8+ characters)."""

    old_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


def _search(session: Session, request: Request, s: JobSearch) -> dict:
    if s.state and s.state not in JOB_STATES:
        raise HTTPException(422, f"unknown state '{s.state}' (one of {', '.join(JOB_STATES)})")
    f = queries.JobFilter(patient=s.patient, state=s.state, rule=s.rule, date_from=s.date_from,
                          date_to=s.date_to, suspicious=s.suspicious)
    rows, total = queries.list_jobs(session, f, ctx(request).cfg.qc, limit=s.limit, offset=s.offset)
    return {"total": total, "limit": s.limit, "offset": s.offset, "jobs": [r.api() for r in rows]}


@router.get("/jobs", tags=["jobs"])
def list_jobs(request: Request, state: str = "", rule: str = "", date_from: dt.date | None = None,
              date_to: dt.date | None = None, suspicious: bool = False, limit: int = Query(50, ge=1, le=500),
              offset: int = Query(0, ge=0, le=MAX_OFFSET), _: auth.Principal = Depends(api_user),
              session: Session = Depends(db)):
    """Jobs, newest first, with state and QC numbers (similarity before/after, folding %, SDlogJ)."""
    return _search(session, request, JobSearch(state=state, rule=rule, date_from=date_from, date_to=date_to,
                                               suspicious=suspicious, limit=limit, offset=offset))


@router.post("/jobs/search", tags=["jobs"])
def search_jobs(body: JobSearch, request: Request, _: auth.Principal = Depends(api_user),
                session: Session = Depends(db)):
    """Like GET /api/jobs, with a patient filter kept out of the URL."""
    return _search(session, request, body)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: DbId, request: Request, _: auth.Principal = Depends(api_user), session: Session = Depends(db)):
    """One job: state, outcome, QC numbers and problems, time per stage (s), sends, and its log."""
    job = queries.get_job(session, job_id, ctx(request).cfg.qc)
    if job is None:
        raise HTTPException(404, f"there is no job {job_id}")
    out = job.api(detail=True)
    out["log"] = [{"at": line.at.isoformat() + "Z", "level": line.level, "text": line.text}
                  for line in queries.job_log(session, job_id)]
    return out


@router.get("/jobs/{job_id}/qc.png", tags=["jobs"], response_class=FileResponse)
def get_job_qc(job_id: DbId, request: Request, _: auth.Principal = Depends(api_user),
               session: Session = Depends(db)):
    """The job's QC picture (PNG)."""
    return FileResponse(qc_png_path(ctx(request), session, job_id), media_type="image/png",
                        headers={"Cache-Control": "private, no-store"})


def _act(what: str, job_id: int, p: auth.Principal, session: Session, destination: str | None = None):
    try:
        if what == "retry":
            return {"id": job_id, "state": actions.retry(session, job_id, by=p.name)}
        if what == "cancel":
            return {"id": job_id, "state": actions.cancel(session, job_id, by=p.name)}
        return {"id": job_id, "sends_queued": actions.resend(session, job_id, by=p.name, destination=destination)}
    except actions.ActionError as exc:
        session.rollback()
        raise HTTPException(404 if exc.not_found else 409, str(exc)) from None


@router.post("/jobs/{job_id}/retry", tags=["jobs"])
def retry_job(job_id: DbId, p: auth.Principal = Depends(api_admin), session: Session = Depends(db)):
    """Put a failed or dead job back in the queue (admin)."""
    return _act("retry", job_id, p, session)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: DbId, p: auth.Principal = Depends(api_admin), session: Session = Depends(db)):
    """Cancel a queued job (admin)."""
    return _act("cancel", job_id, p, session)


@router.post("/jobs/{job_id}/resend", tags=["jobs"])
def resend_job(job_id: DbId, destination: str | None = None, p: auth.Principal = Depends(api_admin),
               session: Session = Depends(db)):
    """Send a finished job's results again, to all its destinations or to ``destination`` (admin)."""
    return _act("resend", job_id, p, session, destination)


@router.get("/rules", tags=["rules"])
def get_rules(request: Request, _: auth.Principal = Depends(api_user), session: Session = Depends(db)):
    """The routing rules in force: version (0 = node.yaml's), YAML text and parsed rules."""
    c = ctx(request)
    row = rules_store.latest(session)
    return {"version": row.version if row else 0, "author": row.author if row else "",
            "saved_at": row.created_at.isoformat() + "Z" if row else None,
            "text": rules_store.current_text(session, c.cfg),
            "rules": [r.model_dump(mode="json") for r in rules_store.current_rules(session, c.cfg)]}


@router.put("/rules", tags=["rules"])
def put_rules(body: RulesIn, request: Request, p: auth.Principal = Depends(api_admin),
              session: Session = Depends(db)):
    """Validate and save a new version of the rules (admin). 422 with ``problems`` (line, message) if invalid."""
    try:
        row = rules_store.save(session, body.text.replace("\r\n", "\n"), ctx(request).cfg, author=p.name,
                               comment=body.comment)
    except ConfigError as exc:
        session.rollback()
        return JSONResponse({"detail": "the rules have problems; nothing was saved",
                             "problems": [vars(x) for x in rules_store.problems_of(exc)]}, status_code=422)
    return {"version": row.version, "author": row.author}


@router.get("/rules/history", tags=["rules"])
def rules_history(request: Request, _: auth.Principal = Depends(api_user), session: Session = Depends(db)):
    """Saved rule versions, newest first, each with a unified diff to the one before."""
    return [{"version": h.version, "author": h.author, "at": h.created_at.isoformat() + "Z", "comment": h.comment,
             "diff": h.diff} for h in rules_store.history(session, ctx(request).cfg)]


@router.post("/rules/dry-run", tags=["rules"])
def rules_dry_run(body: DryRunIn, request: Request, _: auth.Principal = Depends(api_user),
                  session: Session = Depends(db)):
    """Which rule, series and prior a received study would get under the saved rules (or ``text``)."""
    c = ctx(request)
    try:
        rules = rules_store.validate(body.text, c.cfg) if body.text is not None else \
            rules_store.current_rules(session, c.cfg)
    except ConfigError as exc:
        return JSONResponse({"detail": "the rules have problems",
                             "problems": [vars(x) for x in rules_store.problems_of(exc)]}, status_code=422)
    dry, error = run_dry(c.cfg, rules, session, body.study_uid.strip())
    if dry is None:
        raise HTTPException(404 if "No received study" in error else 503, error)
    return {**dry.as_dict(), "text": dry.text()}


@router.post("/destinations/{name}/echo", tags=["destinations"])
def echo_destination(name: str, request: Request, kind: Literal["destination", "pacs"] = "destination",
                     _: auth.Principal = Depends(api_user)):
    """Check a destination (or, with kind=pacs, a PACS) now: C-ECHO for DICOM peers, HTTP for DICOMweb/Orthanc,
    write access for folders."""
    c = ctx(request)
    try:
        r = check_peer(c.cfg, kind, name)
    except KeyError:
        raise HTTPException(404, f"no {kind} called '{name}' is configured") from None
    c.peer_checks[(kind, name)] = r
    return {"name": name, "kind": kind, "ok": r.ok, "message": r.message, "seconds": round(r.seconds, 3)}


@router.get("/status", tags=["node"])
def status(request: Request, _: auth.Principal = Depends(api_user), session: Session = Depends(db)):
    """Dashboard numbers: studies, jobs by state, throughput (jobs/hour, last 24 h), queue, device, disk."""
    c = ctx(request)
    ov = queries.overview(session)
    d = disk(c.data_dir)
    return {"studies": ov.studies, "studies_24h": ov.studies_24h, "instances": ov.instances,
            "jobs_by_state": ov.jobs_by_state, "throughput_per_hour": ov.throughput_per_hour,
            "queue_length": ov.queue_length, "suspicious": ov.suspicious, "sends_dead": ov.sends_dead,
            "device": compute_device(), "disk_free_bytes": d.free_bytes, "disk_total_bytes": d.total_bytes}


@router.post("/tokens", tags=["admin"], status_code=201)
def create_token(body: TokenIn, p: auth.Principal = Depends(api_admin), session: Session = Depends(db)):
    """Create an API token (admin). The token text is returned once and never stored."""
    try:
        row, token = auth.create_token(session, body.name, body.role, created_by=p.name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"id": row.id, "name": row.name, "role": row.role, "token": token}


@router.post("/account/password", tags=["account"])
def change_password(body: PasswordIn, request: Request, p: auth.Principal = Depends(api_user),
                    session: Session = Depends(db)):
    """Change your own console password (a console session, with X-CSRF-Token). The current password is required;
    a wrong one counts against the sign-in throttle (401, then 429). Your other sessions are signed out."""
    change_own_password(request, session, p, body.old_password, body.new_password)
    return {"user": p.name, "changed": True}
