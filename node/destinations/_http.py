"""What the HTTP kinds (dicomweb, orthanc) share: their options and the reachability check."""
from __future__ import annotations

import httpx

from node.destinations import Options


class HttpOptions(Options):
    """An HTTP service: its base URL and, for basic authentication, user name and password."""

    url: str | None = None
    username: str | None = None
    password: str | None = None


def auth(dest):
    """httpx basic-auth tuple, or None without a user name."""
    return (dest.username, dest.password or "") if dest.username else None


def check_http(dest, timeout_s: float) -> tuple[bool, str]:
    """GET the URL: reachable when it answers below HTTP 500 and does not refuse the credentials (401/403)."""
    url = dest.url
    try:
        r = httpx.get(url, timeout=timeout_s, auth=auth(dest))
    except httpx.HTTPError as exc:
        return False, f"cannot reach {url}: {exc.__class__.__name__}: {exc}"
    if r.status_code >= 500 or r.status_code in (401, 403):
        return False, f"{url} answered HTTP {r.status_code}"
    return True, f"{url} answered HTTP {r.status_code}"
