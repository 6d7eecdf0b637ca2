"""STOW-RS into the node: ``POST /dicom-web/studies`` and ``POST /dicom-web/studies/{study}`` on the console's port.

* Who: ``Authorization: Bearer <token>`` of an API token with role ``sender`` (made by an admin; such a token can do
  nothing else) or ``admin``.  Console sessions are not accepted here.
* What: ``multipart/related; type="application/dicom"``, one DICOM Part 10 instance per part.  The body is read as
  it arrives (:class:`node.net.multipart.MultipartReader`): one part in memory at a time, at most
  ``web.stow.max_part_bytes``; a part over it is answered 0xA700 for that instance and dropped unread; a body over
  ``web.stow.max_request_bytes`` is refused 413 (by its Content-Length before anything is read).
* How: each part is stored exactly as a C-STORE is (:func:`node.receive.part10_in.ingest_part10`: the same
  validation and refusals, file fsynced and indexed) before the next part is read and before the response; the
  study then routes like any received study (assembly: quiet period, rules, jobs).  The index keeps the token's
  name (16 characters) as the calling AE title, so rules may match on it (``calling_ae``).
* Answer (PS3.18 10.5.3, ``application/dicom+json``): ReferencedSOPSequence (stored), FailedSOPSequence with
  FailureReason (the status the SCP would have answered: 0xA700 out of resources, 0xC210/0xC212/0xC213 refused,
  0xA900 for an instance of another study than the URL's, 0xC000 for a part that is not DICOM);
  200 when all were stored, 202 when some were, 409 when none were; 415 for another media type.
"""
from __future__ import annotations

import json
import logging
from io import BytesIO
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydicom import dcmread
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from node.net.multipart import (
    BodyTooLarge,
    MultipartError,
    MultipartReader,
    boundary_of,
    content_type_params,
)
from node.receive.part10_in import Stored, ingest_part10, split_part10
from node.receive.spool import Spool
from node.store.db import Database

from . import auth
from .deps import ctx, db

log = logging.getLogger(__name__)
router = APIRouter(tags=["dicomweb"])

STUDY_MISMATCH = 0xA900  # PS3.18 names no code for it; dcm4chee and others answer 0xA900 too
NOT_DICOM = 0xC000  # cannot understand
OUT_OF_RESOURCES = 0xA700
DICOM_JSON = "application/dicom+json"


def sender(request: Request, session: Session = Depends(db)) -> auth.Principal:
    """The STOW-RS caller: a Bearer API token of role 'sender' or 'admin' (401/403 otherwise)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        raise HTTPException(401, "STOW-RS needs 'Authorization: Bearer <token>' (an API token of role sender)",
                            headers={"WWW-Authenticate": "Bearer"})
    p = auth.token_principal(session, header[7:].strip())
    if p is None:
        raise HTTPException(401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"})
    if p.role not in ("sender", "admin"):
        raise HTTPException(403, f"a {p.role} token may not store instances (role sender or admin needed)")
    return p


class _Db:
    """:meth:`node.store.db.Database.session` (one transaction per call) on the app's session factory: what the
    ingest needs."""

    session = Database.session

    def __init__(self, new_session) -> None:
        self._sessions = new_session


def _spool(request: Request) -> Spool:
    c = ctx(request)
    sp = c.extra.get("stow_spool")
    if sp is None:
        n = c.cfg.node
        sp = c.extra["stow_spool"] = Spool(Path(c.data_dir) / "spool", min_free_mb=n.min_free_disk_mb, fsync=n.fsync)
    return sp


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> dict:
    out: dict = {}
    if sop_class:
        out["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        out["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    if reason is not None:
        out["00081197"] = {"vr": "US", "Value": [reason]}
    return out


def _uids_of_head(head: bytes) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) from the File Meta of a part's first bytes, ('', '') when unreadable."""
    try:
        uids, _ = split_part10(head)
        return uids["sop_class"], uids["sop_instance"]
    except Exception:  # noqa: BLE001 - the failure item then carries no UIDs
        return "", ""


def _study_of(data: bytes) -> str:
    """The StudyInstanceUID of a Part 10 byte string ('' when it cannot be read)."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # noqa: BLE001 - the ingest then refuses it with its own reason
        return ""


@router.post("/dicom-web/studies", include_in_schema=True)
async def stow_studies(request: Request, p: auth.Principal = Depends(sender)):
    """STOW-RS: store every instance of the multipart body (see the module docstring)."""
    return await _stow(request, p, None)


@router.post("/dicom-web/studies/{study_uid}", include_in_schema=True)
async def stow_study(study_uid: str, request: Request, p: auth.Principal = Depends(sender)):
    """STOW-RS into one study: instances of another study are refused (FailureReason 0xA900)."""
    return await _stow(request, p, study_uid.strip())


async def _stow(request: Request, p: auth.Principal, study_uid: str | None) -> Response:
    c = ctx(request)
    limits = c.cfg.web.stow
    if not limits.enabled:
        raise HTTPException(403, "STOW-RS is switched off on this node (web.stow.enabled)")
    ctype = request.headers.get("content-type", "")
    media, params = content_type_params(ctype)
    part_type = params.get("type", "application/dicom").lower()
    if media != "multipart/related" or part_type != "application/dicom":
        raise HTTPException(415, "STOW-RS here takes multipart/related; type=\"application/dicom\" "
                                 f"(got {ctype[:120] or 'no Content-Type'})")
    try:
        boundary = boundary_of(ctype)
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from None
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limits.max_request_bytes):
        raise HTTPException(413, f"the request body is over web.stow.max_request_bytes ({limits.max_request_bytes} "
                                 "bytes): send fewer instances per request")
    calling = p.name.removeprefix("token:")[:16]
    dbw, spool = _Db(c.new_session), _spool(request)
    reader = MultipartReader(boundary, max_part_bytes=limits.max_part_bytes,
                             max_total_bytes=limits.max_request_bytes)
    stored: list[Stored] = []
    failed: list[tuple[str, str, int, str]] = []  # (class, instance, reason, message)

    async def take(part) -> None:
        if part.too_large:
            cls, inst = _uids_of_head(part.data)
            why = f"the part is {part.size} bytes, over web.stow.max_part_bytes ({limits.max_part_bytes})"
            failed.append((cls, inst, OUT_OF_RESOURCES, why))
            return
        if part.content_type not in ("", "application/dicom"):
            failed.append(("", "", NOT_DICOM, f"a part of type {part.content_type}, not application/dicom"))
            return
        got = _study_of(part.data)
        if study_uid is not None and got and got != study_uid:
            cls, inst = _uids_of_head(part.data)
            failed.append((cls, inst, STUDY_MISMATCH, f"of study {got}, not of the URL's study {study_uid}"))
            return
        res = await run_in_threadpool(ingest_part10, dbw, spool, c.cfg, part.data, calling_ae=calling)
        if res.ok:
            stored.append(res)
        else:
            failed.append((res.sop_class_uid, res.sop_instance_uid, res.status, res.message))

    try:
        async for chunk in request.stream():
            for part in reader.feed(chunk):
                await take(part)
        reader.close()
    except BodyTooLarge:
        log.warning("STOW-RS from %s: body over %d bytes refused after %d instances stored", calling,
                    limits.max_request_bytes, len(stored))
        raise HTTPException(413, f"the request body is over web.stow.max_request_bytes ({limits.max_request_bytes} "
                                 f"bytes); {len(stored)} instances were stored before it was cut") from None
    except MultipartError as exc:
        if not stored and not failed:
            raise HTTPException(400, f"the body is not multipart/related: {exc}") from None
        failed.append(("", "", NOT_DICOM, f"the body ended badly: {exc}"))
    for cls, inst, reason, message in failed:
        log.warning("STOW-RS from %s: instance %s not stored (0x%04X): %s", calling, inst or "?", reason, message)
    if not stored and not failed:
        raise HTTPException(400, "the body holds no instance")
    body: dict = {}  # no RetrieveURL: the node stores, it does not serve WADO-RS
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(cls, inst, reason) for cls, inst, reason, _ in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(s.sop_class_uid, s.sop_instance_uid) for s in stored]}
    status = 200 if not failed else 202 if stored else 409
    log.info("STOW-RS from %s: %d stored, %d failed", calling, len(stored), len(failed))
    return Response(json.dumps(body), status_code=status, media_type=DICOM_JSON)
