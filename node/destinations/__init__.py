"""Where results can go: one module per destination kind, found by its name (``kind:`` in node.yaml).

A kind is a :class:`DestinationKind` with its options (a pydantic model: what node.yaml may say under the
destination, unknown keys refused), ``send`` (one attempt: deliver every file, return how many instances the
destination acknowledged) and ``check`` (can it be reached now, in plain words), plus the console's label and
the word on its check button. The kinds of this package: ``dicom`` (C-STORE), ``dicomweb`` (STOW-RS), ``orthanc``
(Orthanc's REST API), ``folder``. Adding one is one new module here defining ``KIND`` (and its test):
:func:`get` imports ``node.destinations.<kind>`` the first time a configuration names it. :func:`register`
adds a kind defined elsewhere (tests, plug-ins).

Used by node.config (validation of ``destinations:``), node.dispatch (sending) and node.web (console checks).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class SendError(RuntimeError):
    """One send attempt failed; the message says where and why in plain words."""


class Options(BaseModel):
    """Base of a kind's options: unknown keys are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class DestinationKind:
    """One kind of destination (subclass it in ``node/destinations/<name>.py`` and set ``KIND = YourKind()``).

    ``name``: the ``kind:`` value; ``label``: the console's words for it; ``check_action``: its check button
    ("Echo" for DICOM, "Check" otherwise); ``options``: the pydantic model of its node.yaml keys;
    ``required``: keys that must be given (named in the error as "a <kind> destination needs ...")."""

    name: str = ""
    label: str = ""
    check_action: str = "Check"
    options: type[Options] = Options
    required: tuple[str, ...] = ()

    def address(self, dest) -> str:
        """Where ``dest`` points, for people (the console's peer list)."""
        return ""

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        """Deliver ``files`` (DICOM Part 10) to ``dest`` in ONE attempt; the number of instances acknowledged.
        Raise :class:`SendError` (or OSError, a DIMSE or HTTP error) when the attempt fails."""
        raise NotImplementedError

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        """Whether ``dest`` can take results now, and a plain-words message (never raises for network trouble)."""
        raise NotImplementedError


_KINDS: dict[str, DestinationKind] = {}


def register(kind: DestinationKind) -> DestinationKind:
    """Make ``kind`` known under ``kind.name`` (replacing one of that name); returns it."""
    if not kind.name:
        raise ValueError("a destination kind needs a name")
    _KINDS[kind.name] = kind
    return kind


def names() -> list[str]:
    """Every kind known: the modules of this package and those registered."""
    mods = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted(mods | set(_KINDS))


def get(name: str) -> DestinationKind:
    """The kind called ``name``; ValueError naming the known kinds when there is none."""
    kind = _KINDS.get(name)
    if kind is None and name in {m.name for m in pkgutil.iter_modules(__path__)} and not name.startswith("_"):
        kind = register(importlib.import_module(f"{__name__}.{name}").KIND)
    if kind is None:
        raise ValueError(f"unknown destination kind {name!r} (known: {', '.join(names())})")
    return kind


def validate_options(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The options of a ``name`` destination checked by its kind: every option with its default filled in.
    ValueError in plain words (missing keys, unknown keys, wrong values)."""
    kind = get(name)
    missing = [k for k in kind.required if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"a {name} destination needs {', '.join(missing)}")
    try:
        return kind.options.model_validate(raw).model_dump()
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"unknown key '{key}'" if e["type"] == "extra_forbidden" else
                            f"{key}: {msg}" if key else msg)
        raise ValueError(f"a {name} destination: {'; '.join(problems)}") from None
