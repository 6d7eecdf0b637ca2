"""The node's one marker for errors a person can fix (bad configuration, an unreachable or refusing peer, a wrong
input, an action that does not apply): :class:`UserError`. Its message is one plain line; the CLI prints it
without a traceback (exit status 2) and the console shows it."""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; ``str(exc)`` is one plain-words line naming the problem."""
