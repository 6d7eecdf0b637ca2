"""node.net.multipart: the incremental multipart/related reader of WADO-RS answers and STOW-RS requests."""
from __future__ import annotations

import random

import pytest

from node.net.multipart import (
    BodyTooLarge,
    MultipartError,
    MultipartReader,
    boundary_of,
    content_type_params,
    encode_related,
)


def _read(body: bytes, chunk: int, **kw) -> list:
    r = MultipartReader(b"XyZ", **kw)
    out = []
    for i in range(0, len(body), chunk):
        out += r.feed(body[i:i + chunk])
    r.close()
    assert len(r._buf) == 0  # nothing left over once the closing delimiter was read
    return out


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10 ** 7])
def test_parts_come_out_whole_whatever_the_chunking(chunk):
    rnd = random.Random(5)
    parts = [bytes(rnd.getrandbits(8) for _ in range(n)) for n in (0, 10, 5000, 100_000)]
    parts[1] = b"\r\n--XyY\r\n-"  # almost a delimiter inside a part
    body = b"preamble\r\n" + encode_related(parts, "XyZ") + b"epilogue"
    out = _read(body, chunk, max_part_bytes=60_000, head_bytes=100)
    assert [p.size for p in out] == [0, 10, 5000, 100_000]
    assert [p.data for p in out[:3]] == parts[:3]
    assert out[3].too_large and out[3].data == parts[3][:100]  # only its head kept
    assert all(p.content_type == "application/dicom" for p in out)


def test_memory_held_is_one_part_not_the_body():
    """200 parts of 64 KiB fed in 16 KiB chunks: the reader never holds more than one part plus a chunk."""
    part = b"\x01" * 65536
    body = encode_related([part] * 200, "XyZ")
    r = MultipartReader(b"XyZ")
    held = 0
    n = 0
    for i in range(0, len(body), 16384):
        n += len(r.feed(body[i:i + 16384]))
        held = max(held, len(r._buf))
    r.close()
    assert n == 200 and held < 65536 + 16384 + 200


def test_limits_and_malformed_bodies():
    body = encode_related([b"a" * 1000] * 3, "XyZ")
    with pytest.raises(BodyTooLarge):
        _read(body, 100, max_total_bytes=2000)
    with pytest.raises(MultipartError, match="ended before its closing boundary"):
        _read(body[:-20], 100)
    with pytest.raises(MultipartError, match="headers are longer"):
        _read(b"--XyZ\r\n" + b"X-A: b\r\n" * 5000, 1000, max_header_bytes=1024)
    with pytest.raises(MultipartError, match="without a colon"):
        _read(b"--XyZ\r\nnot a header\r\n\r\nx\r\n--XyZ--", 1000)


def test_content_type_parameters():
    ctype = 'multipart/related; type="application/dicom"; boundary="a b:c"'
    assert content_type_params(ctype) == ("multipart/related", {"type": "application/dicom", "boundary": "a b:c"})
    assert boundary_of(ctype) == b"a b:c"
    with pytest.raises(MultipartError, match="not a multipart body"):
        boundary_of("application/dicom")
