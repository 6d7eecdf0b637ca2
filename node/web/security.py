"""Password hashing (scrypt), API and session token generation/hashing and CSRF tokens. Standard library only.

Password hashes are stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. API tokens are 32 random bytes
(``trn_`` + url-safe base64); only their SHA-256 is stored (a random token needs no slow hash). Console session
tokens are stored the same way.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_N, _R, _P, _DKLEN = 2 ** 14, 8, 1, 32
TOKEN_PREFIX = "trn_"


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in the self-describing text format above."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(dk).decode()])


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        scheme, n, r, p, salt_b64, dk_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(dk_b64)
        dk = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt_b64), n=int(n), r=int(r),
                            p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, expected)


def new_api_token() -> str:
    """A fresh random API token (shown once to the admin who creates it)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hex SHA-256 of an API token, as stored in the database."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_session_token() -> str:
    """A fresh random console session token (the cookie's value; only its SHA-256 is stored)."""
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    """A per-session CSRF token."""
    return secrets.token_urlsafe(32)


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens; False when either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def random_password() -> str:
    """A random password for the first admin (about 128 bits)."""
    return secrets.token_urlsafe(16)
