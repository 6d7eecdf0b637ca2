"""Send result files to one destination: ONE attempt, done only when every instance is acknowledged.

The kinds (``DestinationConfig.kind``: dicom, dicomweb, orthanc, folder, or any other module of
:mod:`node.destinations`) do the sending; this module checks the files, turns a kind's network and file errors into
one :class:`SendError` with a plain one-line message, and insists that every instance was acknowledged.
Retries, back-off and the 'dead' state belong to the dispatcher.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from node import destinations
from node.config import DestinationConfig
from node.destinations import SendError
from node.net import dimse

__all__ = ["SendError", "SendReport", "send"]


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
    kind = destinations.get(dest.kind)
    try:
        acked = kind.send(dest, files, calling_ae=calling_ae, timeout_s=timeout_s)
    except SendError:
        raise
    except dimse.DimseError as exc:
        raise SendError(f"destination '{dest.name}': {exc}") from None
    except httpx.HTTPError as exc:
        raise SendError(f"destination '{dest.name}' ({kind.address(dest)}) unreachable: "
                        f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise SendError(f"destination '{dest.name}': {exc.strerror or exc} ({getattr(exc, 'filename', '')})") \
            from None
    if acked != len(files):
        raise SendError(f"destination '{dest.name}': only {acked} of {len(files)} instances acknowledged")
    return SendReport(n_sent=len(files), n_acked=acked)
