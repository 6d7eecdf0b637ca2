"""Hypothesis strategies that damage a valid CT slice, at the dataset level and at the byte level.

Dataset mutations (applied to a pydicom Dataset, then encoded by whoever sends or saves it):
``delete`` elements, ``absurd`` Rows/Columns/BitsAllocated, ``text`` (garbage, non-ASCII, very long strings),
``sop_class`` (a non-image SOP class), ``uid`` (empty, hostile or over-long UIDs), ``pixels`` (PixelData shorter or
longer than Rows x Columns says).

Byte mutations (applied to the Part 10 bytes after the file meta, so the file still announces itself):
``truncate`` at an offset, ``overwrite`` bytes, ``huge_length`` (an element's 32/16-bit length set to a huge
value), ``insert`` random bytes, ``retype`` (an element's VR replaced by another one: wrong VR).

:func:`part10` assembles preamble + file meta + (mutated) dataset bytes.
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

NON_IMAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.66.3",  # Deformable Spatial Registration
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image (an image, but not CT)
]
DELETABLE = ["PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
             "Modality", "Rows", "Columns", "BitsAllocated", "PixelRepresentation", "ImagePositionPatient",
             "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID", "RescaleSlope", "PixelData",
             "StudyDate", "InstanceNumber", "SamplesPerPixel", "PhotometricInterpretation"]
SHORT_VRS = ["US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "UI", "LO", "PN", "DA", "AT", "CS", "SH", "TM"]
RETYPABLE = ["Rows", "Columns", "PatientName", "StudyDate", "ImagePositionPatient", "PixelSpacing",
             "RescaleIntercept", "InstanceNumber", "SliceThickness", "StudyInstanceUID", "BitsStored"]


@st.composite
def dataset_mutation(draw):
    """A (name, function(Dataset) -> None) pair; the function edits a dataset in place."""
    kind = draw(st.sampled_from(["delete", "absurd", "text", "sop_class", "uid", "pixels"]))
    if kind == "delete":
        kws = draw(st.lists(st.sampled_from(DELETABLE), min_size=1, max_size=3, unique=True))

        def f(ds: Dataset):
            for kw in kws:
                if kw in ds:
                    del ds[kw]
        return f"delete {kws}", f
    if kind == "absurd":
        kw = draw(st.sampled_from(["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames"]))
        val = draw(st.sampled_from([0, 1, 3, 7, 255, 4096, 65535]))

        def f(ds: Dataset):
            setattr(ds, kw, val)
        return f"{kw}={val}", f
    if kind == "text":
        kw = draw(st.sampled_from(["PatientName", "PatientID", "StudyDescription", "SeriesDescription",
                                   "BodyPartExamined", "AccessionNumber", "SpecificCharacterSet"]))
        text = draw(st.one_of(st.text(max_size=80), st.just("\\" * 40), st.just("x" * 3000),
                              st.sampled_from(["ISO_IR 999", "../../etc/passwd", "\x00\x01\x02", "Ünïcödé^Ñame"])))

        def f(ds: Dataset):
            setattr(ds, kw, text)
        return f"{kw}={text[:30]!r}", f
    if kind == "sop_class":
        cls = draw(st.sampled_from(NON_IMAGE_CLASSES))

        def f(ds: Dataset):
            ds.SOPClassUID = cls
            ds.file_meta.MediaStorageSOPClassUID = cls
        return f"SOPClassUID={cls}", f
    if kind == "uid":
        kw = draw(st.sampled_from(["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]))
        val = draw(st.sampled_from(["", " ", "../../../tmp/x", "1." * 100 + "1", "abc", "1..2", "1.2.3\\4.5"]))

        def f(ds: Dataset):
            setattr(ds, kw, val)
        return f"{kw}={val[:20]!r}", f
    # pixels
    n = draw(st.sampled_from([0, 1, 2, 100, 10_000]))

    def f(ds: Dataset):
        ds.PixelData = b"\x01" * n
    return f"PixelData {n} bytes", f


@st.composite
def byte_mutation(draw, body_len: int):
    """A (name, function(bytes) -> bytes) pair editing the dataset part (``body_len`` bytes) of a Part 10 file."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "huge_length", "insert", "retype"]))
    at = draw(st.integers(min_value=0, max_value=1 << 20)) % max(1, body_len)  # stable across body lengths
    if kind == "retype":
        kw = draw(st.sampled_from(RETYPABLE))
        vr = draw(st.sampled_from(SHORT_VRS)).encode()
        tag = tag_for_keyword(kw)
        needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)

        def retype(b: bytes) -> bytes:
            i = b.find(needle)
            return b if i < 0 else b[:i + 4] + vr + b[i + 6:]
        return f"{kw} re-typed as {vr.decode()}", retype
    if kind == "truncate":
        return f"truncate at {at}", lambda b: b[:at]
    if kind == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=16))
        return f"overwrite {len(junk)} at {at}", lambda b: b[:at] + junk + b[at + len(junk):]
    if kind == "insert":
        junk = draw(st.binary(min_size=1, max_size=16))
        return f"insert {len(junk)} at {at}", lambda b: b[:at] + junk + b[at:]
    length = draw(st.sampled_from([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, 0xFFFFFFFF]))

    def f(b: bytes) -> bytes:
        # explicit VR LE: 16-bit lengths follow 'tag VR'; 32-bit after 'tag OB/OW/SQ/UN/UT 00 00'
        i = at
        while i + 12 <= len(b):
            vr = b[i + 4:i + 6]
            if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
                return b[:i + 8] + struct.pack("<I", length) + b[i + 12:]
            if vr.isalpha() and vr.isupper():
                return b[:i + 6] + struct.pack("<H", length & 0xFFFF) + b[i + 8:]
            i += 2
        return b
    return f"huge length 0x{length:X} near {at}", f


def encode_body(ds: Dataset) -> bytes:
    """The dataset (without file meta) encoded explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    body = Dataset()
    body.update({t: ds[t] for t in ds.keys() if t.group != 2})
    write_dataset(buf, body)
    return buf.getvalue()


def part10(meta: Dataset, body: bytes) -> bytes:
    """A DICOM Part 10 file: 128-byte preamble, 'DICM', the file meta group (explicit VR LE), ``body``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue() + body
