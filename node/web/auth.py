"""Console users, API tokens and the request checks built on them (roles 'admin', 'viewer'; 'sender' tokens).

* Console: a server-side session (:mod:`node.web.sessions`, table ``console_sessions``); the cookie holds only a
  random token. The user's role is read from ``console_users`` on every request, so a demoted, deactivated or
  deleted user loses access at once; signing out deletes the session. Every POST form carries the session's CSRF
  token in a hidden ``csrf_token`` field and is refused without it.
* REST API: ``Authorization: Bearer trn_...`` with a token an admin created (stored as SHA-256). A browser session
  may call the API too; its unsafe methods then need the ``X-CSRF-Token`` header.
* sender (API tokens only): may store instances by STOW-RS (:mod:`node.web.stow`) and nothing else — no page, no
  other API call.
* viewer: read-only. admin: edit rules, retry / cancel / re-send jobs, manage users and tokens. Every user may change
  their own password (the old one is required).
* Sign-in throttle (:class:`LoginThrottle`): per client — address + user name, and address alone — so a stranger's
  wrong passwords never lock the admin out of their own machine; its table is bounded.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from node.store.db import utcnow

from . import security
from node.store.console import ApiToken, ConsoleSession, ConsoleUser

log = logging.getLogger(__name__)
ROLES = ("admin", "viewer")  # console users
TOKEN_ROLES = ("admin", "viewer", "sender")  # API tokens: 'sender' may only STOW-RS (node.web.stow)
MAX_USERNAME_CHARS = 64  # console_users.username
MAX_PASSWORD_CHARS = 1024
# request.scope keys shared with node.web.sessions (the session middleware)
PRINCIPAL_KEY, SIGN_IN_KEY, SIGN_OUT_KEY, SESSION_ID_KEY = ("totalreg.principal", "totalreg.sign_in",
                                                           "totalreg.sign_out", "totalreg.session_id")
OPEN_DB_SESSIONS_KEY = "totalreg.db_sessions"  # the request's database sessions (node.web.deps.db)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a console user or an API token (``via`` 'session' or 'token')."""

    name: str
    role: str
    via: str
    user_id: int | None = None  # the console user (None for an API token)

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
    too_long = len(username) > 4 * MAX_USERNAME_CHARS or len(password) > MAX_PASSWORD_CHARS
    username = username[:4 * MAX_USERNAME_CHARS].strip()
    too_long = too_long or len(username) > MAX_USERNAME_CHARS
    user = None if too_long else session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
    if user is None or not user.active:
        security.verify_password(password[:MAX_PASSWORD_CHARS], _DUMMY_HASH)
        return None
    return user if security.verify_password(password, user.password_hash) else None


def create_token(session: Session, name: str, role: str, created_by: str) -> tuple[ApiToken, str]:
    """Create an API token (commits); returns (row, the token text — shown once, never stored)."""
    if role not in TOKEN_ROLES:
        raise ValueError(f"unknown role '{role}' (admin, viewer or sender)")
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


def ensure_admin(session: Session, username: str, password: str | None, data_dir: Path,
                 show: Callable[[str], bool] | None = None) -> str | None:
    """Make sure the configured admin user exists; returns the password generated now, else None.

    With no configured password one is generated and only its scrypt hash is stored. It is shown once through
    ``show`` (default :func:`show_on_terminal`: the controlling terminal, never stderr/stdout, which a service
    manager keeps in its log); where there is no terminal the log says how to set a password with
    ``totalreg console passwd``. A plain-text ``data_dir/admin_password`` left by an older version is used once
    (when the user does not exist yet) and then deleted.
    """
    legacy = Path(data_dir) / "admin_password"
    exists = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username)) is not None
    generated = None
    if not exists:
        if password is None and legacy.exists():
            password = legacy.read_text(encoding="utf-8").strip()
        elif password is None:
            generated = password = security.random_password()
        session.add(ConsoleUser(username=username, password_hash=security.hash_password(password), role="admin"))
        session.commit()
        log.info("console: created admin user '%s'", username)
    if legacy.exists():
        legacy.unlink()
        log.warning("console: deleted %s (a plain-text password kept by an older version; only its hash is kept "
                    "now — change it on the console's Account page or with `totalreg console passwd`)", legacy)
    if generated is not None:
        shown = (show or show_on_terminal)(
            f"totalreg console: created user '{username}' with password {generated}\n"
            f"  (shown this once; only a hash is kept — change it on the console's Account page)\n")
        if not shown:
            log.warning("console: created user '%s' with a random password; there is no terminal to show it on, "
                        "so set one with `totalreg console passwd %s`", username, username)
    return generated


def show_on_terminal(text: str) -> bool:
    """Write ``text`` to the controlling terminal (``/dev/tty``), not to stdout/stderr (which a service manager
    keeps in its log). False when the process has no terminal."""
    try:
        with open("/dev/tty", "w", encoding="utf-8") as tty:
            tty.write(text)
    except OSError:
        return False
    return True


def set_password(session: Session, username: str, new_password: str) -> ConsoleUser:
    """Set a user's password (commits) and sign out all their sessions. ValueError: unknown user, short password."""
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username.strip()))
    if user is None:
        raise ValueError(f"there is no console user '{username.strip()}'")
    _check_new_password(new_password)
    user.password_hash = security.hash_password(new_password)
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    session.commit()
    return user


def change_password(session: Session, user_id: int, old_password: str, new_password: str,
                    keep_session: int | None = None) -> ConsoleUser:
    """A user changes their own password (commits): the old one must be right. Their other sessions are signed
    out (all but ``keep_session``, a ``console_sessions.id``). Raises :class:`WrongPassword` for a wrong old
    password and ValueError for an unusable new one."""
    user = session.get(ConsoleUser, user_id)
    if user is None or not user.active:
        raise ValueError("this user no longer exists")
    if not security.verify_password(old_password, user.password_hash):
        raise WrongPassword("the current password is wrong")
    _check_new_password(new_password)
    if new_password == old_password:
        raise ValueError("the new password is the same as the current one")
    user.password_hash = security.hash_password(new_password)
    q = delete(ConsoleSession).where(ConsoleSession.user_id == user.id)
    if keep_session is not None:
        q = q.where(ConsoleSession.id != keep_session)
    session.execute(q)
    session.commit()
    return user


class WrongPassword(ValueError):
    """The old password given to :func:`change_password` is wrong."""


def _check_new_password(password: str) -> None:
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"a password has at most {MAX_PASSWORD_CHARS} characters")


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
    """Sign-in throttle per client, with a bounded table.

    A client is an address and a user name: after ``max_failures`` wrong passwords for one user name from one
    address within ``window_s`` seconds, that address must wait (HTTP 429) until the oldest of them is
    ``window_s`` old; after ``max_per_address`` wrong passwords from one address for any user names, that address
    waits for every user name. Other addresses are never affected, so a stranger cannot lock the admin out of
    their own machine. IPv6 addresses count per /64 (one host's whole prefix). User names are cut to
    ``MAX_USERNAME_CHARS`` before they are kept, and the table keeps at most ``max_entries`` keys (least
    recently failed dropped first), so hostile requests cannot grow memory.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, max_per_address: int = 20,
                 max_entries: int = 4096):
        self.max_failures, self.window_s, self.max_per_address = max_failures, window_s, max_per_address
        self.max_entries = max_entries
        self._fails: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _keys(address: str, username: str) -> tuple[tuple[str, str], tuple[str, str]]:
        try:
            ip = ipaddress.ip_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            addr = str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)
        except ValueError:
            addr = str(address)[:64]
        name = username[:4 * MAX_USERNAME_CHARS].strip().lower()[:MAX_USERNAME_CHARS]  # cut before any copy
        return (addr, name), (addr, "")

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._fails.get(key, ()) if now - t < self.window_s]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def wait_s(self, address: str, username: str) -> float:
        """Seconds until this client (address, user name) may try again (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key, limit in zip(self._keys(address, username), (self.max_failures, self.max_per_address)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = max(wait, self.window_s - (now - times[-limit]))
        return wait

    def failed(self, address: str, username: str) -> None:
        """Record one wrong password from this client."""
        now = time.monotonic()
        with self._lock:
            for key, limit in zip(self._keys(address, username), (self.max_failures, self.max_per_address)):
                times = self._recent(key, now)
                self._fails[key] = (times + [now])[-limit:]
                self._fails.move_to_end(key)
            while len(self._fails) > self.max_entries:
                self._fails.popitem(last=False)

    def succeeded(self, address: str, username: str) -> None:
        """Forget this client's failures for this user name (the address's own count stays)."""
        with self._lock:
            self._fails.pop(self._keys(address, username)[0], None)

    def __len__(self) -> int:
        """Keys held (at most ``max_entries``)."""
        return len(self._fails)


def client_address(request: Request) -> str:
    """The caller's address as the server saw it (uvicorn applies X-Forwarded-For only from trusted proxies)."""
    return request.client.host if request.client else "unknown"


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
    """The signed-in console user (name and role as read from the database for this request), or None."""
    return request.scope.get(PRINCIPAL_KEY)


def sign_in(request: Request, user: ConsoleUser) -> None:
    """Start a new server-side session for ``user`` when this response goes out (a new token: any session the
    request came with ends)."""
    request.session.clear()
    request.scope[SIGN_IN_KEY] = user.id
    request.scope[PRINCIPAL_KEY] = Principal(user.username, user.role, "session", user.id)
    csrf_token(request)


def sign_out(request: Request) -> None:
    """End the request's session: its row is deleted, so the cookie stops working everywhere at once."""
    request.session.clear()
    request.scope[SIGN_OUT_KEY] = True
    request.scope.pop(PRINCIPAL_KEY, None)


def require_admin(p: Principal) -> None:
    """403 unless the principal is an admin."""
    if not p.is_admin:
        raise HTTPException(403, "this needs the admin role (you are signed in read-only)")
