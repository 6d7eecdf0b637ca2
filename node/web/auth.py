"""Console users, API tokens and the request checks built on them (roles 'admin' and 'viewer').

* Console: a signed session cookie (Starlette ``SessionMiddleware``) holds the user name, role and a per-session
  CSRF token; every POST form carries the token in a hidden ``csrf_token`` field and is refused without it.
* REST API: ``Authorization: Bearer trn_...`` with a token an admin created (stored as SHA-256). A browser session
  may call the API too; its unsafe methods then need the ``X-CSRF-Token`` header.
* viewer: read-only. admin: edit rules, retry / cancel / re-send jobs, manage users and tokens.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import utcnow

from . import security
from .models import ApiToken, ConsoleUser

log = logging.getLogger(__name__)
ROLES = ("admin", "viewer")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a console user or an API token (``via`` 'session' or 'token')."""

    name: str
    role: str
    via: str

    @property
    def is_admin(self) -> bool:
        """True for the admin role."""
        return self.role == "admin"


# ------------------------------------------------------------------------------------------------ users, tokens

def create_user(session: Session, username: str, password: str, role: str = "viewer") -> ConsoleUser:
    """Add a console user (commits). ValueError on an unknown role, empty name/short password or a taken name."""
    username = username.strip()
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}' (admin or viewer)")
    if not username or len(username) > 64:
        raise ValueError("a user name is 1 to 64 characters")
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    if session.scalar(select(ConsoleUser).where(ConsoleUser.username == username)) is not None:
        raise ValueError(f"user '{username}' exists already")
    user = ConsoleUser(username=username, password_hash=security.hash_password(password), role=role)
    session.add(user)
    session.commit()
    return user


def authenticate(session: Session, username: str, password: str) -> ConsoleUser | None:
    """The active user with this name and password, else None (same work either way, against timing probes)."""
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username.strip()))
    if user is None or not user.active:
        security.verify_password(password, _DUMMY_HASH)
        return None
    return user if security.verify_password(password, user.password_hash) else None


def create_token(session: Session, name: str, role: str, created_by: str) -> tuple[ApiToken, str]:
    """Create an API token (commits); returns (row, the token text — shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}' (admin or viewer)")
    if not name.strip():
        raise ValueError("give the token a name (what uses it)")
    token = security.new_api_token()
    row = ApiToken(name=name.strip()[:128], token_hash=security.hash_token(token), role=role, created_by=created_by)
    session.add(row)
    session.commit()
    return row, token


def token_principal(session: Session, token: str) -> Principal | None:
    """The principal of a bearer token (and records its last use), or None when unknown or revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.hash_token(token)))
    if row is None or row.revoked:
        return None
    row.last_used_at = utcnow()
    session.commit()
    return Principal(f"token:{row.name}", row.role, "token")


_DUMMY_HASH = security.hash_password("not-a-password")


def ensure_admin(session: Session, username: str, password: str | None, data_dir: Path) -> str | None:
    """Make sure the configured admin user exists. With no configured password one is generated, written to
    ``data_dir/admin_password`` (mode 600) and printed once on stderr. Returns the generated password or None."""
    if session.scalar(select(ConsoleUser).where(ConsoleUser.username == username)) is not None:
        return None
    generated = None
    if password is None:
        path = Path(data_dir) / "admin_password"
        if path.exists():
            password = path.read_text(encoding="utf-8").strip()
        else:
            generated = password = security.random_password()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(password + "\n", encoding="utf-8")
            path.chmod(0o600)
            print(f"totalreg console: created user '{username}' with password {password} (also in {path})",
                  file=sys.stderr)
    user = ConsoleUser(username=username, password_hash=security.hash_password(password), role="admin")
    session.add(user)
    session.commit()
    log.info("console: created admin user '%s'", username)
    return generated


def secret_key(configured: str | None, data_dir: Path) -> str:
    """The session-signing key: configured, else generated once into ``data_dir/secret_key`` (mode 600)."""
    if configured:
        return configured
    path = Path(data_dir) / "secret_key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = security.random_password() + security.random_password()
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


class LoginThrottle:
    """Refuses sign-ins for a user name after ``max_failures`` wrong passwords within ``window_s`` seconds."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, username: str) -> float:
        """Seconds until this user name may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            q = self._fails.get(username.strip().lower())
            while q and now - q[0] > self.window_s:
                q.popleft()
            return self.window_s - (now - q[0]) if q and len(q) >= self.max_failures else 0.0

    def failed(self, username: str) -> None:
        """Record one wrong password."""
        with self._lock:
            self._fails.setdefault(username.strip().lower(), deque(maxlen=self.max_failures)).append(time.monotonic())

    def succeeded(self, username: str) -> None:
        """Forget the failures of a user who signed in."""
        with self._lock:
            self._fails.pop(username.strip().lower(), None)


# ------------------------------------------------------------------------------------------------ request checks

def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use)."""
    tok = request.session.get("csrf")
    if not tok:
        tok = request.session["csrf"] = security.new_csrf_token()
    return tok


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse (403) a state-changing request whose CSRF token does not match the session's."""
    if not security.same_token(request.session.get("csrf"), submitted):
        raise HTTPException(403, "the form expired or did not come from this console; reload the page and retry")


def session_principal(request: Request) -> Principal | None:
    """The logged-in console user, or None."""
    user, role = request.session.get("user"), request.session.get("role")
    return Principal(user, role, "session") if user and role in ROLES else None


def require_admin(p: Principal) -> None:
    """403 unless the principal is an admin."""
    if not p.is_admin:
        raise HTTPException(403, "this needs the admin role (you are signed in read-only)")
