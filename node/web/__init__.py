"""Web console, REST API and Prometheus metrics of the node (FastAPI + Jinja2).

``from node.web import create_app, serve_in_thread`` — see :mod:`node.web.app`. Loaded lazily, so that workers can
use :mod:`node.route.rules_store` (the rules in force) without importing FastAPI.
"""
from __future__ import annotations

__all__ = ["create_app", "serve_in_thread"]


def __getattr__(name: str):
    if name in __all__:
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'node.web' has no attribute {name!r}")
