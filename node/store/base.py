"""The declarative base every table of the node database lives on, and the timestamp convention (naive UTC)."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> _dt.datetime:
    """Current time as a naive UTC datetime (the convention of every timestamp column)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the node's tables (the web console may add its own tables to this metadata)."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}
