"""The receiver's Part 10 framing (node.receive.part10) and pynetdicom reactor wake-ups (node.receive.reactor_wakeup): the file
meta is byte-for-byte what pydicom writes, the spooled file holds the data set exactly as sent, malformed data sets
are refused at the door, and the patched reactors still serve C-ECHO/C-STORE and releases."""
from __future__ import annotations

import struct
import time
import zlib
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from conftest import make_series
from node.receive import reactor_wakeup
from node.store.db import Database, Instance
from node.receive.index import INDEXED_KEYWORDS
from node.receive.part10 import PREAMBLE, file_meta_bytes, read_header
from node.receive.receiver import Receiver
from node.service import make_spool


@pytest.mark.parametrize("source_ae", ["", "SCANNER1", "ODD"])
def test_file_meta_bytes_equal_pydicoms_encoding(source_ae):
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"  # odd length: padded with NUL
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    ours = file_meta_bytes(CTImageStorage, "1.2.826.0.1.3680043.8.498.123", ExplicitVRLittleEndian,
                           implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
                           implementation_version=PYNETDICOM_IMPLEMENTATION_VERSION, source_ae_title=source_ae)
    assert ours == encode_file_meta(meta)
    back = dcmread(BytesIO(PREAMBLE + ours + b"\x08\x00\x18\x00UI\x04\x001.2\x00"))
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.826.0.1.3680043.8.498.123"
    assert back.SOPInstanceUID == "1.2"


def _dataset_bytes(path, ts) -> bytes:
    """The data set of ``path`` alone (no preamble, no file meta), encoded in ``ts``."""
    ds = dcmread(path)
    fp = DicomBytesIO()
    fp.is_implicit_VR = ts == ImplicitVRLittleEndian
    fp.is_little_endian = ts != ExplicitVRBigEndian
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian])
def test_read_header_parses_each_transfer_syntax_up_to_the_pixels(tmp_path, ts):
    path = make_series(tmp_path, n_slices=1, size=16)[0]
    ref = dcmread(path)
    raw = _dataset_bytes(path, ExplicitVRLittleEndian if ts == DeflatedExplicitVRLittleEndian else ts)
    if ts == DeflatedExplicitVRLittleEndian:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = c.compress(raw) + c.flush()
    ds = read_header(BytesIO(raw), ts, INDEXED_KEYWORDS)
    assert "PixelData" not in ds
    for k in ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "SliceThickness", "InstanceNumber"):
        assert ds.get(k) == ref.get(k), k


def test_read_header_refuses_a_malformed_sequence_and_an_unknown_syntax(tmp_path):
    path = make_series(tmp_path, n_slices=1, size=16)[0]
    raw = _dataset_bytes(path, ExplicitVRLittleEndian)
    # a sequence (0008,1115) of undefined length whose first item tag is not an item tag
    bad = b"\x08\x00\x15\x11SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + b"\x12\x34\x56\x78" + b"\x00" * 8
    with pytest.raises(Exception):
        read_header(BytesIO(bad), ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        read_header(BytesIO(raw), "1.2.3.4")


def _deflated(raw: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def test_deflated_data_sets_are_walked_as_they_are_inflated(tmp_path):
    """A deflated data set's element structure is checked like any other (node.receive.part10.check_complete, and
    read_header in its one pass), its pixel data skipped by Inflater.skip without being kept."""
    from node.receive.part10 import Inflater, IncompleteDataset, check_complete
    path = make_series(tmp_path, n_slices=1, size=16)[0]
    raw = _dataset_bytes(path, ExplicitVRLittleEndian)
    pixels_at = raw.rfind(b"\xe0\x7f\x10\x00")
    assert check_complete(_deflated(raw), DeflatedExplicitVRLittleEndian) is True
    assert check_complete(_deflated(raw[:pixels_at]), DeflatedExplicitVRLittleEndian) is False  # no pixel data
    for cut in (raw[:-6], raw[:pixels_at + 5]):  # in the pixel data's value, in its header
        with pytest.raises(IncompleteDataset, match="cut short"):
            check_complete(_deflated(cut), DeflatedExplicitVRLittleEndian)
        with pytest.raises(IncompleteDataset, match="cut short"):
            read_header(BytesIO(_deflated(cut)), DeflatedExplicitVRLittleEndian)
    walked: dict = {}
    read_header(BytesIO(_deflated(raw)), DeflatedExplicitVRLittleEndian, structure=walked)
    assert walked == {"has_pixels": True}
    big = _deflated(bytes(8 << 20))  # skipping 8 MiB keeps none of it; reading back before the skip is refused
    src = Inflater(BytesIO(big), limit=16 << 20)
    assert src.read(10) == bytes(10) and src.skip(8 << 20) == (8 << 20) - 10 and src.tell() == 8 << 20
    assert len(src._buf) == 0 and src.total == 8 << 20 and src.read(1) == b""
    src.seek(0)
    with pytest.raises(ValueError, match="skipped without keeping"):
        src.read(1)


def test_spooled_file_is_the_sent_data_set_with_our_file_meta(node_config, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the SCU sends the file's bytes as they are
    cfg, _ = node_config()
    db = Database(cfg.node.database_url())
    rcv = Receiver(cfg, db, make_spool(cfg))
    rcv.start()
    try:
        assert reactor_wakeup.installed()
        files = make_series(tmp_path / "in", n_slices=3, size=32)
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", cfg.node.port, ae_title="TOTALREG")
        assert assoc.is_established
        t0 = time.monotonic()
        statuses = [int(assoc.send_c_store(f).Status) for f in files]
        print("stores", time.monotonic() - t0)
        assert statuses == [0, 0, 0]
        assert int(assoc.send_c_echo().Status) == 0
        print("echo", time.monotonic() - t0)
        assoc.release()
        print("release", time.monotonic() - t0)
        assert time.monotonic() - t0 < 10
        with db.session() as s:
            paths = {r.sop_instance_uid: r.path for r in s.scalars(select(Instance))}
        for f in files:
            sent = f.read_bytes()
            sent_meta_end = 144 + struct.unpack("<I", sent[140:144])[0]
            ref = dcmread(f)
            stored = open(paths[str(ref.SOPInstanceUID)], "rb").read()
            meta_end = 144 + struct.unpack("<I", stored[140:144])[0]
            assert stored[meta_end:] == sent[sent_meta_end:]  # the data set exactly as received
            back = dcmread(paths[str(ref.SOPInstanceUID)])
            assert back.file_meta.SourceApplicationEntityTitle == "SCANNER1"
            assert back.file_meta.MediaStorageSOPInstanceUID == ref.SOPInstanceUID
            assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (back.pixel_array == ref.pixel_array).all()
    finally:
        rcv.stop()
        db.dispose()


def test_is_complete_finds_files_cut_short(tmp_path):
    from node.receive.part10 import is_complete
    raw = make_series(tmp_path, n_slices=1, size=32)[0].read_bytes()
    assert is_complete(dcmread(BytesIO(raw)), raw)
    for cut in (len(raw) - 1, len(raw) - 700, 650, 200):  # inside the pixels, at header boundaries, in the meta
        part = raw[:cut]
        try:
            ds = dcmread(BytesIO(part))
        except Exception:  # noqa: BLE001 - unreadable is incomplete too
            continue
        assert not is_complete(ds, part), cut
