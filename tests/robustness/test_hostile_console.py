"""The web console against hostile and careless clients (issue 15, point 6), over real sockets on loopback.

The console runs in uvicorn on 127.0.0.1 (as ``totalreg serve`` runs it); clients connect from distinct loopback
addresses (127.0.0.2, 127.0.0.3: a stranger's machine) with httpx. One test per finding:

* a stranger's wrong passwords from another address do not lock the admin out (throttle per address + user name);
* 40 sign-ins with 0.9 MB user names do not grow the process (user names cut before they are kept, bounded table);
* a session cookie stops working at sign-out; the role is read from the database on every request; sessions expire;
* the job filter (patient name / ID) is in no cookie;
* cookies are HttpOnly + SameSite, and Secure behind TLS (https via a trusted proxy, or ``web.secure_cookies``);
* the generated admin password is shown once on the terminal, never in the service log nor in plain text on disk;
* every user can change their password (old one required), on a page and through the API;
* out-of-range ids in URLs give 404/422, never a 500.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from tools import free_port

from .support import write_figures

ADMIN_PASSWORD = "admin-pass-0451"
ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **web):
    from node.config import NodeConfig
    return NodeConfig.model_validate({
        "node": {"data_dir": str(tmp_path / "var")},
        "web": {"admin_user": "admin", "admin_password": ADMIN_PASSWORD, "secret_key": "k" * 32, **web},
        "destinations": [{"name": "local", "kind": "folder", "path": str(tmp_path / "out")}],
        "rules": [{"name": "ct-followup", "send_to": ["local"]}]})


class Console:
    """A console served by uvicorn on 127.0.0.1:port, its database and app."""

    def __init__(self, tmp_path: Path, **web):
        from node.store.db import Database
        from node.web.app import create_app, serve_in_thread
        self.cfg = _cfg(tmp_path, **web)
        self.db = Database(self.cfg.node.database_url())
        self.app = create_app(self.cfg, self.db, data_dir=self.cfg.node.data_dir)
        self.port = free_port()
        self.server, self.thread = serve_in_thread(self.app, "127.0.0.1", self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, source: str = "127.0.0.1", **kw) -> httpx.Client:
        """An HTTP client connecting from the loopback address ``source``."""
        return httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(local_address=source),
                            follow_redirects=False, timeout=30, **kw)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.db.dispose()


@pytest.fixture
def console(tmp_path):
    c = Console(tmp_path)
    yield c
    c.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def sign_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token})


def add_user(console: Console, name: str, password: str, role: str) -> None:
    from node.web.auth import create_user
    with console.db.session() as s:
        create_user(s, name, password, role)


# ------------------------------------------------------------------------------------------------ throttle

def test_strangers_wrong_passwords_do_not_lock_the_admin_out(console):
    with console.client("127.0.0.2") as stranger:
        codes = [sign_in(stranger, "admin", f"guess-{i}").status_code for i in range(12)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the stranger is throttled ...
        r = sign_in(stranger, "admin", ADMIN_PASSWORD)
        assert r.status_code == 429 and "Too many wrong passwords" in r.text  # ... even with the right password
        figures = {"stranger_wrong_passwords": len(codes), "stranger_401_before_429": codes.count(401),
                   "stranger_right_password_status": r.status_code}
    with console.client("127.0.0.1") as admin:  # ... but the admin at their own machine is not
        r = sign_in(admin, "admin", ADMIN_PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "Dashboard" in admin.get("/").text
        figures["admin_sign_in_status"] = r.status_code
    with console.client("127.0.0.3") as sprayer:  # one address trying many user names: 20 per window
        codes = [sign_in(sprayer, f"user{i}", "guess").status_code for i in range(25)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        figures["one_address_many_names_401_before_429"] = codes.count(401)
    write_figures("hostile_console_lockout_ci", figures)


_SERVE = """
import sys
from node.config import NodeConfig
from node.store.db import Database
from node.web.app import create_app, serve_in_thread
cfg = NodeConfig.model_validate({"node": {"data_dir": sys.argv[1]},
                                 "web": {"admin_password": sys.argv[3], "secret_key": "k" * 32}})
server, thread = serve_in_thread(create_app(cfg, Database(cfg.node.database_url()), data_dir=sys.argv[1]),
                                 "127.0.0.1", int(sys.argv[2]))
print("ready", flush=True)
thread.join()
"""


def test_huge_user_names_do_not_grow_memory(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(tmp_path / "var"), str(port), ADMIN_PASSWORD],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert server.stdout.readline().strip() == b"ready"

        def server_rss() -> int:
            with open(f"/proc/{server.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          transport=httpx.HTTPTransport(local_address="127.0.0.2")) as stranger:
            token = csrf_of(stranger.get("/login").text)

            def attempt() -> tuple[int, int]:
                name = secrets.token_hex(8) + "x" * 900_000
                r = stranger.post("/login", data={"username": name, "password": "p", "csrf_token": token})
                return r.status_code, len(r.content)
            answers = [attempt() for _ in range(3)]  # warm-up
            time.sleep(0.3)
            before = server_rss()
            answers += [attempt() for _ in range(40)]
            time.sleep(0.3)
            grown = server_rss() - before
            write_figures("hostile_console_memory_ci", {
                "sign_ins": 40, "user_name_bytes": 16 + 900_000, "rss_before_mib": round(before / 2 ** 20, 1),
                "rss_growth_mib": round(grown / 2 ** 20, 2), "statuses": sorted({code for code, _ in answers}),
                "largest_answer_bytes": max(size for _, size in answers)})
            assert grown < 4 * 2 ** 20, f"the console's RSS grew by {grown / 2 ** 20:.1f} MiB for 40 sign-ins " \
                                        "with 0.9 MB user names"
            assert {code for code, _ in answers} == {413}  # refused before the form is parsed
            assert max(size for _, size in answers) < 1000  # the name is not echoed back
            assert sign_in(stranger, "admin", ADMIN_PASSWORD).status_code == 303  # and nobody was locked out
    finally:
        server.kill()
        server.wait()


def test_sign_in_throttle_table_is_bounded(console):
    from node.web.auth import MAX_USERNAME_CHARS
    with console.client("127.0.0.2") as stranger:  # long names under the body limit: cut before they are kept
        for _ in range(5):
            assert sign_in(stranger, secrets.token_hex(8) + "y" * 20_000, "p").status_code == 401
    throttle = console.app.state.ctx.throttle
    assert 0 < len(throttle) and all(len(name) <= MAX_USERNAME_CHARS for _, name in throttle._fails)
    for i in range(10_000):  # many addresses and names: the table stays bounded
        throttle.failed(f"10.{i // 250}.{i % 250}.1", f"user{i}")
    assert len(throttle) == throttle.max_entries == 4096
    write_figures("hostile_console_throttle_table_ci", {"failures_recorded": 10_000 + 5,
                                                        "entries_kept": len(throttle),
                                                        "user_name_chars_kept_max": MAX_USERNAME_CHARS})
    with console.client("127.0.0.1") as admin:  # the admin's first try is never throttled
        assert sign_in(admin, "admin", ADMIN_PASSWORD).status_code == 303
        chunked = admin.post("/login", content=iter([b"username=" + b"x" * 70_000]),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert chunked.status_code == 413 and "at most 65536 bytes" in chunked.json()["detail"]


# ------------------------------------------------------------------------------------------------ sessions

def test_session_cookie_stops_working_at_sign_out(console):
    with console.client() as c:
        assert sign_in(c, "admin", ADMIN_PASSWORD).status_code == 303
        stolen = dict(c.cookies)
        with console.client(cookies=stolen) as copy:
            assert copy.get("/").status_code == 200 and copy.get("/api/status").status_code == 200
        page = c.get("/").text
        assert c.post("/logout", data={"csrf_token": csrf_of(page)}).status_code == 303
    with console.client(cookies=stolen) as copy:
        r = copy.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        api = copy.get("/api/status").status_code
        assert api == 401
    write_figures("hostile_console_sign_out_ci", {"copied_cookie_after_sign_out_page": f"{r.status_code} to /login",
                                                  "copied_cookie_after_sign_out_api": api})


def test_role_is_read_from_the_database_on_every_request(console):
    from node.store.console import ConsoleUser
    add_user(console, "ops", "ops-password-1", "admin")
    with console.client() as c:
        assert sign_in(c, "ops", "ops-password-1").status_code == 303
        assert c.get("/admin").status_code == 200
        with console.db.session() as s:
            s.execute(update(ConsoleUser).where(ConsoleUser.username == "ops").values(role="viewer"))
        assert c.get("/admin").status_code == 403  # demoted: at once
        assert c.get("/").status_code == 200 and ">viewer<" in c.get("/").text
        with console.db.session() as s:
            s.execute(delete(ConsoleUser).where(ConsoleUser.username == "ops"))
        assert c.get("/").status_code == 303  # deleted: signed out at once
        assert c.get("/api/status").status_code == 401


def test_sessions_expire(console):
    import datetime as dt
    from node.store.console import ConsoleSession
    assert console.cfg.web.session_max_age_s == 8 * 3600 and console.cfg.web.session_idle_s == 3600
    with console.client() as c:
        assert sign_in(c, "admin", ADMIN_PASSWORD).status_code == 303
        with console.db.session() as s:
            row = s.scalars(select(ConsoleSession)).one()
            assert row.expires_at - row.created_at == dt.timedelta(hours=8)
            row.last_seen_at = row.last_seen_at - dt.timedelta(seconds=3601)  # idle for over an hour
        assert c.get("/").status_code == 303
        assert sign_in(c, "admin", ADMIN_PASSWORD).status_code == 303
        assert c.get("/").status_code == 200
        with console.db.session() as s:
            s.scalars(select(ConsoleSession)).one().expires_at = dt.datetime(2000, 1, 1)  # past its lifetime
        assert c.get("/").status_code == 303
        with console.db.session() as s:
            assert s.scalars(select(ConsoleSession)).all() == []  # expired rows are deleted


def _decoded(cookie: str) -> bytes:
    """The cookie's text and every base64 part of it, decoded (as a reader of the cookie could)."""
    out = [cookie.encode()]
    for part in re.split(r"[.;= ]", cookie):
        for dec in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                out.append(dec(part + "=" * (-len(part) % 4)))
            except ValueError:
                pass
    return b"\n".join(out)


def test_patient_filter_is_in_no_cookie(console):
    patient = "PHI-FILTER-7731"
    with console.client() as c:
        assert sign_in(c, "admin", ADMIN_PASSWORD).status_code == 303
        token = csrf_of(c.get("/jobs").text)
        r = c.post("/jobs", data={"patient": patient, "csrf_token": token})
        assert r.status_code == 303
        set_cookies = r.headers.get_list("set-cookie")
        page = c.get("/jobs").text
        assert f'value="{patient}"' in page  # the filter is kept (server side) ...
        for cookie in set_cookies + [f"{k}={v}" for k, v in c.cookies.items()]:
            assert patient.encode() not in _decoded(cookie), cookie  # ... and in no cookie


def test_cookies_are_httponly_samesite_and_secure_behind_tls(console, tmp_path):
    with console.client() as c:
        r = c.get("/login")
        cookie = r.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        assert "secure" not in cookie.lower()  # plain http on loopback: a Secure cookie would never come back
    with console.client() as c:  # behind a TLS proxy on this host (uvicorn trusts its X-Forwarded-Proto): Secure
        cookie = c.get("/login", headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"]
        assert "; secure" in cookie.lower() and "httponly" in cookie.lower()
    other = Console(tmp_path / "secure", secure_cookies=True)  # a proxy that does not say https: the setting
    try:
        with other.client() as c:
            page = c.get("/login")
            cookie = page.headers["set-cookie"]
            assert "; secure" in cookie.lower() and "httponly" in cookie.lower(), cookie
            # (a client on plain http does not send a Secure cookie back: give it by hand, as the proxy would)
            login = c.post("/login", headers={"Cookie": cookie.split(";")[0]},
                           data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_of(page.text)})
            assert login.status_code == 303
            cookie = login.headers["set-cookie"]
            assert "; secure" in cookie.lower() and "httponly" in cookie.lower(), cookie
    finally:
        other.close()


# ----------------------------------------------------------------------------------------- admin password

_START = """
import sys
from node.config import NodeConfig
from node.store.db import Database
from node.ops.logging_setup import configure
from node.web.app import create_app
configure()
cfg = NodeConfig.model_validate({"node": {"data_dir": sys.argv[1]}, "web": {"admin_user": "admin"}})
create_app(cfg, Database(cfg.node.database_url()), data_dir=sys.argv[1])
print("started", flush=True)
"""


def _start_with_terminal(data_dir: Path, log: Path) -> str:
    """Run a first start of the console in a process whose controlling terminal is a pty (what the operator sees)
    and whose stdout/stderr go to ``log`` (what a service manager keeps); returns what the terminal showed."""
    import fcntl
    import termios
    master, slave = os.openpty()

    def take_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", _START, str(data_dir)], stdin=slave, stdout=out, stderr=out,
                                cwd=ROOT, start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    shown = b""
    try:
        proc.wait(timeout=120)
        os.set_blocking(master, False)
        while True:
            try:
                chunk = os.read(master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, log.read_text()
    return shown.decode(errors="replace")


def test_generated_admin_password_is_shown_once_and_kept_only_as_a_hash(tmp_path):
    from node.config import NodeConfig
    from node.store.db import Database
    from node.web.auth import authenticate
    from node.store.console import ConsoleUser
    data_dir, log = tmp_path / "var", tmp_path / "service.log"
    terminal = _start_with_terminal(data_dir, log)
    assert not re.search(r"password \S{16}", log.read_text()), f"a password in the service log: {log.read_text()}"
    m = re.search(r"with password (\S+)", terminal)
    assert m, f"the terminal did not show the password: {terminal!r}"
    password = m.group(1)
    assert password not in log.read_text()
    for path in data_dir.rglob("*"):  # nowhere in plain text on disk (database included)
        if path.is_file():
            assert password.encode() not in path.read_bytes(), f"the password is in plain text in {path}"
    assert _start_with_terminal(data_dir, log).count("password") == 0  # shown once
    assert "started" in log.read_text()
    db = Database(NodeConfig.model_validate({"node": {"data_dir": str(data_dir)}}).node.database_url())
    try:
        with db.session() as s:
            stored = s.scalar(select(ConsoleUser.password_hash))
            assert stored.startswith("scrypt$")
            assert authenticate(s, "admin", password) is not None
    finally:
        db.dispose()
    write_figures("hostile_console_admin_password_ci", {
        "shown_on_terminal": True, "in_service_log": False, "files_with_it_in_plain_text": 0,
        "shown_at_second_start": False, "kept_as": stored.split("$")[0]})


def test_every_user_can_change_their_password(console):
    from node.web.auth import create_token
    add_user(console, "vera", "viewer-pass-1", "viewer")
    with console.client() as c, console.client() as other_session:
        assert sign_in(c, "vera", "viewer-pass-1").status_code == 303
        assert sign_in(other_session, "vera", "viewer-pass-1").status_code == 303
        page = c.get("/account")
        assert page.status_code == 200 and 'name="old_password"' in page.text
        token = csrf_of(page.text)
        r = c.post("/account/password", data={"old_password": "wrong-pass", "new_password": "viewer-pass-2",
                                              "new_password2": "viewer-pass-2", "csrf_token": token})
        assert r.status_code == 401 and "current password is wrong" in r.text
        r = c.post("/account/password", data={"old_password": "viewer-pass-1", "new_password": "short",
                                              "new_password2": "short", "csrf_token": token})
        assert r.status_code == 422 and "at least 8 characters" in r.text
        r = c.post("/account/password", data={"old_password": "viewer-pass-1", "new_password": "viewer-pass-2",
                                              "new_password2": "viewer-pass-2", "csrf_token": token})
        assert r.status_code == 303 and "Password changed" in c.get("/account").text
        assert other_session.get("/").status_code == 303  # the other session was signed out
        assert c.get("/").status_code == 200  # this one goes on
    with console.client() as c:
        assert sign_in(c, "vera", "viewer-pass-1").status_code == 401
        assert sign_in(c, "vera", "viewer-pass-2").status_code == 303
        # the API: a console session with its CSRF header ...
        headers = {"X-CSRF-Token": csrf_of(c.get("/").text)}
        r = c.post("/api/account/password", json={"old_password": "viewer-pass-2", "new_password": "viewer-pass-3"},
                   headers=headers)
        assert r.status_code == 200 and r.json() == {"user": "vera", "changed": True}
        r = c.post("/api/account/password", json={"old_password": "viewer-pass-2", "new_password": "viewer-pass-4"},
                   headers=headers)
        assert r.status_code == 401
    with console.db.session() as s:
        _, api_token = create_token(s, "bridge", "admin", created_by="admin")
    with console.client(headers={"Authorization": f"Bearer {api_token}"}) as c:  # ... a token has no password
        r = c.post("/api/account/password", json={"old_password": "x" * 8, "new_password": "y" * 8})
        assert r.status_code == 400 and "API token has no password" in r.json()["detail"]


# ------------------------------------------------------------------------------------------------ ids

def test_out_of_range_ids_give_4xx_never_500(console):
    from node.web.auth import create_token
    with console.db.session() as s:
        _, api_token = create_token(s, "bridge", "admin", created_by="admin")
    huge, big = "99999999999999999999", str(2 ** 63)
    with console.client(headers={"Authorization": f"Bearer {api_token}"}) as api:
        for n in (huge, big, "-1", "0"):
            for method, path in (("GET", f"/api/jobs/{n}"), ("GET", f"/api/jobs/{n}/qc.png"),
                                 ("POST", f"/api/jobs/{n}/retry"), ("POST", f"/api/jobs/{n}/cancel"),
                                 ("POST", f"/api/jobs/{n}/resend")):
                r = api.request(method, path)
                assert r.status_code == 422, (method, path, r.status_code, r.text[:300])
                assert "Traceback" not in r.text
        assert api.get(f"/api/jobs?offset={huge}").status_code == 422
        assert api.post("/api/jobs/search", json={"offset": int(huge)}).status_code == 422
        assert api.get("/api/jobs/12345").status_code == 404  # in range, absent
    with console.client() as c:
        assert sign_in(c, "admin", ADMIN_PASSWORD).status_code == 303
        token = csrf_of(c.get("/").text)
        for n in (huge, big):
            for method, path in (("GET", f"/jobs/{n}"), ("GET", f"/jobs/{n}/qc.png"),
                                 ("POST", f"/jobs/{n}/retry"), ("POST", f"/jobs/{n}/cancel"),
                                 ("POST", f"/jobs/{n}/resend"), ("POST", f"/admin/tokens/{n}/revoke")):
                r = c.request(method, path, data={"csrf_token": token} if method == "POST" else None)
                assert r.status_code == 422, (method, path, r.status_code, r.text[:300])
        assert c.get(f"/jobs?page={huge}").status_code == 422
        assert c.get("/jobs/12345").status_code == 404
        assert c.get("/").status_code == 200  # still serving
    write_figures("hostile_console_ids_ci", {"out_of_range_requests": 4 * 5 + 2 + 2 * 6 + 1, "status": 422,
                                             "absent_in_range_status": 404, "api_jobs_99999999999999999999": 422})
