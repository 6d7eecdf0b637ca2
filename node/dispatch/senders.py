"""Send result files to one destination: ONE attempt, done only when every instance is acknowledged.

Kinds (``DestinationConfig.kind``):

- ``dicom``: C-STORE SCU over one association (contexts from the files' SOP classes and transfer syntaxes); every
  instance must be answered 0x0000 or a warning status.
- ``dicomweb``: STOW-RS, ``POST {url}/studies`` with ``multipart/related; type="application/dicom"``; every instance
  must appear in the response's ReferencedSOPSequence and none in FailedSOPSequence.
- ``orthanc``: Orthanc REST ``POST /instances`` through pyorthanc (``Success`` or ``AlreadyStored``).
- ``folder``: atomic copy (temporary name, fsync, rename, fsync of the folder) to
  ``{path}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``.

Retries, back-off and the 'dead' state belong to the dispatcher; :func:`send` raises :class:`SendError` with a plain
one-line message on any failure.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.net import dimse
from node.config import DestinationConfig

STOW_BATCH = 50  # instances per STOW-RS request


class SendError(RuntimeError):
    """One send attempt failed; the message says where and why in plain words."""

    user_message = True


@dataclass(frozen=True)
class SendReport:
    """Outcome of a successful attempt: files offered and instances acknowledged (equal on success)."""

    n_sent: int
    n_acked: int


def send(dest: DestinationConfig, files: list[Path], *, calling_ae: str, timeout_s: float = 120.0) -> SendReport:
    """Send ``files`` (DICOM Part 10) to ``dest`` in one attempt; return SendReport or raise SendError.

    ``calling_ae`` is the node's AE title (used for ``dicom`` destinations); ``timeout_s`` bounds each network wait.
    """
    files = [Path(f) for f in files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SendError(f"destination '{dest.name}': {len(missing)} result file(s) missing, e.g. {missing[0]}")
    if not files:
        return SendReport(0, 0)
    try:
        if dest.kind == "dicom":
            acked = _send_dicom(dest, files, calling_ae, timeout_s)
        elif dest.kind == "dicomweb":
            acked = _send_dicomweb(dest, files, timeout_s)
        elif dest.kind == "orthanc":
            acked = _send_orthanc(dest, files, timeout_s)
        elif dest.kind == "folder":
            acked = _send_folder(dest, files)
        else:  # pragma: no cover - config validation forbids it
            raise SendError(f"destination '{dest.name}': unknown kind {dest.kind!r}")
    except SendError:
        raise
    except dimse.DimseError as exc:
        raise SendError(f"destination '{dest.name}': {exc}") from None
    except httpx.HTTPError as exc:
        raise SendError(f"destination '{dest.name}' ({dest.url}) unreachable: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise SendError(f"destination '{dest.name}': {exc.strerror or exc} ({getattr(exc, 'filename', '')})") \
            from None
    if acked != len(files):
        raise SendError(f"destination '{dest.name}': only {acked} of {len(files)} instances acknowledged")
    return SendReport(n_sent=len(files), n_acked=acked)


# ------------------------------------------------------------------------------------------------------- dicom

def _send_dicom(dest: DestinationConfig, files: list[Path], calling_ae: str, timeout_s: float) -> int:
    peer = dimse.Peer(dest.ae_title or "", dest.host or "", int(dest.port or 0), name=dest.name)
    return dimse.store(peer, calling_ae, files, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------------- dicomweb

def _auth(dest: DestinationConfig):
    return (dest.username, dest.password or "") if dest.username else None


def _sop_uid(path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.SOPInstanceUID)


def _send_dicomweb(dest: DestinationConfig, files: list[Path], timeout_s: float) -> int:
    url = f"{dest.url.rstrip('/')}/studies"
    acked = 0
    with httpx.Client(timeout=timeout_s, auth=_auth(dest)) as http:
        for start in range(0, len(files), STOW_BATCH):
            batch = files[start:start + STOW_BATCH]
            boundary = uuid.uuid4().hex
            parts = []
            for f in batch:
                parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
                parts.append(f.read_bytes())
                parts.append(b"\r\n")
            parts.append(f"--{boundary}--\r\n".encode())
            headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                       "Accept": "application/dicom+json"}
            r = http.post(url, content=b"".join(parts), headers=headers)
            if r.status_code not in (200, 202):
                raise SendError(f"destination '{dest.name}': STOW-RS to {url} answered HTTP {r.status_code} "
                                f"{r.reason_phrase}: {r.text[:200].strip()}")
            wanted = {_sop_uid(f) for f in batch}
            ok, failed = _stow_response(r)
            bad = failed & wanted
            if bad:
                raise SendError(f"destination '{dest.name}': STOW-RS refused {len(bad)} of {len(batch)} instances")
            got = ok & wanted
            if got != wanted:
                raise SendError(f"destination '{dest.name}': STOW-RS acknowledged {len(got)} of {len(batch)} "
                                f"instances")
            acked += len(got)
    return acked


def _stow_response(r: httpx.Response) -> tuple[set[str], set[str]]:
    """(stored SOP Instance UIDs, failed SOP Instance UIDs) from a STOW-RS DICOM JSON response."""
    try:
        body = r.json()
    except ValueError:
        raise SendError(f"STOW-RS answered HTTP {r.status_code} without a DICOM JSON body") from None
    if isinstance(body, list):
        body = body[0] if body else {}
    ds = Dataset.from_json(body)

    def uids(keyword: str) -> set[str]:
        return {str(item.ReferencedSOPInstanceUID) for item in ds.get(keyword, [])
                if "ReferencedSOPInstanceUID" in item}

    return uids("ReferencedSOPSequence"), uids("FailedSOPSequence")


# ----------------------------------------------------------------------------------------------------- orthanc

def _send_orthanc(dest: DestinationConfig, files: list[Path], timeout_s: float) -> int:
    from pyorthanc import Orthanc

    client = Orthanc(dest.url.rstrip("/"), username=dest.username, password=dest.password, timeout=timeout_s)
    acked = 0
    for f in files:
        try:
            answer = client.post_instances(f.read_bytes())
        except httpx.HTTPStatusError as exc:
            raise SendError(f"destination '{dest.name}': Orthanc refused {f.name}: HTTP "
                            f"{exc.response.status_code} {exc.response.text[:200].strip()}") from None
        status = answer.get("Status") if isinstance(answer, dict) else None
        if status not in ("Success", "AlreadyStored"):
            raise SendError(f"destination '{dest.name}': Orthanc did not store {f.name} (status {status!r})")
        acked += 1
    return acked


# ------------------------------------------------------------------------------------------------------ folder

def folder_target(root: Path, ds: Dataset) -> Path:
    """Where the folder destination puts one instance: root/StudyUID/SeriesUID/SOPInstanceUID.dcm."""
    return Path(root) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _send_folder(dest: DestinationConfig, files: list[Path]) -> int:
    root = Path(dest.path)
    acked = 0
    for f in files:
        ds = dcmread(f, stop_before_pixels=True,
                     specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        target = folder_target(root, ds)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(f, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        acked += 1
    return acked
