"""``kind: dicomweb`` — STOW-RS: ``POST {url}/studies`` with ``multipart/related; type="application/dicom"``, in
batches of :data:`STOW_BATCH`; every instance must appear in the response's ReferencedSOPSequence and none in
FailedSOPSequence. Check: GET the URL."""
from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.destinations import DestinationKind, SendError
from node.destinations._http import HttpOptions, auth, check_http

STOW_BATCH = 50  # instances per STOW-RS request


def _sop_uid(path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.SOPInstanceUID)


def stow_response(r: httpx.Response) -> tuple[set[str], set[str]]:
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


class DicomWeb(DestinationKind):
    """STOW-RS to a DICOMweb server."""

    name = "dicomweb"
    label = "DICOMweb (STOW-RS)"
    options = HttpOptions
    required = ("url",)

    def address(self, dest) -> str:
        """The service root URL."""
        return dest.url or ""

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        """STOW-RS in batches; instances acknowledged (SendError when one is refused or not acknowledged)."""
        url = f"{dest.url.rstrip('/')}/studies"
        acked = 0
        with httpx.Client(timeout=timeout_s, auth=auth(dest)) as http:
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
                ok, failed = stow_response(r)
                bad = failed & wanted
                if bad:
                    raise SendError(f"destination '{dest.name}': STOW-RS refused {len(bad)} of {len(batch)} "
                                    "instances")
                got = ok & wanted
                if got != wanted:
                    raise SendError(f"destination '{dest.name}': STOW-RS acknowledged {len(got)} of {len(batch)} "
                                    f"instances")
                acked += len(got)
        return acked

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        """GET the service root."""
        return check_http(dest, timeout_s)


KIND = DicomWeb()
