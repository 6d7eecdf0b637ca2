"""Regular expressions of routing rules, on a linear-time engine (RE2, PyPI ``google-re2``).

Rule criteria such as ``StudyDescription: 'chest|thorax'`` are matched against values a sender chooses.  Python's
``re`` backtracks: a pattern like ``(a+)+$`` against 28 characters of ``a`` followed by ``!`` runs for tens of
seconds while holding the GIL, which stops the whole node (web, assembly, workers, in-process receiver).  RE2
matches in time linear in the text, whatever the pattern, so a rule can never stall the process.

RE2 does not support what needs backtracking: backreferences (``\\1``, ``(?P=name)``), lookahead and lookbehind
(``(?=``, ``(?!``, ``(?<=``, ``(?<!``), atomic groups and possessive quantifiers.  Such patterns are refused when
a rule is validated (node.yaml, the console's rule editor, the REST API), with the reason in plain words.
"""
from __future__ import annotations

from functools import lru_cache

import re2

#: longest pattern accepted (a rule criterion, not a program)
MAX_PATTERN_CHARS = 1000
#: memory RE2 may use to compile and run one pattern (its default, made explicit): a pattern whose automaton
#: needs more is refused when the rule is saved
MAX_MEM_BYTES = 8 << 20

_HINTS = (
    ("invalid escape sequence: \\1", "backreferences (\\1, \\2, ...) are not supported"),
    ("invalid escape sequence: \\", "this escape sequence is not supported"),
    ("invalid named capture group", "this named group syntax is not supported (use (?P<name>...))"),
    ("invalid perl operator: (?=", "lookahead (?=...) is not supported"),
    ("invalid perl operator: (?!", "negative lookahead (?!...) is not supported"),
    ("invalid perl operator: (?<", "lookbehind (?<=...) / (?<!...) is not supported"),
    ("invalid perl operator: (?>", "atomic groups (?>...) are not supported"),
    ("bad repetition operator", "a repetition of a repetition (e.g. a++ or a*+) is not supported"),
    ("invalid repetition size", "a repetition count above 1000 is not supported"),
    ("pattern too large", "the pattern is too large to run within the engine's memory limit"),
)


class PatternError(ValueError):
    """A rule's regular expression is refused; the message says why in plain words."""


def _options() -> "re2.Options":
    opts = re2.Options()
    opts.case_sensitive = False  # rule criteria compare case-insensitively
    opts.log_errors = False  # the refusal is reported to the person who wrote the rule, not to stderr
    opts.max_mem = MAX_MEM_BYTES
    return opts


def _explain(detail: str, pattern: str) -> str:
    if "(?P=" in pattern and "(?P" in detail:
        return f"backreferences (?P=name) are not supported ({detail})"
    if "\\Z" in detail:
        return f"\\Z is not supported; use \\z for the end of the text ({detail})"
    for needle, hint in _HINTS:
        if needle in detail:
            return f"{hint} ({detail})"
    return detail


@lru_cache(maxsize=512)
def compile_pattern(pattern: str):
    """The compiled, case-insensitive RE2 program of ``pattern`` (cached).

    Raises :class:`PatternError` naming the reason when RE2 refuses it (backreferences, lookaround, too large, ...)
    or when it is longer than :data:`MAX_PATTERN_CHARS`."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"the pattern is {len(pattern)} characters long, more than {MAX_PATTERN_CHARS}")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        raw = exc.args[0] if exc.args else str(exc)
        detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise PatternError("refused by the linear-time regular expression engine (RE2): "
                           + _explain(detail, pattern)) from None
    except TypeError as exc:  # not a string
        raise PatternError(f"not a regular expression: {exc}") from None


def check_pattern(pattern: str) -> None:
    """Raise :class:`PatternError` (plain words) when ``pattern`` cannot be used in a rule."""
    compile_pattern(pattern)


def search(pattern: str, text: str) -> bool:
    """Does ``pattern`` (case-insensitive) occur in ``text``?  Linear time in ``len(text)`` for every pattern."""
    return compile_pattern(pattern).search(text or "") is not None
