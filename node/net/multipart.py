"""An incremental ``multipart/related`` reader for DICOMweb bodies (WADO-RS answers, STOW-RS requests).

Bytes are pushed in as they arrive (:meth:`MultipartReader.feed`); each part comes out whole once its closing
delimiter has been seen, so at most one part (up to ``max_part_bytes``) plus one network chunk is held at a time,
never the whole body.  A part over ``max_part_bytes`` is not kept: its first ``head_bytes`` are (enough to read the
UIDs of a DICOM header), the rest is counted and dropped, and it comes out with ``too_large`` set.

Boundary syntax follows RFC 2046: the body is ``preamble CRLF? --boundary CRLF headers CRLF CRLF data
(CRLF --boundary CRLF headers ... )* CRLF --boundary-- epilogue``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message


class MultipartError(ValueError):
    """The body is not well-formed multipart (no boundary, a header block without its blank line, cut short)."""


class BodyTooLarge(MultipartError):
    """The whole body is larger than the reader's ``max_total_bytes``."""


@dataclass
class Part:
    """One body part: its headers (lower-case names), its bytes (or their head when ``too_large``), its size."""

    headers: dict[str, str]
    data: bytes
    size: int  # bytes of the part's body as sent (also when only the head was kept)
    too_large: bool = False

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower case ('' when the part has none)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header value → (media type in lower case, parameters with lower-case names, unquoted)."""
    msg = Message()
    msg["content-type"] = value or ""
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type().lower() if value else "", params


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/*`` Content-Type header value; MultipartError when it has none."""
    media, params = content_type_params(content_type)
    b = params.get("boundary", "")
    if not media.startswith("multipart/") or not b:
        raise MultipartError(f"not a multipart body with a boundary (Content-Type: {content_type[:200]!r})")
    if len(b) > 200:
        raise MultipartError("the multipart boundary is longer than 200 characters")
    return b.encode("latin-1")


@dataclass
class MultipartReader:
    """Push-parser of one multipart body (see the module docstring); ``feed`` returns the parts completed."""

    boundary: bytes
    max_part_bytes: int = 2 ** 31
    max_total_bytes: int | None = None
    head_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    total: int = 0  # bytes fed so far
    done: bool = False  # the closing delimiter was seen
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"  # preamble | after_delim | headers | body | epilogue
    _headers: dict = field(default_factory=dict)
    _size: int = 0  # bytes of the current part's body seen so far
    _skipping: bool = False  # the current part is over max_part_bytes: only its head is kept
    _head: bytes = b""
    _searched: int = 0  # where the next delimiter search in _buf may start

    def __post_init__(self) -> None:
        self._delim = b"\r\n--" + self.boundary

    def feed(self, data: bytes) -> list[Part]:
        """Take the next bytes of the body; return the parts that are now complete (in order)."""
        self.total += len(data)
        if self.max_total_bytes is not None and self.total > self.max_total_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_total_bytes} bytes")
        if self._state == "epilogue":
            return []
        self._buf += data
        out: list[Part] = []
        while self._step(out):
            pass
        return out

    def close(self) -> None:
        """The body ended: MultipartError unless the closing delimiter was seen."""
        if not self.done:
            raise MultipartError("the multipart body ended before its closing boundary "
                                 f"(state {self._state}, {self.total} bytes)")

    # ------------------------------------------------------------------------------------------ states
    def _step(self, out: list[Part]) -> bool:
        buf = self._buf
        if self._state == "preamble":
            first = b"--" + self.boundary
            if buf.startswith(first):
                del buf[:len(first)]
                self._state = "after_delim"
                return True
            i = buf.find(self._delim)
            if i < 0:
                keep = len(self._delim)  # drop preamble bytes that cannot start a delimiter
                if len(buf) > keep and not first.startswith(bytes(buf[:len(first)])):
                    del buf[:len(buf) - keep]
                return False
            del buf[:i + len(self._delim)]
            self._state = "after_delim"
            return True
        if self._state == "after_delim":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state, self.done = "epilogue", True
                buf.clear()
                return False
            i = buf.find(b"\r\n")  # transport padding (spaces/tabs) may follow the boundary
            if i < 0:
                if len(buf) > 1024:
                    raise MultipartError("no line end after a multipart boundary")
                return False
            if buf[:i].strip(b" \t"):
                raise MultipartError("unexpected bytes after a multipart boundary")
            del buf[:i + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            if buf.startswith(b"\r\n"):  # a part without headers
                end, skip = 0, 2
            else:
                end = buf.find(b"\r\n\r\n")
                skip = 4
            if end < 0:
                if len(buf) > self.max_header_bytes:
                    raise MultipartError(f"a part's headers are longer than {self.max_header_bytes} bytes")
                return False
            self._headers = _parse_headers(bytes(buf[:end]))
            del buf[:end + skip]
            self._state, self._size, self._skipping, self._head, self._searched = "body", 0, False, b"", 0
            return True
        if self._state == "body":
            i = buf.find(self._delim, self._searched)
            if i < 0:
                safe = max(0, len(buf) - len(self._delim) + 1)  # bytes that cannot be part of a delimiter
                if self._skipping or safe + self._size > self.max_part_bytes:
                    self._drop(safe)
                    self._searched = 0
                else:
                    self._searched = safe
                return False
            if self._skipping or i + self._size > self.max_part_bytes:
                self._drop(i)  # the delimiter is now at the start of the buffer
                out.append(Part(self._headers, self._head, self._size, too_large=True))
                del buf[:len(self._delim)]
            else:
                self._size += i
                out.append(Part(self._headers, bytes(buf[:i]), self._size))
                del buf[:i + len(self._delim)]
            self._state = "after_delim"
            return True
        return False

    def _drop(self, n: int) -> None:
        """Count and drop the first ``n`` bytes of the current (too large) part, keeping its head."""
        if not self._skipping:
            self._skipping = True
        if len(self._head) < self.head_bytes:
            self._head += bytes(self._buf[:min(n, self.head_bytes - len(self._head))])
        self._size += n
        del self._buf[:n]


def _parse_headers(block: bytes) -> dict[str, str]:
    """'Name: value' lines (folded lines joined) → {lower-case name: value}."""
    out: dict[str, str] = {}
    last = None
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and last:
            out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"a part header without a colon: {line[:80]!r}")
        last = name.strip().lower()
        out[last] = value.strip()
    return out


def encode_related(parts: list[bytes], boundary: str, media_type: str = "application/dicom") -> bytes:
    """A ``multipart/related`` body of ``parts`` (each with ``Content-Type: media_type``), for tests and senders."""
    out = bytearray()
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii") + p + b"\r\n"
    out += f"--{boundary}--\r\n".encode("ascii")
    return bytes(out)
