"""Checks that turn damaged DICOM headers into one-line DicomInputError messages (used by the reader).

Every function here either returns a clean Python value or raises DicomInputError("<source>: <problem>"), where
<source> names the file.  Values shown in messages are cut to ``SHOWN_CHARS`` characters and stripped of
control characters, so a message is always one short line.
"""
from __future__ import annotations

import math
import struct
from typing import Any

from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag

from .errors import DicomInputError

SHOWN_CHARS = 64
MAX_MESSAGE_CHARS = 500
MAX_IMAGE_SIDE = 8192  # Rows / Columns above this are refused before any pixel buffer is allocated
MAX_FRAMES = 10000
MAX_DECODED_BYTES = 2 << 30  # one object may not declare more than 2 GiB of decoded pixels
ALLOWED_BITS = (8, 16, 32, 64)
MAX_POSITION_MM = 1e6  # |ImagePositionPatient| components above 1 km are damage, not anatomy
MAX_SPACING_MM = 1e3
MAX_RESCALE = 1e6  # |RescaleSlope|, |RescaleIntercept|
UNIT_TOLERANCE = 1e-2  # |row|, |column| must be 1 within this; |row . column| below it


def short(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters, control characters replaced by '?' (for messages)."""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a value that cannot even be shown
        text = f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: str) -> str:
    """A message as one line of at most MAX_MESSAGE_CHARS characters."""
    text = " ".join(str(message).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def tag_name(tag) -> str:
    """'(gggg,eeee) Keyword' for a tag (keyword omitted for private / unknown tags)."""
    t = Tag(tag)
    kw = keyword_for_tag(t)
    return f"({t.group:04X},{t.element:04X})" + (f" {kw}" if kw else "")


def decode_all(ds: Dataset, source: str) -> None:
    """Convert every element (recursively, sequences included) from its raw bytes; raise DicomInputError naming
    the first element that cannot be decoded (wrong VR, unknown VR, bad length...)."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            value = elem.value
        except DicomInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged values
            raise DicomInputError(f"{source}: cannot decode element {tag_name(tag)}: {_why(exc)} "
                                  f"({type(exc).__name__}: {short(exc)})") from None
        if elem.VR == "SQ" and value is not None:
            for item in value:
                if isinstance(item, Dataset):
                    decode_all(item, source)


def _why(exc: Exception) -> str:
    text = str(exc)
    if "Unknown Value Representation" in text:
        return "unknown value representation (VR), the bytes are damaged"
    if "bytes per value" in text or "length" in text.lower():
        return "its length does not fit its value representation (wrong VR or damaged bytes)"
    return "its value does not fit its value representation (wrong VR or damaged bytes)"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _values(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        return [v]
    try:
        return list(v)
    except TypeError:
        return [v]


def numbers(container: Dataset, kw: str, n: int, source: str, *, required: bool = True,
            positive: bool = False, limit: float | None = None) -> tuple[float, ...] | None:
    """The value of ``kw`` as ``n`` finite floats (positive ones if ``positive``, of magnitude at most ``limit``
    if given); None if absent and not ``required``; DicomInputError naming ``source`` and ``kw`` otherwise."""
    if kw not in container or container[kw].value in (None, "", b""):
        if required:
            raise DicomInputError(f"{source}: {kw} is missing")
        return None
    raw = container[kw].value
    vals = _values(raw)
    out = []
    for v in vals:
        if isinstance(v, (str, bytes)) or not _is_number(v):
            try:
                v = float(v)  # DS/IS subclasses, numeric strings
            except Exception:  # noqa: BLE001
                raise DicomInputError(f"{source}: {kw} is not numeric ({short(raw)!s})") from None
        out.append(float(v))
    if len(out) != n:
        raise DicomInputError(f"{source}: {kw} must have {n} number(s), it has {len(out)} ({short(raw)})")
    if not all(math.isfinite(x) for x in out):
        raise DicomInputError(f"{source}: {kw} is not finite ({short(raw)})")
    if positive and not all(x > 0 for x in out):
        raise DicomInputError(f"{source}: {kw} must be positive ({short(raw)})")
    if limit is not None and not all(abs(x) <= limit for x in out):
        raise DicomInputError(f"{source}: {kw} is implausibly large ({short(raw)}; at most {limit:g} accepted)")
    return tuple(out)


def integer(container: Dataset, kw: str, source: str, *, required: bool = True, default: int | None = None,
            low: int | None = None, high: int | None = None) -> int | None:
    """The value of ``kw`` as one integer in [low, high]; ``default`` if absent and not required."""
    if kw not in container or container[kw].value in (None, "", b""):
        if required:
            raise DicomInputError(f"{source}: {kw} is missing")
        return default
    raw = container[kw].value
    vals = _values(raw)
    if len(vals) != 1:
        raise DicomInputError(f"{source}: {kw} must be one integer ({short(raw)})")
    v = vals[0]
    try:
        if isinstance(v, bool):
            raise TypeError
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise ValueError
            v = int(v)
        else:
            v = int(str(v).strip()) if isinstance(v, (str, bytes)) else int(v)
    except Exception:  # noqa: BLE001
        raise DicomInputError(f"{source}: {kw} is not an integer ({short(raw)})") from None
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "" if low is None else f"{low}"
        hi = "" if high is None else f"{high}"
        raise DicomInputError(f"{source}: {kw} = {v} is outside the accepted range {lo}..{hi}")
    return v


def orientation(container: Dataset, source: str) -> tuple[float, ...]:
    """ImageOrientationPatient as 6 floats: two unit, orthogonal direction cosines (row, column; LPS)."""
    iop = numbers(container, "ImageOrientationPatient", 6, source)
    r, c = iop[:3], iop[3:]
    nr = math.sqrt(sum(x * x for x in r))
    nc = math.sqrt(sum(x * x for x in c))
    dot = sum(a * b for a, b in zip(r, c))
    if abs(nr - 1) > UNIT_TOLERANCE or abs(nc - 1) > UNIT_TOLERANCE or abs(dot) > UNIT_TOLERANCE:
        raise DicomInputError(f"{source}: ImageOrientationPatient is not two orthogonal unit vectors "
                              f"({short(container['ImageOrientationPatient'].value)})")
    return iop


def _fragment_count(data: bytes, source: str) -> int:
    """Number of fragments in encapsulated pixel data (after the Basic Offset Table)."""
    data = bytes(data or b"")
    if len(data) < 8 or data[:4] != b"\xfe\xff\x00\xe0":
        raise DicomInputError(f"{source}: compressed pixel data do not start with a Basic Offset Table item "
                              "(damaged file)")
    start = 8 + struct.unpack("<I", data[4:8])[0]
    if start > len(data):
        raise DicomInputError(f"{source}: compressed pixel data: Basic Offset Table longer than the data "
                              "(damaged file)")
    try:
        return parse_fragments(data[start:])[0]
    except Exception as exc:  # noqa: BLE001 - damaged item structure
        raise DicomInputError(f"{source}: compressed pixel data are damaged "
                              f"({type(exc).__name__}: {short(exc)})") from None


def image_header(ds: Dataset, source: str, native: bool) -> None:
    """Check the Image Pixel attributes before any pixel data are decoded: Rows/Columns positive and at most
    MAX_IMAGE_SIDE, BitsAllocated 8/16/32/64, one sample per pixel, NumberOfFrames bounded, and (``native``:
    uncompressed transfer syntax) PixelData at least Rows x Columns x frames x BitsAllocated/8 bytes and not
    a whole frame longer."""
    rows = integer(ds, "Rows", source, low=1, high=MAX_IMAGE_SIDE)
    cols = integer(ds, "Columns", source, low=1, high=MAX_IMAGE_SIDE)
    float_kw = next((kw for kw in ("FloatPixelData", "DoubleFloatPixelData") if kw in ds), None)
    bits = integer(ds, "BitsAllocated", source, required=float_kw is None,
                   default=32 if float_kw == "FloatPixelData" else 64)
    if bits not in ALLOWED_BITS:
        raise DicomInputError(f"{source}: BitsAllocated = {bits} is not supported (8, 16, 32 or 64)")
    spp = integer(ds, "SamplesPerPixel", source, required=False, default=1)
    if spp != 1:
        raise DicomInputError(f"{source}: SamplesPerPixel = {spp}; a CT image must be greyscale (1)")
    frames = integer(ds, "NumberOfFrames", source, required=False, default=1, low=1, high=MAX_FRAMES)
    expected = rows * cols * frames * (bits // 8)
    if expected > MAX_DECODED_BYTES:
        raise DicomInputError(f"{source}: declared image size {rows}x{cols}x{frames} at {bits} bits is too large")
    kw = float_kw or "PixelData"
    if not native and kw == "PixelData":
        fragments = _fragment_count(ds.PixelData, source)
        if fragments < frames:  # every frame needs at least one fragment: bounds what the decoder allocates
            raise DicomInputError(f"{source}: compressed pixel data holds {fragments} fragment(s) for {frames} "
                                  "declared frame(s) (truncated file or wrong NumberOfFrames?)")
        return
    have = len(ds[kw].value or b"") if kw in ds else 0
    if have < expected:
        raise DicomInputError(f"{source}: pixel data has {have} bytes, fewer than the {expected} that "
                              f"{rows}x{cols} pixels x {frames} frame(s) x {bits} bits need (truncated file?)")
    if have - expected >= max(2, rows * cols * (bits // 8)):
        raise DicomInputError(f"{source}: pixel data has {have} bytes, more than the {expected} that "
                              f"{rows}x{cols} pixels x {frames} frame(s) x {bits} bits need (wrong Rows/Columns?)")
