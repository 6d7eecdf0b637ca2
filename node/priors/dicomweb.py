"""Priors over DICOMweb (``pacs[].kind: dicomweb``): QIDO-RS for the patient's studies and a study's series,
WADO-RS of the one chosen series, streamed part by part into the node's spool.

* Authentication (``auth``): none, ``basic`` (username/password), ``bearer`` (token); mTLS with ``client_cert`` +
  ``client_key`` (PEM), the archive's certificate checked against ``ca_file`` (default: the system's CAs).
* QIDO-RS (:func:`query_studies`, :func:`query_series`) through ``dicomweb-client``: ``PatientID`` (and
  ``IssuerOfPatientID`` when the current study carries one; an archive that answers 400 to that key is asked again
  without it and the answers are compared by the prior choice), paged with ``limit`` = ``page_size`` and ``offset``
  until a page comes back short.
* WADO-RS (:func:`retrieve_series`): ``GET {url}/studies/{study}/series/{series}`` asking for
  ``multipart/related; type="application/dicom"`` in any transfer syntax; a ``multipart/related`` answer is read
  incrementally (:class:`node.net.multipart.MultipartReader`: one instance in memory at a time), a single
  ``application/dicom`` answer as one instance.  Each instance goes through the sink: the node's
  :class:`node.work.steps.SpoolSink` stores it with the C-STORE rules (fsync, index) before the next is read.
* Retries: a connection error, a timeout, 429 or a 5xx is tried again ``retries`` times (back-off
  ``retry_backoff_s``, doubled); a WADO-RS retrieve retried after a cut-off answer stores again only what is new
  (the ingest keeps an identical re-sent instance as it is).
* Every failure is a :class:`DicomwebError` (a :class:`node.net.dimse.DimseError`, so the prior choice treats it like
  a DIMSE failure: ``kind`` 'unreachable'/'timeout' are transient) with a plain message for the job, e.g.
  ``QIDO-RS 401 from 'cloud': check the token``.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from io import BytesIO

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.config import NodeConfig, PacsConfig
from node.net import dimse
from node.net.multipart import (
    BodyTooLarge,
    MultipartError,
    MultipartReader,
    boundary_of,
    content_type_params,
)
from node.store.header import parse_is, series_summary_of, study_summary_of
from node.store.study import SeriesSummary, StudySummary

log = logging.getLogger(__name__)

STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
                "ModalitiesInStudy", "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate",
                "PatientSex")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined",
                 "NumberOfSeriesRelatedInstances")
MAX_PAGES = 1000  # a QIDO-RS search never asks for more pages than this (an archive that ignores offset)
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MAX_INSTANCE_BYTES = 2 * 1024 ** 3  # one WADO-RS part; node.max_dataset_bytes refuses larger ones anyway


class DicomwebError(dimse.DimseError):
    """A DICOMweb request failed; the message is plain words for the job ('QIDO-RS 401 from ...: check ...').

    ``kind``: 'unreachable' (connection refused/reset, 429, 5xx) and 'timeout' may pass; 'status' (another HTTP
    error), 'failed' (a malformed answer) will not.  ``http_status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, kind: str, http_status: int | None = None) -> None:
        super().__init__(message, kind=kind)
        self.http_status = http_status


# ---------------------------------------------------------------------------------------------- HTTP session

class _TimeoutSession(requests.Session):
    """A requests session with a default (connect, read) timeout on every request."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method, url, **kw):
        if kw.get("timeout") is None:
            kw["timeout"] = self.default_timeout
        if isinstance(self.verify, str) and kw.get("verify") in (None, True):
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's verify: ca_file wins
            kw["verify"] = self.verify
        return super().request(method, url, **kw)


def session_for(pacs: PacsConfig) -> requests.Session:
    """A requests session carrying ``pacs``' authentication, mTLS certificate, CA bundle and timeouts (s)."""
    s = _TimeoutSession((pacs.connect_timeout_s, pacs.read_timeout_s))
    if pacs.auth == "basic":
        s.auth = (pacs.username or "", pacs.password or "")
    elif pacs.auth == "bearer":
        s.headers["Authorization"] = f"Bearer {pacs.token}"
    if pacs.client_cert is not None:
        s.cert = (str(pacs.client_cert), str(pacs.client_key))
    if pacs.ca_file is not None:
        s.verify = str(pacs.ca_file)
    s.headers["User-Agent"] = "totalreg-node"
    return s


def _client(pacs: PacsConfig, session: requests.Session):
    """A dicomweb-client on ``pacs.url`` with ``session``; its own retries are off (ours count and report)."""
    from dicomweb_client.api import DICOMwebClient

    c = DICOMwebClient(url=pacs.url.rstrip("/"), session=session,
                       timeout=(pacs.connect_timeout_s, pacs.read_timeout_s))
    c.set_http_retry_params(retry=False)
    return c


# ----------------------------------------------------------------------------------------------- errors

def _advice(pacs: PacsConfig, status: int) -> str:
    if status == 401:
        if pacs.auth == "bearer":
            return "check the token"
        if pacs.auth == "basic":
            return "check the user name and password"
        return "the archive wants credentials: set auth (basic or bearer) for this PACS"
    if status == 403:
        return ("the credentials are valid but not allowed to do this: check the token's or user's permissions"
                if pacs.auth != "none" else "the archive refuses this client: check its access rules")
    if status == 404:
        return f"check the url ({pacs.url}: the DICOMweb root, e.g. https://host/dicom-web)"
    if status == 429:
        return "the archive asks to slow down; tried again later"
    if status >= 500:
        return "the archive failed; tried again later"
    return "the archive refused the request"


def http_error(pacs: PacsConfig, service: str, status: int, detail: str = "") -> DicomwebError:
    """The :class:`DicomwebError` of an HTTP error answer, e.g. "QIDO-RS 401 from 'cloud': check the token"."""
    transient = status == 429 or status >= 500
    extra = f" ({detail[:200]})" if detail else ""
    return DicomwebError(f"{service} {status} from '{pacs.name}': {_advice(pacs, status)}{extra}",
                         kind="unreachable" if transient else "status", http_status=status)


def _translate(pacs: PacsConfig, service: str, exc: Exception) -> DicomwebError:
    """A requests exception → DicomwebError with a plain message."""
    if isinstance(exc, DicomwebError):
        return exc
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return http_error(pacs, service, exc.response.status_code, _body_text(exc.response))
    if isinstance(exc, requests.exceptions.SSLError):
        m = re.search(r"\[SSL[^\]]*\][^'\")]*|SSLError\([^']*'([^']*)", str(exc))
        why = (m.group(1) or m.group(0)).strip() if m else _first_line(exc)[:160]
        return DicomwebError(f"{service} to '{pacs.name}': TLS failed ({why}): check ca_file, client_cert and "
                             f"client_key", kind="status")
    if isinstance(exc, requests.Timeout):
        return DicomwebError(f"{service} to '{pacs.name}' timed out (connect {pacs.connect_timeout_s:g} s, read "
                             f"{pacs.read_timeout_s:g} s)", kind="timeout")
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        m = re.search(r"\[Errno -?\d+\][^'\")]*|Read timed out|Connection (?:reset|aborted)[^'\")]*", str(exc))
        why = m.group(0).strip() if m else _first_line(exc)[:160]
        return DicomwebError(f"'{pacs.name}' unreachable for {service} at {pacs.url}: {why}", kind="unreachable")
    return DicomwebError(f"{service} from '{pacs.name}' failed: {type(exc).__name__}: {_first_line(exc)}",
                         kind="failed")


def _first_line(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _body_text(response: requests.Response) -> str:
    """The first line of a short text error body (never a DICOM body)."""
    try:
        if "json" in response.headers.get("content-type", "") or "text" in response.headers.get("content-type", ""):
            return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    except Exception:  # noqa: BLE001 - a body that cannot be read adds nothing
        pass
    return ""


def _with_retries(pacs: PacsConfig, service: str, call: Callable[[], object], sleep=time.sleep):
    """``call()`` with ``pacs.retries`` further attempts after a transient failure; raises DicomwebError."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - translated below
            err = _translate(pacs, service, exc)
            if err.kind not in ("unreachable", "timeout") or attempt >= pacs.retries:
                if attempt:
                    err.args = (f"{err.args[0]} (after {attempt + 1} attempts)",)
                raise err from None
            delay = pacs.retry_backoff_s * (2 ** attempt)
            log.info("%s; trying again in %.1f s", err, delay)
            sleep(delay)
            attempt += 1


# ------------------------------------------------------------------------------------------------ QIDO-RS

def _paged(pacs: PacsConfig, search: Callable[[int, int], list[dict]]) -> list[dict]:
    """All answers of a QIDO-RS search, ``page_size`` at a time (limit/offset) until a page comes back short."""
    out: list[dict] = []
    for page in range(MAX_PAGES):
        got = _with_retries(pacs, "QIDO-RS", lambda: search(pacs.page_size, len(out)))
        out.extend(got)
        if len(got) < pacs.page_size:
            return out
    raise DicomwebError(f"QIDO-RS from '{pacs.name}': more than {MAX_PAGES} pages of {pacs.page_size} answers "
                        f"(does the archive ignore offset?)", kind="failed")


def _datasets(answers: list[dict]) -> list[Dataset]:
    out = []
    for a in answers:
        try:
            out.append(Dataset.from_json(a))
        except Exception as exc:  # noqa: BLE001 - one malformed answer is skipped, the others kept
            log.warning("QIDO-RS: an answer that is not DICOM JSON was skipped (%s)", _first_line(exc))
    return out


def query_studies(cfg: NodeConfig, pacs: PacsConfig, current: StudySummary, *,
                  session: requests.Session | None = None) -> list[StudySummary]:
    """QIDO-RS ``/studies`` of the current patient on ``pacs`` (exact PatientID matches only); DicomwebError."""
    client = _client(pacs, session or session_for(pacs))
    filters = {"PatientID": current.patient.patient_id}
    if current.patient.issuer:
        filters["IssuerOfPatientID"] = current.patient.issuer

    def search(flt):
        return lambda limit, offset: client.search_for_studies(search_filters=dict(flt), fields=list(STUDY_FIELDS),
                                                               limit=limit, offset=offset)
    try:
        answers = _paged(pacs, search(filters))
    except DicomwebError as exc:
        if exc.http_status != 400 or "IssuerOfPatientID" not in filters:
            raise
        log.info("QIDO-RS on '%s' refused IssuerOfPatientID as a key (400): asking by PatientID alone", pacs.name)
        filters.pop("IssuerOfPatientID")
        answers = _paged(pacs, search(filters))
    out = []
    for ds in _datasets(answers):
        st = study_summary_of(ds, source=pacs.name)
        # an archive may ignore a key or match it loosely: keep exact PatientID matches only
        if st.study_uid and st.patient.patient_id == current.patient.patient_id:
            out.append(st)
    return out


def query_series(cfg: NodeConfig, pacs: PacsConfig, study: StudySummary, *,
                 session: requests.Session | None = None) -> list[SeriesSummary]:
    """QIDO-RS ``/studies/{study}/series`` on ``pacs``; DicomwebError."""
    client = _client(pacs, session or session_for(pacs))
    answers = _paged(pacs, lambda limit, offset: client.search_for_series(
        study_instance_uid=study.study_uid, fields=list(SERIES_FIELDS), limit=limit, offset=offset))
    return [series_summary_of(ds, n_instances=parse_is(ds.get("NumberOfSeriesRelatedInstances")) or 0)
            for ds in _datasets(answers) if ds.get("SeriesInstanceUID")]


# ------------------------------------------------------------------------------------------------ WADO-RS

def _store_into(sink) -> Callable[[bytes], None]:
    """How a Part 10 byte string reaches ``sink``: its ``store_part10(bytes)`` when it has one (the node's spool
    sink: the bytes as sent, the C-STORE path), else ``store(Dataset)``."""
    direct = getattr(sink, "store_part10", None)
    if callable(direct):
        return direct

    def via_dataset(data: bytes) -> None:
        sink.store(dcmread(BytesIO(data)))
    return via_dataset


def _check_uids(data: bytes, study_uid: str, series_uid: str) -> str:
    """The SOP Instance UID of a retrieved instance; ValueError when it is not of the study and series asked for."""
    ds = dcmread(BytesIO(data), stop_before_pixels=True,
                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    st, se = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    if st != study_uid or se != series_uid:
        raise ValueError(f"the archive sent an instance of study {st} series {se}, not of the series asked for")
    return str(ds.get("SOPInstanceUID", ""))


def retrieve_series(cfg: NodeConfig, pacs: PacsConfig, study_uid: str, series_uid: str, sink, *,
                    session: requests.Session | None = None, sleep=time.sleep) -> dimse.RetrieveResult:
    """WADO-RS of one series into ``sink`` (a :class:`node.priors.pacs.RetrieveSink`); DicomwebError.

    The whole retrieve may take at most ``pacs.timeout_s`` seconds; each instance is stored before the next one is
    read.  Returns a :class:`node.net.dimse.RetrieveResult` (``completed`` = instances stored)."""
    sink.expect(study_uid)
    http = session or session_for(pacs)
    store = _store_into(sink)
    url = f"{pacs.url.rstrip('/')}/studies/{study_uid}/series/{series_uid}"
    stored: set[str] = set()
    deadline = time.monotonic() + pacs.timeout_s

    def attempt() -> None:
        with http.get(url, headers={"Accept": WADO_ACCEPT}, stream=True) as r:
            if r.status_code >= 400:
                raise http_error(pacs, "WADO-RS", r.status_code, _body_text(r))
            media, _ = content_type_params(r.headers.get("content-type", ""))
            if media == "application/dicom":
                reader = None
            elif media.startswith("multipart/"):
                reader = MultipartReader(boundary_of(r.headers["content-type"]), max_part_bytes=MAX_INSTANCE_BYTES)
            else:
                raise DicomwebError(f"WADO-RS from '{pacs.name}' answered {media or 'no content type'}, not DICOM "
                                    f"(multipart/related or application/dicom)", kind="failed")
            single = bytearray()
            for chunk in r.iter_content(chunk_size=1024 * 1024):
                if time.monotonic() > deadline:
                    raise DicomwebError(f"WADO-RS from '{pacs.name}' did not finish within timeout_s "
                                        f"{pacs.timeout_s:g} s ({len(stored)} instances stored)", kind="timeout")
                if reader is None:
                    single += chunk
                    if len(single) > MAX_INSTANCE_BYTES:
                        raise DicomwebError(f"WADO-RS from '{pacs.name}': one instance over {MAX_INSTANCE_BYTES} "
                                            "bytes", kind="failed")
                    continue
                for part in reader.feed(chunk):
                    _take(part.data if not part.too_large else None, part.size)
            if reader is None:
                _take(bytes(single), len(single))
            else:
                reader.close()

    def _take(data: bytes | None, size: int) -> None:
        if data is None:
            raise DicomwebError(f"WADO-RS from '{pacs.name}': one instance over {MAX_INSTANCE_BYTES} bytes ({size})",
                                kind="failed")
        try:
            sop = _check_uids(data, study_uid, series_uid)
        except ValueError as exc:
            raise DicomwebError(f"WADO-RS from '{pacs.name}': {exc}", kind="failed") from None
        except Exception as exc:  # noqa: BLE001
            raise DicomwebError(f"WADO-RS from '{pacs.name}': a part is not DICOM ({_first_line(exc)})",
                                kind="failed") from None
        try:
            store(data)
        except OSError as exc:  # the spool refused it (disk full, index down): may pass
            raise DicomwebError(f"WADO-RS from '{pacs.name}': instance {sop} not stored: {exc}",
                                kind="unreachable") from None
        stored.add(sop)

    def guarded() -> None:
        try:
            attempt()
        except (MultipartError, BodyTooLarge) as exc:
            raise DicomwebError(f"WADO-RS from '{pacs.name}': the answer is not well-formed multipart ({exc})",
                                kind="unreachable") from None  # most often a connection cut mid-answer

    _with_retries(pacs, "WADO-RS", guarded, sleep=sleep)
    if not stored:
        raise DicomwebError(f"WADO-RS from '{pacs.name}' answered no instance of series {series_uid}",
                            kind="failed")
    return dimse.RetrieveResult(status=0, completed=len(stored), received=len(stored))


def check(pacs: PacsConfig, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Console peer check: one QIDO-RS ``/studies?limit=1``; (ok, plain message)."""
    pacs = pacs.model_copy(update={"retries": 0, "connect_timeout_s": timeout_s, "read_timeout_s": timeout_s})
    client = _client(pacs, session_for(pacs))
    try:
        _with_retries(pacs, "QIDO-RS", lambda: client.search_for_studies(limit=1))
    except DicomwebError as exc:
        return False, str(exc)
    return True, f"QIDO-RS answered ({pacs.url})"
