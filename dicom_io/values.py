"""DICOM value parsing and formatting: DA, TM, DT, DS, IS (PS3.5 section 6.2), in one place.

The writers format through it and the node's header parser parses through it. Parsers are lenient and never
raise: a header value is data, not a contract, so empty or unparsable input gives ``None``. They accept the raw
value as pydicom returns it (``str``, ``DSfloat``, ``IS``, ``int``/``float``, ``bytes``, ``None``). Formatters
return strings valid for their VR.

- DA ``YYYYMMDD`` <-> ``datetime.date`` (only the first 8 characters are read, so a DT value parses as its date);
- TM ``HH[MM[SS[.FFFFFF]]]`` <-> ``datetime.time`` (the old ``HH:MM:SS`` form is accepted when parsing);
- DT ``YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX]`` <-> ``datetime.datetime`` (aware when an offset is given);
- DS decimal string (at most 16 characters) <-> ``float``; IS integer string <-> ``int``.

Times and dates are the scanner's local time as written in the header; no time zone is assumed.
"""
from __future__ import annotations

import datetime as _dt
import math

from pydicom.valuerep import format_number_as_ds

__all__ = ["parse_da", "parse_tm", "parse_dt", "parse_ds", "parse_is", "format_da", "format_tm", "format_dt",
           "format_ds", "format_ds_list", "format_is", "now_da_tm", "da_to_iso"]


def _text(value) -> str:
    """The raw value as stripped text ('' for None); bytes decoded as ASCII (errors replaced)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


# --------------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------------
def parse_da(value) -> _dt.date | None:
    """DICOM DA ('YYYYMMDD'; only the first 8 characters are read) -> ``datetime.date``; None when empty or
    invalid."""
    s = _text(value)
    try:
        return _dt.datetime.strptime(s[:8], "%Y%m%d").date() if s else None
    except ValueError:
        return None


def parse_tm(value) -> _dt.time | None:
    """DICOM TM ('HH', 'HHMM', 'HHMMSS', 'HHMMSS.FFFFFF'; also the retired 'HH:MM:SS') -> ``datetime.time``
    (fraction to microseconds, a leap second 60 read as 59); None when empty or invalid."""
    s = _text(value).replace(":", "")
    if not s:
        return None
    whole, _, frac = s.partition(".")
    if len(whole) not in (2, 4, 6) or not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 6:
        return None
    h, m, sec = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    try:
        return _dt.time(h, m, min(sec, 59), int(frac.ljust(6, "0")) if frac else 0)
    except ValueError:
        return None


def parse_dt(value) -> _dt.datetime | None:
    """DICOM DT ('YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]]' with an optional '&ZZXX' UTC offset, & = + or -) ->
    ``datetime.datetime`` (missing month/day are 1, missing time parts 0; tz-aware only with an offset);
    None when empty or invalid."""
    s = _text(value)
    if not s:
        return None
    tz = None
    for sign in "+-":
        if sign in s[4:]:
            i = s.index(sign, 4)
            s, off = s[:i], s[i + 1:]
            if len(off) != 4 or not off.isdigit():
                return None
            minutes = int(off[:2]) * 60 + int(off[2:])
            try:
                tz = _dt.timezone(_dt.timedelta(minutes=minutes if sign == "+" else -minutes))
            except ValueError:
                return None
            break
    whole, _, frac = s.partition(".")
    if len(whole) not in (4, 6, 8, 10, 12, 14) or not whole.isdigit() or (frac and not frac.isdigit()) \
            or len(frac) > 6 or (frac and len(whole) != 14):
        return None
    parts = [int(whole[i:i + 2]) for i in range(4, len(whole), 2)]
    y, mo, d, h, mi, sec = int(whole[:4]), *(parts + [1, 1, 0, 0, 0][len(parts):])
    try:
        return _dt.datetime(y, mo, d, h, mi, min(sec, 59), int(frac.ljust(6, "0")) if frac else 0, tzinfo=tz)
    except ValueError:
        return None


def parse_ds(value) -> float | None:
    """DICOM DS (decimal string, or a number) -> float; None when empty, invalid or not finite."""
    s = _text(value)
    try:
        v = float(s) if s else None
    except ValueError:
        return None
    return v if v is None or math.isfinite(v) else None


def parse_is(value) -> int | None:
    """DICOM IS (integer string, or an int) -> int; None when empty or invalid (a decimal such as '5.0' is
    invalid)."""
    s = _text(value)
    try:
        return int(s) if s else None
    except ValueError:
        return None


def da_to_iso(da):
    """DICOM DA 'YYYYMMDD' -> ISO 'YYYY-MM-DD' for text meant for people; the input unchanged when it does not
    parse."""
    try:
        return _dt.datetime.strptime(da.strip(), "%Y%m%d").date().isoformat()
    except (ValueError, AttributeError):
        return da


# --------------------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------------------
def format_da(value: _dt.date) -> str:
    """``datetime.date`` (or datetime) -> DICOM DA 'YYYYMMDD'."""
    return value.strftime("%Y%m%d")


def format_tm(value: _dt.time | _dt.datetime, fraction: bool = False) -> str:
    """``datetime.time`` (or datetime) -> DICOM TM 'HHMMSS', or 'HHMMSS.FFFFFF' with ``fraction``."""
    return value.strftime("%H%M%S.%f" if fraction else "%H%M%S")


def format_dt(value: _dt.datetime, fraction: bool = False) -> str:
    """``datetime.datetime`` -> DICOM DT 'YYYYMMDDHHMMSS' (+ '.FFFFFF' with ``fraction``), with '&ZZXX' when
    the value is tz-aware."""
    s = value.strftime("%Y%m%d%H%M%S.%f" if fraction else "%Y%m%d%H%M%S")
    off = value.utcoffset()
    if off is not None:
        minutes = int(off.total_seconds() // 60)
        s += f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return s


def format_ds(value: float) -> str:
    """A number as a DICOM Decimal String (at most 16 characters, no '-0'); raises ValueError for NaN/inf."""
    v = float(value)
    if v == 0.0:
        v = 0.0  # no "-0.0"
    s = format_number_as_ds(v)
    digits = 15
    while len(s) > 16 and digits > 1:  # pydicom can overflow near powers of ten (-9.999999999999991)
        s = f"{v:.{digits}g}"
        digits -= 1
    return s


def format_ds_list(values) -> list[str]:
    """A sequence of numbers as Decimal Strings (each at most 16 characters), e.g. for a multi-valued DS."""
    return [format_ds(v) for v in values]


def format_is(value: int) -> str:
    """An integer as a DICOM Integer String (at most 12 characters, range -2^31 .. 2^31-1); ValueError outside."""
    v = int(value)
    if not -2 ** 31 <= v < 2 ** 31:
        raise ValueError(f"{v} is outside the IS range")
    return str(v)


def now_da_tm(now: _dt.datetime | None = None) -> tuple[str, str]:
    """(DA, TM) strings ('YYYYMMDD', 'HHMMSS') for ``now`` (local time, default: the current time)."""
    now = now or _dt.datetime.now()
    return format_da(now), format_tm(now)
