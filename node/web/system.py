"""Node health facts for the dashboard and /healthz: compute device, spool disk, peer reachability.

Peers are the configured destinations and PACS. DICOM peers are checked with a C-ECHO (``node.net.dimse.echo``);
DICOMweb / Orthanc destinations with an HTTP GET of their URL; folder destinations by checking the folder is
writable. Results are plain words.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

from node import destinations
from node.config import NodeConfig, PacsConfig
from node.net.dimse import DimseError, echo, status_text
from node.priors import dicomweb
from node.priors.pacs import pacs_peer


@functools.lru_cache(maxsize=1)
def compute_device() -> str:
    """'GPU (<name>)' when torch sees CUDA, else 'CPU (n cores)'. torch is imported lazily, once."""
    try:
        import torch
        if torch.cuda.is_available():
            return f"GPU ({torch.cuda.get_device_name(0)})"
    except Exception:  # torch missing or broken: the node still runs on CPU
        pass
    return f"CPU ({os.cpu_count() or 1} cores)"


@dataclass
class PeerCheck:
    """Result of checking one peer: ok, plain-words message, when (epoch seconds), round trip (s)."""

    ok: bool
    message: str
    at: float
    seconds: float


def peers(cfg: NodeConfig) -> list[tuple[str, str, str, str]]:
    """(kind, name, address, check button's word) of every configured PACS and destination; kind 'pacs' or
    'destination'. A destination's address and button come from its kind (:mod:`node.destinations`)."""
    out = [("pacs", p.name, f"dicomweb: {p.url}" if p.kind == "dicomweb"
            else f"{p.ae_title}@{p.host}:{p.port}" + (" over TLS" if p.tls else ""),
            "Check" if p.kind == "dicomweb" else "Echo") for p in cfg.pacs]
    for d in cfg.destinations:
        kind = destinations.get(d.kind)
        out.append(("destination", d.name, f"{d.kind}: {kind.address(d)}", kind.check_action))
    return out


def check_peer(cfg: NodeConfig, kind: str, name: str, timeout_s: float = 5.0) -> PeerCheck:
    """Check one PACS or destination now. KeyError when no such peer is configured."""
    t0 = time.monotonic()
    if kind == "pacs":
        p = next((p for p in cfg.pacs if p.name == name), None)
        if p is None:
            raise KeyError(name)
        if p.kind == "dicomweb":
            ok, msg = dicomweb.check(p, timeout_s)
        else:
            ok, msg = _echo(cfg, p, timeout_s)
    else:
        d = cfg.destination(name)
        ok, msg = destinations.get(d.kind).check(d, calling_ae=cfg.node.ae_title, timeout_s=timeout_s)
    return PeerCheck(ok, msg, time.time(), time.monotonic() - t0)


def _echo(cfg: NodeConfig, pacs: PacsConfig, timeout_s: float) -> tuple[bool, str]:
    try:  # building the peer reads its TLS files: a file that cannot be used is a failed check, said in words
        status = echo(pacs_peer(pacs), cfg.node.ae_title, timeout_s=timeout_s)
    except DimseError as exc:
        return False, str(exc)
    return status == 0, "C-ECHO answered (success)" if status == 0 else f"C-ECHO answered {status_text(status)}"
