"""Logging of the node's processes: one line per event, UIDs and job ids only.

Patient names and IDs never appear in logs unless ``logging.phi_in_logs: true``, and then only in DEBUG records
(use :func:`phi` to wrap such values).  pynetdicom's own per-PDU chatter is kept at WARNING.
"""
from __future__ import annotations

import logging
import sys

_PHI_ALLOWED = False
FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def configure(settings=None, verbose: bool = False, tag: str = "") -> None:
    """Configure the root logger from a :class:`node.config.LoggingSettings` (None: INFO, no PHI); ``tag`` names
    the process in every line (e.g. ``receiver-1234`` for a receiver process)."""
    global _PHI_ALLOWED
    level = logging.DEBUG if verbose else logging.getLevelName(settings.level if settings else "INFO")
    _PHI_ALLOWED = bool(settings and settings.phi_in_logs) and level <= logging.DEBUG
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
    for h in root.handlers:
        h.setFormatter(logging.Formatter(FORMAT.replace("%(threadName)s", f"{tag} %(threadName)s") if tag else FORMAT))
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def phi_allowed() -> bool:
    """True when patient identifiers may be logged (DEBUG + logging.phi_in_logs)."""
    return _PHI_ALLOWED


def phi(value: object) -> str:
    """``value`` when PHI logging is on (DEBUG + logging.phi_in_logs), else a placeholder."""
    return str(value) if _PHI_ALLOWED else "<phi hidden>"
