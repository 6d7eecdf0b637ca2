"""Test certificates made at run time with ``cryptography``: a CA, a server certificate for 127.0.0.1/localhost,
client certificates signed by that CA or by an unrelated ("rogue") CA, and ssl.SSLContext builders for clients.

All keys are EC P-256; certificates are valid from one hour ago for one day.  Files are PEM, keys unencrypted
(mode 0600).
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pair:
    """A certificate and its key on disk (PEM)."""

    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TotalRegistrator tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key) -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    c, k = folder / f"{stem}.crt", folder / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(k, 0o600)
    return Pair(c, k)


class CA:
    """A self-signed certificate authority that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str = "Test CA"):
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pair = _write(folder, name.replace(" ", "_").lower(), self.cert, self.key)

    def issue(self, stem: str, cn: str, *, server: bool, client_too: bool = False) -> Pair:
        """A leaf certificate (server: SAN 127.0.0.1 + localhost, serverAuth, and clientAuth with ``client_too``,
        as a PACS that is both SCP and SCU presents; else clientAuth)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_too else [])
                  if server else [ExtendedKeyUsageOID.CLIENT_AUTH])
        now = _dt.datetime.now(_dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return _write(self.folder, stem, b.sign(self.key, hashes.SHA256()), key)


def client_context(trust: Path | None, client: Pair | None = None) -> ssl.SSLContext:
    """A client-side context that verifies the server against ``trust`` (None: no verification) and presents
    ``client`` (optional)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trust) if trust else None)
    if trust is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx
