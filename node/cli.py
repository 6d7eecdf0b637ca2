"""`totalreg` command line: one sub-command per module in :mod:`node.commands`.

Each sub-command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. Errors that a user can fix
(unreadable files, bad configuration, non-overlapping scans) are printed as one plain line, never a traceback.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from node.errors import UserError

#: sub-command name -> module under node.commands
COMMANDS = ("register", "serve", "demo", "train", "worker", "rules", "console", "audit", "db", "purge", "check", "backup", "restore")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with ``only``'s sub-command registered (its module alone is imported: a command
    module imports what it needs at its top, so ``totalreg rules`` never loads torch), or, without a known
    ``only``, every sub-command's name and help (:func:`command_help`, no module imported: ``totalreg --help``)."""
    parser = argparse.ArgumentParser(
        prog="totalreg",
        description="TotalRegistrator Node: register a patient's prior CT to the current CT and return DICOM results.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only not in COMMANDS:  # the command list alone: each command's help read from its source, nothing imported
        for name in COMMANDS:
            text = command_help(name)
            if text is not None:
                sub.add_parser(name, help=text)
        return parser
    try:
        module = importlib.import_module(f"node.commands.{only}")
    except ModuleNotFoundError as exc:  # a command not built yet
        if exc.name != f"node.commands.{only}":
            raise
        return parser
    module.add_parser(sub)
    return parser


def command_help(name: str) -> str | None:
    """The one-line help that ``node.commands.<name>`` gives its sub-parser (the ``help=`` string literal of its
    ``add_parser("<name>", ...)`` call), read from the module's source without importing it (importing would load
    torch and the web stack for ``totalreg --help``); None when the module does not exist."""
    spec = importlib.util.find_spec(f"node.commands.{name}")
    if spec is None or not spec.origin:
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_parser" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
            for kw in node.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
    return ""


def _user_errors() -> tuple[type[BaseException], ...]:
    """node's UserError, and the engine's and dicom_io's input errors when those packages are loaded (an error
    of theirs can only come from a loaded package; importing them here would load torch for every command)."""
    out: list[type[BaseException]] = [UserError]
    for module, name in (("registration_core.errors", "RegistrationInputError"), ("dicom_io.errors", "DicomInputError")):
        if module in sys.modules:
            out.append(getattr(sys.modules[module], name))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``totalreg`` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors carry a plain message
        if isinstance(exc, _user_errors()):
            print(f"totalreg: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
