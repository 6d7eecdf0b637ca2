"""The console's own tables: console users, API tokens, signed-in sessions and versioned routing-rule documents.

They live on the node database's declarative ``Base`` (``node.store.base.Base``), so one
``create_all`` (``node.store.db.Database.create_all``) makes every table (node.store.db imports this module).
:func:`create_tables` creates only these tables (idempotent). Times are naive UTC, like every node.db column.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from node.store.base import Base, utcnow


class ConsoleUser(Base):
    """A person who logs into the console. role: 'admin' (may change things) or 'viewer' (read-only)."""

    __tablename__ = "console_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="viewer")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ApiToken(Base):
    """A REST API bearer token; only its SHA-256 is stored. role: 'admin' or 'viewer'."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="viewer")
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class ConsoleSession(Base):
    """A signed-in console session (server side; the cookie holds only a random token whose SHA-256 is kept here).

    Deleting the row signs the session out everywhere at once. ``data`` is the session's JSON (flash messages, the
    job filter — patient data stays here, never in the cookie); the user's role is read from ``console_users`` on
    every request, not kept here. A session ends at ``expires_at`` or after the configured idle time.
    """

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    data: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)


class RuleVersion(Base):
    """One saved version of the routing rules (a YAML list, as edited in the console). Highest version wins."""

    __tablename__ = "rule_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    author: Mapped[str] = mapped_column(String(64), nullable=False)
    comment: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


CONSOLE_TABLES = [ConsoleUser.__table__, ApiToken.__table__, ConsoleSession.__table__, RuleVersion.__table__]


def create_tables(engine) -> None:
    """Create the console's tables in ``engine``'s database if they do not exist."""
    Base.metadata.create_all(engine, tables=CONSOLE_TABLES, checkfirst=True)
