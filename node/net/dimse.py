"""Shared DICOM network SCU helpers (pynetdicom): C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE with timeouts.

Every helper opens one association, does its job, releases it, and raises :class:`DimseError` with a plain one-line
message (which peer, what went wrong, the DICOM status in hex) when the peer is unreachable, rejects the association
or answers with a failure status. No helper logs patient data.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from node.errors import UserError
from node.net import reactor_pause

log = logging.getLogger(__name__)

#: statuses that mean "this instance/sub-operation was accepted" (success and the C-STORE warning codes)
STORE_OK = {0x0000, 0xB000, 0xB007, 0xB006}

_STATUS_TEXT = {
    0xA700: "out of resources",
    0xA701: "out of resources (unable to calculate number of matches)",
    0xA702: "out of resources (unable to perform sub-operations)",
    0xA801: "move destination unknown to the PACS (add the node's AE title to the PACS's list of DICOM nodes)",
    0xA900: "identifier does not match SOP class",
    0xC000: "unable to process",
    0xFE00: "cancelled",
    0xB000: "sub-operations completed with one or more failures",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0110: "processing failure",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
}

#: storage SOP classes the node accepts over C-GET (the prior is a CT)
GET_STORAGE_CLASSES = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
                       SecondaryCaptureImageStorage)


class DimseError(UserError, RuntimeError):
    """A DICOM network operation failed; the message says which peer and why, in plain words."""

    def __init__(self, message: str, *, status: int | None = None, kind: str = "failed") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # 'unreachable' | 'rejected' | 'timeout' | 'status' | 'failed'


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity: AE title, host, TCP port; ``name`` is for messages only. With ``tls`` (a
    client SSLContext, :func:`node.net.tls.client_context`) associations to it run over TLS, its certificate
    checked against ``host``."""

    ae_title: str
    host: str
    port: int
    name: str = ""
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        label = f"'{self.name}' " if self.name else ""
        return f"{label}({self.ae_title}@{self.host}:{self.port})"


@dataclass
class RetrieveResult:
    """Outcome of a C-MOVE or C-GET: final status and sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_uids: list[str] = field(default_factory=list)
    received: int = 0  # C-GET: instances stored by our handler

    @property
    def ok(self) -> bool:
        """True when the retrieve finished with success and no failed sub-operation."""
        return self.status in (0x0000,) and self.failed == 0


def status_text(status: int | None) -> str:
    """Plain words for a DIMSE status code (e.g. 0xA801 -> 'move destination unknown ...')."""
    if status is None:
        return "no status"
    text = _STATUS_TEXT.get(status)
    if text is None:
        if 0xA000 <= status <= 0xAFFF:
            text = "refused"
        elif 0xC000 <= status <= 0xCFFF:
            text = "unable to process"
        else:
            text = "failure"
    return f"0x{status:04X} {text}"


def make_ae(calling_ae: str, timeout_s: float = 30.0) -> AE:
    """An AE with acse/dimse/network/connection timeouts set to ``timeout_s`` seconds."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    return ae


def _associate(ae: AE, peer: Peer, what: str, **kwargs):
    reactor_pause.install()  # a send_*() always gets its own response (node.net.reactor_pause)
    if peer.tls is not None:
        kwargs["tls_args"] = (peer.tls, peer.host)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DimseError(f"{what}: cannot reach {peer}: {exc}", kind="unreachable") from None
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise DimseError(f"{what}: {peer} rejected the association (check the AE titles configured on both sides)",
                         kind="rejected")
    if peer.tls is not None:
        raise DimseError(f"{what}: cannot reach {peer} over TLS (connection refused or timed out, or the TLS "
                         f"handshake failed: check the peer's certificate against ca_file, and client_cert/client_key "
                         f"if it requires one)", kind="unreachable")
    raise DimseError(f"{what}: cannot reach {peer} (connection refused, timed out or aborted)", kind="unreachable")


def _check_alive(assoc, peer: Peer, what: str) -> None:
    if assoc.is_aborted:
        raise DimseError(f"{what}: {peer} aborted the association", kind="failed")


def echo(peer: Peer, calling_ae: str, timeout_s: float = 10.0) -> int:
    """C-ECHO ``peer``; return the status (0x0000) or raise DimseError."""
    ae = make_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer, "C-ECHO")
    try:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise DimseError(f"C-ECHO: no answer from {peer} within {timeout_s:.0f} s", kind="timeout")
        return int(status.Status)
    finally:
        assoc.release()


def find(peer: Peer, calling_ae: str, identifier: Dataset, *, timeout_s: float = 60.0,
         model: str = "study") -> list[Dataset]:
    """C-FIND with ``identifier`` (QueryRetrieveLevel set by the caller); return the pending identifiers.

    ``model``: 'study' (Study Root) or 'patient' (Patient Root). Raises DimseError on failure status or no answer.
    """
    sop = StudyRootQueryRetrieveInformationModelFind if model == "study" else \
        PatientRootQueryRetrieveInformationModelFind
    ae = make_ae(calling_ae, timeout_s)
    ae.add_requested_context(sop)
    what = f"C-FIND ({identifier.get('QueryRetrieveLevel', '?')} level)"
    assoc = _associate(ae, peer, what)
    out: list[Dataset] = []
    try:
        final = None
        for status, ident in assoc.send_c_find(identifier, sop):
            if not status or "Status" not in status:
                raise DimseError(f"{what}: no answer from {peer} within {timeout_s:.0f} s", kind="timeout")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if ident is not None:
                    out.append(ident)
                continue
            final = code
        _check_alive(assoc, peer, what)
        if final not in (0x0000, None):
            raise DimseError(f"{what}: {peer} answered {status_text(final)}", status=final, kind="status")
        return out
    finally:
        if assoc.is_established:
            assoc.release()


def _retrieve_result(responses, peer: Peer, what: str, timeout_s: float) -> RetrieveResult:
    res = RetrieveResult(status=0xFFFF)
    for status, ident in responses:
        if not status or "Status" not in status:
            raise DimseError(f"{what}: no answer from {peer} within {timeout_s:.0f} s", kind="timeout")
        code = int(status.Status)
        res.completed = int(status.get("NumberOfCompletedSuboperations", res.completed) or 0)
        res.failed = int(status.get("NumberOfFailedSuboperations", res.failed) or 0)
        res.warning = int(status.get("NumberOfWarningSuboperations", res.warning) or 0)
        res.remaining = int(status.get("NumberOfRemainingSuboperations", 0) or 0)
        if code in (0xFF00,):
            continue
        res.status = code
        if ident is not None and "FailedSOPInstanceUIDList" in ident:
            v = ident.FailedSOPInstanceUIDList
            res.failed_uids = [str(v)] if isinstance(v, str) else [str(u) for u in v]
    return res


def _retrieve_identifier(study_uid: str, series_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    return ds


def move(peer: Peer, calling_ae: str, destination_ae: str, study_uid: str, series_uid: str | None = None, *,
         timeout_s: float = 600.0) -> RetrieveResult:
    """C-MOVE a study (or one series of it) from ``peer`` to ``destination_ae``; wait for the final status.

    Returns the final status with completed/failed/warning counts; raises DimseError when the peer is unreachable,
    stops answering for ``timeout_s`` seconds, or ends with a failure status (message names e.g. 0xA801).
    """
    ae = make_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    what = f"C-MOVE to {destination_ae}"
    assoc = _associate(ae, peer, what)
    try:
        res = _retrieve_result(
            assoc.send_c_move(_retrieve_identifier(study_uid, series_uid), destination_ae,
                              StudyRootQueryRetrieveInformationModelMove), peer, what, timeout_s)
        _check_alive(assoc, peer, what)
    finally:
        if assoc.is_established:
            assoc.release()
    _raise_on_retrieve_failure(res, peer, what)
    return res


def get(peer: Peer, calling_ae: str, study_uid: str, series_uid: str | None, store: Callable[[Dataset], None], *,
        timeout_s: float = 600.0, storage_classes: Iterable[str] = GET_STORAGE_CLASSES) -> RetrieveResult:
    """C-GET a study (or one series) from ``peer``; each received instance is passed to ``store(dataset)``
    (with ``file_meta`` set) on the same association (SCP role). A ``store`` that raises makes that sub-operation
    fail (0xA700). Raises DimseError like :func:`move`."""
    ae = make_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for uid in storage_classes:
        ae.add_requested_context(uid)
        roles.append(build_role(uid, scp_role=True))
    received = [0]

    def handle_store(event):
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            store(ds)
        except Exception as exc:  # noqa: BLE001 - report as an out-of-resources status, never crash the assoc
            log.warning("C-GET: could not store a received instance: %s", exc)
            return 0xA700
        received[0] += 1
        return 0x0000

    what = "C-GET"
    assoc = _associate(ae, peer, what, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        res = _retrieve_result(
            assoc.send_c_get(_retrieve_identifier(study_uid, series_uid), StudyRootQueryRetrieveInformationModelGet),
            peer, what, timeout_s)
        _check_alive(assoc, peer, what)
    finally:
        if assoc.is_established:
            assoc.release()
    res.received = received[0]
    _raise_on_retrieve_failure(res, peer, what)
    return res


def _raise_on_retrieve_failure(res: RetrieveResult, peer: Peer, what: str) -> None:
    if res.status == 0xFFFF:
        raise DimseError(f"{what}: {peer} ended without a final status", kind="failed")
    if res.status == 0xB000 or (res.status == 0x0000 and res.failed):
        raise DimseError(f"{what}: {peer} finished with {res.failed} failed and {res.completed} completed "
                         f"sub-operations", status=res.status, kind="status")
    if res.status != 0x0000:
        raise DimseError(f"{what}: {peer} answered {status_text(res.status)}", status=res.status, kind="status")


def store(peer: Peer, calling_ae: str, files: list[Path], *, timeout_s: float = 120.0) -> int:
    """C-STORE every file on ONE association; presentation contexts come from the files' SOP classes and transfer
    syntaxes. Returns the number of instances acknowledged (0x0000 or a warning status); raises DimseError unless
    every instance was acknowledged."""
    if not files:
        return 0
    contexts: dict[str, set[str]] = {}
    for f in files:
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a plain error
            raise DimseError(f"C-STORE: cannot read {f}: {exc}", kind="failed") from None
        sop = ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
        ts = ds.file_meta.get("TransferSyntaxUID")
        if not sop or not ts:
            raise DimseError(f"C-STORE: {f} has no SOP class or transfer syntax in its file meta", kind="failed")
        contexts.setdefault(str(sop), set()).add(str(ts))
    if len(contexts) > 64:
        raise DimseError(f"C-STORE: {len(contexts)} different SOP classes in one send (at most 64)", kind="failed")
    ae = make_ae(calling_ae, timeout_s)
    for sop, tss in contexts.items():
        # one context per (class, syntax) so the peer can accept the syntax each file actually has
        for ts in sorted(tss):
            ae.add_requested_context(sop, [ts])
    what = f"C-STORE of {len(files)} instances"
    assoc = _associate(ae, peer, what)
    acked = 0
    try:
        for f in files:
            ds = dcmread(f)
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                _check_alive(assoc, peer, what)
                raise DimseError(f"{what}: no answer from {peer} within {timeout_s:.0f} s after {acked} "
                                 f"acknowledged", kind="timeout")
            code = int(status.Status)
            if code in STORE_OK:
                acked += 1
            else:
                raise DimseError(f"{what}: {peer} refused {Path(f).name} ({ds.SOPClassUID.name}) with "
                                 f"{status_text(code)}; {acked} acknowledged before", status=code, kind="status")
    except ValueError as exc:  # no accepted presentation context for a file
        raise DimseError(f"{what}: {peer} accepts none of the offered transfer syntaxes: {exc}",
                         kind="rejected") from None
    finally:
        if assoc.is_established:
            assoc.release()
    return acked
