"""`totalreg --help` lists every command with its own help text without importing the command modules."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from node.cli import COMMANDS, build_parser, command_help


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help for a in sub._choices_actions}


def test_top_level_help_loads_no_command_module_and_no_torch():
    code = ("import sys\nfrom node.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'fastapi', 'pynetdicom', 'sqlalchemy') if m in sys.modules)\n"
            "cmds = sorted(m for m in sys.modules if m.startswith('node.commands.'))\n"
            "print('LOADED', heavy, cmds)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "LOADED [] []" in out
    for name in COMMANDS:
        assert f"    {name} " in out


def test_help_read_from_source_equals_the_modules_own():
    real = argparse.ArgumentParser(prog="totalreg")
    sub = real.add_subparsers(dest="command")
    for name in COMMANDS:
        importlib.import_module(f"node.commands.{name}").add_parser(sub)
    own = _helps(real)
    assert set(own) == set(COMMANDS)
    assert _helps(build_parser()) == own
    assert all(len(command_help(n)) > 10 for n in COMMANDS)
    assert command_help("no_such_command") is None


def test_a_named_command_still_gets_its_full_parser():
    args = build_parser("rules").parse_args(["rules", "check", "x.yaml"])
    assert args.command == "rules" and callable(args.func)
