"""DICOM TLS contexts built from ``node.tls`` (:class:`node.config.TlsSettings`), for the listener and for
outgoing associations (C-FIND/C-MOVE/C-GET to a PACS, C-STORE to a destination).

* :func:`server_context` — the listener's side: the node's certificate and key; with ``ca_file`` peers'
  certificates are verified against it (``require_client_cert: true`` makes one mandatory, otherwise a presented
  certificate must still verify); TLS 1.2 or newer.
* :func:`client_context` — the node as a client: trusts ``ca_file`` (else the system store), checks the peer's
  host name unless told not to, presents the node's certificate when the peer asks for one; TLS 1.2 or newer.

Problems with the files raise :class:`TlsConfigError` with one line naming the key and the file.
"""
from __future__ import annotations

import ssl
from pathlib import Path

from node.errors import UserError


class TlsConfigError(UserError, ValueError):
    """A TLS file cannot be used; the message names the node.tls key, the file and the reason."""


def _check_file(key: str, path: Path | str | None) -> Path:
    if path in (None, ""):
        raise TlsConfigError(f"node.tls.{key} is not set")
    p = Path(path)
    if not p.is_file():
        raise TlsConfigError(f"node.tls.{key} {p}: no such file")
    return p


def _load_chain(ctx: ssl.SSLContext, tls) -> None:
    cert = _check_file("cert_file", tls.cert_file)
    key = _check_file("key_file", tls.key_file)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"node.tls.cert_file {cert} / key_file {key}: cannot be used together "
                             f"({exc.reason or exc})") from None
    except OSError as exc:
        raise TlsConfigError(f"node.tls.cert_file {cert}: cannot be read ({exc.strerror or exc})") from None


def _load_ca(ctx: ssl.SSLContext, ca_file) -> None:
    ca = _check_file("ca_file", ca_file)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"node.tls.ca_file {ca}: not a PEM certificate bundle "
                             f"({getattr(exc, 'reason', None) or exc})") from None


def server_context(tls) -> ssl.SSLContext:
    """The listener's SSLContext from a :class:`node.config.TlsSettings` (TLS >= 1.2).

    ``require_client_cert`` → peers must present a certificate signed by ``ca_file`` (CERT_REQUIRED); with only
    ``ca_file`` a presented certificate must verify (CERT_OPTIONAL); with neither, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, tls)
    if tls.require_client_cert and not tls.ca_file:
        raise TlsConfigError("node.tls.require_client_cert needs node.tls.ca_file (the CA that signs the "
                             "modalities' certificates)")
    if tls.ca_file:
        _load_ca(ctx, tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls=None, *, ca_file: str | Path | None = None, check_hostname: bool = True
                   ) -> ssl.SSLContext:
    """An SSLContext for the node's outgoing associations (TLS >= 1.2, peer verified).

    ``ca_file`` (else ``tls.ca_file``, else the system store) is trusted; ``tls.cert_file``/``key_file`` are
    presented when set (peers that require client certificates); ``check_hostname`` compares the peer's
    certificate with the host name given to ``associate(..., tls_args=(ctx, hostname))``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    trust = ca_file or (tls.ca_file if tls is not None else None)
    if trust:
        _load_ca(ctx, trust)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls is not None and tls.cert_file:
        _load_chain(ctx, tls)
    return ctx
