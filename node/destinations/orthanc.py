"""``kind: orthanc`` — Orthanc's REST API: ``POST /instances`` per file through pyorthanc (``Success`` or
``AlreadyStored``). Check: GET the URL."""
from __future__ import annotations

from pathlib import Path

import httpx
from pyorthanc import Orthanc

from node.destinations import DestinationKind, SendError
from node.destinations._http import HttpOptions, check_http


class OrthancRest(DestinationKind):
    """Orthanc's REST API."""

    name = "orthanc"
    label = "Orthanc (REST)"
    options = HttpOptions
    required = ("url",)

    def address(self, dest) -> str:
        """Orthanc's URL."""
        return dest.url or ""

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        """Each file POSTed; instances Orthanc stored (SendError on the first it refuses)."""
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

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        """GET Orthanc's URL."""
        return check_http(dest, timeout_s)


KIND = OrthancRest()
