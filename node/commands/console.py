"""`totalreg console passwd USER [--config node.yaml] [--generate]`: set a console user's password.

For the operator at the node's own machine — e.g. when the node runs as a service and the generated admin password
could not be shown (it is never written to the service log nor kept in plain text). The new password is asked for
twice on the terminal, read from the first line of standard input when that is not a terminal, or, with
``--generate``, made at random and printed once here. All of the user's console sessions are signed out.
"""
from __future__ import annotations

import getpass
import sys

from node import audit
from node.config import ConfigError, load_config
from node.store.db import open_database
from node.web import auth, security


def add_parser(subparsers) -> None:
    """Register `totalreg console passwd`."""
    p = subparsers.add_parser("console", help="manage web console users (set a password)")
    sub = p.add_subparsers(dest="console_command", metavar="ACTION")
    pw = sub.add_parser("passwd", help="set a console user's password (signs out their sessions)")
    pw.add_argument("user", help="console user name (e.g. admin)")
    pw.add_argument("--config", "-c", default=None, help="node.yaml of the node (default: embedded defaults)")
    pw.add_argument("--generate", action="store_true", help="make a random password and print it once")
    pw.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise ConfigError("the two passwords differ; nothing was changed")
    return first


def run(args) -> int:
    """Set the password; returns the exit status (2 with a plain message for an unknown user or short password)."""

    cfg = load_config(args.config)
    password = security.random_password() if args.generate else _read_password()
    db = open_database(cfg)
    try:
        with db.session() as s:
            auth.set_password(s, args.user, password)
        with db.session() as s:
            audit.record(s, "user.password", actor=audit.cli_actor(), via="cli", object_type="user",
                         object_id=args.user, detail="password set with 'totalreg console passwd'")
    except ValueError as exc:
        raise ConfigError(f"{exc}; nothing was changed") from None
    finally:
        db.dispose()
    if args.generate:
        print(f"console user '{args.user}': new password {password}")
    else:
        print(f"console user '{args.user}': password changed")
    return 0
