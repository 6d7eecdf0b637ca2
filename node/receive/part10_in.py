"""Ingest of a DICOM Part 10 byte string that arrived over HTTP (a STOW-RS part, a WADO-RS answer part) by the
same path and the same rules as a C-STORE: :func:`node.receive.ingest.ingest_dataset` with the node's size and
inflation limits, the data set's bytes kept as sent, the File Meta Information written by the node (naming the
sender), the file fsynced and indexed before this returns.

The result is a :class:`Stored` with the DIMSE status the SCP would have answered (0x0000, 0xA700, 0xC210, 0xC212,
0xC213), the plain message, and the UIDs read from the sender's File Meta Information (for failure lists).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from node.receive.ingest import STATUS_CANNOT_UNDERSTAND, ingest_dataset
from node.receive.part10 import PREAMBLE, file_meta_bytes

MAX_META_BYTES = 64 * 1024  # a File Meta group longer than this is refused (it is a few hundred bytes)


@dataclass(frozen=True)
class Stored:
    """Outcome of one instance: DIMSE status (0 = stored), message, and the UIDs its File Meta names ('' if none)."""

    status: int
    message: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        """True when the instance is on disk and indexed."""
        return self.status == 0


def split_part10(data: bytes) -> tuple[dict[str, str], int]:
    """The File Meta UIDs of a Part 10 byte string (``sop_class``, ``sop_instance``, ``transfer_syntax``) and
    where its data set starts; ValueError when it is not Part 10 (no ``DICM``, no group length, no transfer
    syntax)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no 'DICM' at byte 128)")
    if data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        raise ValueError("the File Meta Information has no group length (0002,0000)")
    length = struct.unpack("<I", data[140:144])[0]
    end = 144 + length
    if length > MAX_META_BYTES or end > len(data):
        raise ValueError(f"the File Meta Information group length {length} is not plausible")
    fp = BytesIO(data[:end])
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    uids = {"sop_class": str(meta.get("MediaStorageSOPClassUID", "") or "").strip(),
            "sop_instance": str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip(),
            "transfer_syntax": str(meta.get("TransferSyntaxUID", "") or "").strip()}
    if not uids["transfer_syntax"]:
        raise ValueError("the File Meta Information names no Transfer Syntax UID")
    return uids, end


def ingest_part10(db, spool, cfg, data: bytes, *, calling_ae: str, writer=None) -> Stored:
    """Store one Part 10 instance like a C-STORE (see the module docstring); never raises for bad input.

    ``cfg``: the :class:`node.config.NodeConfig` (size limits, late-instance policy); ``calling_ae``: who sent it
    (kept in the index and in the file's Source AE Title, at most 16 characters)."""
    try:
        uids, start = split_part10(data)
        if not (uids["sop_class"] and uids["sop_instance"]):
            raise ValueError("the File Meta Information names no SOP Class UID or SOP Instance UID")
        meta = PREAMBLE + file_meta_bytes(uids["sop_class"], uids["sop_instance"], uids["transfer_syntax"],
                                          implementation_class_uid=PYDICOM_IMPLEMENTATION_UID,
                                          source_ae_title=calling_ae[:16])
    except Exception as exc:  # noqa: BLE001 - anything unreadable: 'cannot understand', as the SCP answers
        got = locals().get("uids") or {}
        return Stored(STATUS_CANNOT_UNDERSTAND, f"not a readable DICOM Part 10 instance: {str(exc)[:200]}",
                      got.get("sop_class", ""), got.get("sop_instance", ""))
    n = cfg.node
    status, message = ingest_dataset(db, spool, meta, BytesIO(data[start:]), uids["transfer_syntax"],
                                     calling_ae=calling_ae[:16], late_policy=cfg.completion.late_instances,
                                     writer=writer, max_dataset_bytes=n.max_dataset_bytes,
                                     max_inflation_ratio=n.max_inflation_ratio,
                                     affected_sop_uid=uids["sop_instance"] or None)
    return Stored(status, message, uids["sop_class"], uids["sop_instance"])
