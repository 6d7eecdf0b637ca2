"""``kind: dicom`` — C-STORE SCU over one association (contexts from the files' SOP classes and transfer
syntaxes); every instance must be answered 0x0000 or a warning status. Check: C-ECHO."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from node.destinations import DestinationKind, Options
from node.net import dimse
from node.net.tls import client_context


class DicomOptions(Options):
    """A DICOM AE: its AE title, host and port; with ``tls: true`` associations run over TLS (TLS >= 1.2), the
    AE's certificate checked against ``host`` and ``ca_file`` (default: the system's CA store); ``cert_file`` and
    ``key_file`` (PEM) are the node's certificate, presented when the AE asks for one."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> "DicomOptions":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


def _peer(dest) -> dimse.Peer:
    ctx = client_context(dest if dest.cert_file else None, ca_file=dest.ca_file) if dest.tls else None
    return dimse.Peer(dest.ae_title or "", dest.host or "", int(dest.port or 0), name=dest.name, tls=ctx)


class Dicom(DestinationKind):
    """C-STORE to a DICOM AE."""

    name = "dicom"
    label = "DICOM (C-STORE)"
    check_action = "Echo"
    options = DicomOptions
    required = ("ae_title", "host", "port")

    def address(self, dest) -> str:
        """AE@host:port, and "over TLS" when it is."""
        return f"{dest.ae_title}@{dest.host}:{dest.port}" + (" over TLS" if dest.tls else "")

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        """One association, every file C-STOREd; instances acknowledged (DimseError on failure)."""
        return dimse.store(_peer(dest), calling_ae, files, timeout_s=timeout_s)

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        """C-ECHO."""
        try:
            status = dimse.echo(_peer(dest), calling_ae, timeout_s=timeout_s)
        except dimse.DimseError as exc:
            return False, str(exc)
        return status == 0, ("C-ECHO answered (success)" if status == 0
                             else f"C-ECHO answered {dimse.status_text(status)}")


KIND = Dicom()
