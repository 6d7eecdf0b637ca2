"""Errors a user can fix: each carries one plain-language line that names the problem."""
from __future__ import annotations


class RegistrationInputError(ValueError):
    """Bad input to the registration engine (unreadable file, not 3D, scans that do not overlap, ...).

    ``str(exc)`` is a single human-readable line; ``exc.user_message`` holds the same text so the CLI and the
    node can show it without a traceback.
    """

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.user_message = message
