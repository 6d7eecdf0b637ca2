"""DICOM Part 10 framing of a received C-STORE data set, on the receiver's hot path.

A C-STORE carries the data set alone, encoded in the presentation context's transfer syntax.  The spool keeps it
as a Part 10 file: 128-byte preamble, ``DICM``, the File Meta Information group (explicit VR little endian) and the
data set bytes exactly as received.  :func:`file_meta_bytes` encodes that group directly (pydicom's
``FileMetaDataset`` + ``write_file_meta_info`` validate every element on every call: ~1 ms per instance, a sixth
of the receiver's CPU); :func:`read_header` parses the data set up to the pixel data without copying it.

The File Meta Information holds what pynetdicom's ``Event.file_meta`` holds (PS3.10 7.1): version 00\\01, Media
Storage SOP Class/Instance UID from the request's Affected SOP Class/Instance UID, the context's transfer syntax,
pynetdicom's implementation class UID and version name, plus the Source Application Entity Title (the calling AE).
"""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

PREAMBLE = b"\x00" * 128 + b"DICM"

_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00009, 0x7FE00008))  # Pixel Data, Double/Float Pixel Data


def _explicit(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 2-byte length (the VRs of group 0002 except OB)."""
    return struct.pack("<HH2sH", group_elem >> 16, group_elem & 0xFFFF, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.strip().encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str, limit: int) -> bytes:
    raw = value.strip().encode("ascii", "replace")[:limit]
    return raw + b" " if len(raw) % 2 else raw


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, *,
                    implementation_class_uid: str, implementation_version: str = "",
                    source_ae_title: str = "") -> bytes:
    """The File Meta Information group (0002,xxxx), explicit VR little endian, with its group length first.

    UIDs must be ASCII (a C-STORE request's UIDs are checked by pynetdicom before the handler runs); the version
    name is cut to 16 characters (SH), the AE title to 16 (AE).  Returns the bytes that follow ``DICM``."""
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _explicit(0x00020002, b"UI", _uid(sop_class_uid)),
        _explicit(0x00020003, b"UI", _uid(sop_instance_uid)),
        _explicit(0x00020010, b"UI", _uid(transfer_syntax_uid)),
        _explicit(0x00020012, b"UI", _uid(implementation_class_uid)),
        _explicit(0x00020013, b"SH", _text(implementation_version, 16)) if implementation_version else b"",
        _explicit(0x00020016, b"AE", _text(source_ae_title, 16)) if source_ae_title.strip() else b"",
    ))
    return _explicit(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def _stop_at_pixels(tag, vr, length) -> bool:
    return tag in _PIXEL_TAGS


class DatasetTooLarge(ValueError):
    """A data set beyond the receiver's size limits (``node.max_dataset_bytes``, the inflation limit): the C-STORE
    is answered 0xA700 (out of resources), not 0xC210."""


INFLATE_FLOOR = 64 * 1024 * 1024  # inflated sizes up to this are never refused for their inflation ratio


def inflated_limit(wire_bytes: int, max_dataset_bytes: int, max_ratio: float) -> int:
    """Most bytes a deflated data set of ``wire_bytes`` may inflate to: ``max_ratio`` times its size (at least
    :data:`INFLATE_FLOOR`), and never more than ``max_dataset_bytes``."""
    return int(min(max_dataset_bytes, max(INFLATE_FLOOR, max_ratio * wire_bytes)))


class Inflater:
    """A read-only file over a raw deflate stream (Deflated Explicit VR Little Endian), inflated on demand with
    ``zlib.decompressobj(...).decompress(data, max_length)`` in chunks of at most 1 MiB.

    What is read is kept (the header up to the pixel data: pydicom seeks back over an element header), so memory
    is what was parsed plus one chunk; :meth:`skip` and :meth:`drain` inflate without keeping (a skip past the kept
    bytes drops them: no seeking back before that point).  More than ``limit`` inflated bytes raise
    :class:`DatasetTooLarge` at once; a stream that does not end raises ValueError."""

    CHUNK = 1 << 20

    def __init__(self, src: BinaryIO, limit: int | None = None):
        self._src = src
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._base = 0  # position of _buf[0] in the inflated data set (bytes before it were skipped, not kept)
        self._pos = 0
        self.limit = limit
        self.total = 0  # inflated bytes so far
        self._wire = 0  # compressed bytes read so far

    def _inflate(self, max_len: int) -> bytes:
        """Up to ``max_len`` more inflated bytes (b'' at the end of the stream or of the input)."""
        while not self._d.eof:
            data = self._d.unconsumed_tail or self._src.read(self.CHUNK)
            if not data:
                return b""
            if data is not self._d.unconsumed_tail:
                self._wire += len(data)
            out = self._d.decompress(data, max_len)
            if out:
                self.total += len(out)
                if self.limit is not None and self.total > self.limit:
                    raise DatasetTooLarge(
                        f"the deflated data set inflates to more than {self.limit} bytes (from {self._wire} or "
                        f"more bytes received): refused as a deflate bomb (limits: node.max_inflation_ratio, "
                        f"node.max_dataset_bytes)")
                return out
        return b""

    def _fill(self, end: int) -> None:
        while self._base + len(self._buf) < end:
            out = self._inflate(min(self.CHUNK, end - self._base - len(self._buf)))
            if not out:
                return
            self._buf += out

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the current position (all that is left when ``n`` < 0)."""
        if n is None or n < 0:
            end = (self.limit + 1) if self.limit is not None else 1 << 62
        else:
            end = self._pos + n
        if self._pos < self._base:
            raise ValueError("cannot read inflated bytes that were skipped without keeping them")
        self._fill(end)
        out = bytes(self._buf[self._pos - self._base:end - self._base])
        self._pos += len(out)
        return out

    def skip(self, n: int) -> int:
        """Move ``n`` bytes forward; bytes beyond those kept are inflated and counted but not kept (and the kept
        ones are dropped).  Returns how many bytes were skipped (fewer at the end of the stream)."""
        target = self._pos + n
        kept_end = self._base + len(self._buf)
        if target <= kept_end:
            self._pos = target
            return n
        need = target - kept_end
        while need > 0:
            out = self._inflate(min(self.CHUNK, need))
            if not out:
                break
            need -= len(out)
        self._buf = bytearray()
        self._base = self._pos = target - need
        return n - need

    def tell(self) -> int:
        """The current position in the inflated data set."""
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move within the inflated data set (whence 0, 1; 2 inflates everything first)."""
        if whence == 2:
            self._fill(1 << 62 if self.limit is None else self.limit + 1)
            base = self._base + len(self._buf)
        else:
            base = 0 if whence == 0 else self._pos
        self._pos = max(0, base + offset)
        return self._pos

    def drain(self) -> int:
        """Inflate the rest of the stream (not kept) and return the inflated size of the whole data set."""
        while self._inflate(self.CHUNK):
            pass
        if not self._d.eof:
            raise ValueError("the deflated data set is cut short (its deflate stream does not end)")
        return self.total


def read_header(fp: BinaryIO, transfer_syntax_uid: str, decode_keywords: tuple[str, ...] = (), *,
                max_inflated_bytes: int | None = None, structure: dict | None = None) -> Dataset:
    """Parse a C-STORE data set (no preamble, no file meta) from ``fp``'s current position up to the pixel data.

    ``fp`` is read, not copied (pass the request's ``BytesIO``).  Every sequence is parsed (a malformed item
    structure raises here) and each keyword in ``decode_keywords`` is decoded to its value (a malformed value
    raises here); other elements stay raw until used.  Raises ValueError (or pydicom's errors) for bytes that
    are not a data set in ``transfer_syntax_uid``.  A deflated data set is inflated as it is parsed and then to
    its end without keeping it (:class:`Inflater`): more than ``max_inflated_bytes`` raises
    :class:`DatasetTooLarge`, an incomplete deflate stream ValueError; meanwhile its element structure is walked as
    :func:`check_complete` walks other data sets (:class:`IncompleteDataset` when an element runs past the end),
    and ``structure["has_pixels"]`` (when a dict is given) says whether it has top-level pixel data."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise ValueError(f"unknown transfer syntax {transfer_syntax_uid}")
    inflater = None
    if ts.is_deflated:  # inflated as it is parsed, never more than max_inflated_bytes (a deflate bomb raises)
        fp = inflater = Inflater(fp, max_inflated_bytes)
    ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_stop_at_pixels)
    if inflater is not None:  # one pass to the end: the element structure walked (kept header bytes first, then
        inflater.seek(0)      # the rest, pixel data included, inflated and counted but not kept), the size checked
        has_pixels = _walk_stream(inflater, ts.is_implicit_VR, "<" if ts.is_little_endian else ">", False, 0, [])
        inflater.drain()  # the deflate stream must end where the data set ends
        if structure is not None:
            structure["has_pixels"] = has_pixels
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian, ds._character_set)
    return check_header(ds, decode_keywords)


def check_header(ds: Dataset, decode_keywords: tuple[str, ...] = ()) -> Dataset:
    """Parse every sequence of ``ds`` and decode each keyword in ``decode_keywords`` now, so that a malformed
    item structure or value raises here and not later in a worker; returns ``ds``."""
    check_sequences(ds)
    for keyword in decode_keywords:
        _ = ds.get(keyword)
    return ds


def check_sequences(ds: Dataset, depth: int = 0) -> None:
    """Parse every sequence of ``ds`` (recursively, without converting other values): raises on a sequence
    whose items are not well formed.  Nesting deeper than 32 levels is refused (ValueError)."""
    if depth > 32:
        raise ValueError("sequences are nested more than 32 levels deep")
    for raw in ds.elements():
        vr = getattr(raw, "VR", None)
        if vr in (None, "UN"):
            try:
                vr = dictionary_VR(raw.tag)
            except KeyError:
                vr = "SQ" if getattr(raw, "length", 0) == 0xFFFFFFFF and raw.tag not in _PIXEL_TAGS else vr
        if vr == "SQ":
            for item in ds[raw.tag].value or ():
                check_sequences(item, depth + 1)


class IncompleteDataset(ValueError):
    """A data set whose elements do not end where its bytes end (a declared length running past the end, an
    element header cut short, a sequence or item without its delimiter): refused (0xC210), never stored."""


_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_MAX_NESTING = 64


def check_complete(buf, transfer_syntax_uid: str, max_inflated_bytes: int | None = None) -> bool:
    """Walk the element structure of a C-STORE data set (no preamble, no file meta) in ``buf`` (bytes or a
    buffer) and raise :class:`IncompleteDataset` naming the element when a declared length runs past the end, an
    element header is cut short, or a sequence/item/encapsulated pixel data lacks its delimiter; the last element
    must end on the last byte.  Returns whether the data set has pixel data at its top level, so that the caller
    can refuse an image cut exactly at an element boundary.

    pydicom reads a value that runs past the end of its input as the bytes that are there, without a word: a
    truncated data set would be stored and acknowledged as if whole.  Values of defined length are skipped, not
    read (a few microseconds for a CT header).  A deflated data set is inflated as it is walked, without keeping
    it (:class:`Inflater`, at most ``max_inflated_bytes``); :func:`read_header` does the same walk in its one pass,
    so a receiver that parsed a deflated data set with it need not call this."""
    ts = UID(transfer_syntax_uid)
    if ts.is_deflated:
        src = Inflater(BytesIO(buf), max_inflated_bytes)
        has_pixels = _walk_stream(src, False, "<", False, 0, [])
        src.drain()
        return has_pixels
    mv = memoryview(buf).cast("B")
    end = len(mv)
    little = ts.is_little_endian
    pixels: list[int] = []
    pos = _walk(mv, 0, end, ts.is_implicit_VR, "<" if little else ">", False, 0, pixels)
    if pos != end:  # pragma: no cover - _walk consumes up to end or raises
        raise IncompleteDataset(f"the data set has {end - pos} bytes after its last element")
    return bool(pixels)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _walk(mv, pos: int, end: int, implicit: bool, order: str, in_item: bool, depth: int,
          pixels: list | None = None) -> int:
    """Elements from ``pos``; returns the position after them (after the item delimiter when ``in_item``).
    ``pixels`` (top level only) collects the pixel data tags met."""
    if depth > _MAX_NESTING:
        raise IncompleteDataset(f"sequences are nested more than {_MAX_NESTING} levels deep")
    hdr = struct.Struct(order + "HH")
    u32 = struct.Struct(order + "I")
    u16 = struct.Struct(order + "H")
    while pos < end:
        if pos + 8 > end:
            raise IncompleteDataset(f"an element header at byte {pos} is cut short ({end - pos} of 8 bytes)")
        group, elem = hdr.unpack_from(mv, pos)
        tag = group << 16 | elem
        pos0 = pos
        if tag == _ITEM_END:
            if not in_item:
                raise IncompleteDataset(f"an item delimiter at byte {pos} outside any item")
            return pos + 8
        if tag in (_ITEM, _SEQ_END):
            raise IncompleteDataset(f"an item tag {_tag_text(tag)} at byte {pos} outside any sequence")
        if pixels is not None and tag in _PIXEL_TAGS:
            pixels.append(tag)
        vr = b""
        if implicit or group == 0xFFFE:
            length = u32.unpack_from(mv, pos + 4)[0]
            start = pos + 8
        else:
            vr = bytes(mv[pos + 4:pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise IncompleteDataset(f"the header of element {_tag_text(tag)} at byte {pos} is cut short")
                length = u32.unpack_from(mv, pos + 8)[0]
                start = pos + 12
            else:
                length = u16.unpack_from(mv, pos + 6)[0]
                start = pos + 8
        if length == 0xFFFFFFFF:
            encapsulated = tag in _PIXEL_TAGS and not implicit and vr != b"SQ"
            if not implicit and vr not in (b"SQ", b"UN") and not encapsulated:
                raise IncompleteDataset(f"element {_tag_text(tag)} ({vr.decode('ascii', 'replace')}) has an "
                                        "undefined length")
            # items of an undefined-length UN are implicit VR little endian (PS3.5 6.2.2)
            items_implicit = implicit or vr == b"UN"
            pos = _walk_items(mv, start, end, items_implicit, "<" if vr == b"UN" else order, encapsulated, tag,
                              depth + 1)
        else:
            pos = start + length
            if pos > end:
                raise IncompleteDataset(f"element {_tag_text(tag)} at byte {pos0} declares "
                                        f"{length} bytes but only {end - start} remain: the data set is cut short")
    if in_item:
        raise IncompleteDataset("an item of undefined length ends without its delimiter: the data set is cut short")
    return pos


def _walk_items(mv, pos: int, end: int, implicit: bool, order: str, encapsulated: bool, owner: int,
                depth: int) -> int:
    """Items of an undefined-length sequence (or encapsulated pixel data) up to and including its delimiter."""
    hdr = struct.Struct(order + "HHI")
    while True:
        if pos + 8 > end:
            raise IncompleteDataset(f"element {_tag_text(owner)} (undefined length) ends without its sequence "
                                    "delimiter: the data set is cut short")
        group, elem, length = hdr.unpack_from(mv, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise IncompleteDataset(f"element {_tag_text(owner)} holds {_tag_text(tag)} where an item belongs")
        if length == 0xFFFFFFFF:
            if encapsulated:
                raise IncompleteDataset(f"a fragment of {_tag_text(owner)} has an undefined length")
            pos = _walk(mv, pos, end, implicit, order, True, depth)
        else:
            if pos + length > end:
                raise IncompleteDataset(f"an item of {_tag_text(owner)} declares {length} bytes but only "
                                        f"{end - pos} remain: the data set is cut short")
            pos += length


def _walk_stream(src: Inflater, implicit: bool, order: str, in_item: bool, depth: int,
                 pixels: list | None = None) -> bool:
    """:func:`_walk` over an inflating stream: element headers are read, values skipped without keeping them; the
    elements must end where the stream ends (after the item delimiter when ``in_item``).  Returns whether
    ``pixels`` (top level only) collected a pixel data tag."""
    if depth > _MAX_NESTING:
        raise IncompleteDataset(f"sequences are nested more than {_MAX_NESTING} levels deep")
    hdr, u32, u16 = struct.Struct(order + "HH"), struct.Struct(order + "I"), struct.Struct(order + "H")
    while True:
        pos = src.tell()
        head = src.read(8)
        if not head:
            if in_item:
                raise IncompleteDataset("an item of undefined length ends without its delimiter: the data set is "
                                        "cut short")
            return bool(pixels)
        if len(head) < 8:
            raise IncompleteDataset(f"an element header at byte {pos} is cut short ({len(head)} of 8 bytes)")
        group, elem = hdr.unpack_from(head)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            if not in_item:
                raise IncompleteDataset(f"an item delimiter at byte {pos} outside any item")
            return False
        if tag in (_ITEM, _SEQ_END):
            raise IncompleteDataset(f"an item tag {_tag_text(tag)} at byte {pos} outside any sequence")
        if pixels is not None and tag in _PIXEL_TAGS:
            pixels.append(tag)
        vr = b""
        if implicit or group == 0xFFFE:
            length = u32.unpack_from(head, 4)[0]
        else:
            vr = head[4:6]
            if vr in _LONG_VRS:
                more = src.read(4)
                if len(more) < 4:
                    raise IncompleteDataset(f"the header of element {_tag_text(tag)} at byte {pos} is cut short")
                length = u32.unpack(more)[0]
            else:
                length = u16.unpack_from(head, 6)[0]
        if length == 0xFFFFFFFF:
            encapsulated = tag in _PIXEL_TAGS and not implicit and vr != b"SQ"
            if not implicit and vr not in (b"SQ", b"UN") and not encapsulated:
                raise IncompleteDataset(f"element {_tag_text(tag)} ({vr.decode('ascii', 'replace')}) has an "
                                        "undefined length")
            _walk_items_stream(src, implicit or vr == b"UN", "<" if vr == b"UN" else order, encapsulated, tag,
                               depth + 1)
        else:
            got = src.skip(length)
            if got < length:
                raise IncompleteDataset(f"element {_tag_text(tag)} at byte {pos} declares {length} bytes but only "
                                        f"{got} remain: the data set is cut short")


def _walk_items_stream(src: Inflater, implicit: bool, order: str, encapsulated: bool, owner: int,
                       depth: int) -> None:
    """:func:`_walk_items` over an inflating stream: items up to and including the sequence delimiter."""
    hdr = struct.Struct(order + "HHI")
    while True:
        head = src.read(8)
        if len(head) < 8:
            raise IncompleteDataset(f"element {_tag_text(owner)} (undefined length) ends without its sequence "
                                    "delimiter: the data set is cut short")
        group, elem, length = hdr.unpack(head)
        tag = group << 16 | elem
        if tag == _SEQ_END:
            return
        if tag != _ITEM:
            raise IncompleteDataset(f"element {_tag_text(owner)} holds {_tag_text(tag)} where an item belongs")
        if length == 0xFFFFFFFF:
            if encapsulated:
                raise IncompleteDataset(f"a fragment of {_tag_text(owner)} has an undefined length")
            _walk_stream(src, implicit, order, True, depth)
        else:
            got = src.skip(length)
            if got < length:
                raise IncompleteDataset(f"an item of {_tag_text(owner)} declares {length} bytes but only {got} "
                                        "remain: the data set is cut short")


_SEQ_DELIMITER = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")  # LE, BE


def is_complete(ds: Dataset, data: bytes) -> bool:
    """True when ``ds`` (read by ``dcmread`` from ``data``, pixel data included, nothing converted yet) ends exactly
    where ``data`` ends: pydicom stops without complaint at a file cut short, so a write interrupted by a crash is
    found here.  A file that ends in an undefined-length element (encapsulated pixel data) must end with its
    sequence delimiter, and an object of an image storage class must have its pixel data (a cut exactly at an
    element boundary leaves a well-formed but headless-tailed file)."""
    elems = list(ds.elements())
    if not elems:
        return False
    sop = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or ds.get("SOPClassUID")
    if sop is not None and "Image Storage" in UID(str(sop)).name and not any(t in ds for t in _PIXEL_TAGS):
        return False
    for raw in elems:
        length, value = getattr(raw, "length", None), getattr(raw, "value", None)
        if length not in (None, 0xFFFFFFFF) and isinstance(value, (bytes, bytearray)) and len(value) != length:
            return False
    last = elems[-1]
    length, tell = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length == 0xFFFFFFFF:
        return data.endswith(_SEQ_DELIMITER)
    if length is None or tell is None:
        return True  # already converted: nothing to check against
    return tell + length == len(data)
