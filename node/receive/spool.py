"""The spool: received DICOM files on disk, written durably before the sender is acknowledged.

Layout: ``<data_dir>/spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (a UID that is not a
plain dotted-digit string is replaced by its SHA-1 hex so no sender can steer paths).  Folders are 0700, files
0600.  A write goes to a temporary file in the target folder, is flushed and ``fsync``-ed, renamed over the final
name and the folder is ``fsync``-ed, so after a crash a file is either complete or absent.

:meth:`Spool.write` does all of that per call.  The receiver's hot path uses :meth:`Spool.write_data` instead:
a NEW file is renamed to its name first and then ``fdatasync``-ed (one journal commit covers the data and the
rename; a crash before it returns can leave an incomplete file that was never acknowledged, which start-up
recovery removes); a file that replaces one keeps the safe order.  The folder ``fsync`` is left to the caller,
which does it once per folder for a whole batch of instances (:class:`node.receive.index.IndexWriter`) BEFORE the batch is
committed to the database and acknowledged — so an acknowledged instance's data and name are always durable.

Free-space checks (:meth:`Spool.check_space`) ask the file system at most once per ``space_check_s`` (1 s) and
subtract what this spool wrote since; a full disk (ENOSPC) resets that estimate to 0 until the next real check.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolFullError(OSError):
    """Not enough free disk space in the spool (below ``node.min_free_disk_mb``, or ENOSPC)."""


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID: the UID itself when it is dotted digits (≤ 64), else its SHA-1 hex."""
    uid = (uid or "").strip()
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


def _mkdirs(path: Path, root: Path) -> None:
    """Create ``path`` (0700) and its parents below ``root``, fsync-ing each new folder's parent."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def _write_all(fd: int, parts: list) -> None:
    """Write every buffer of ``parts`` to ``fd`` in order (``writev``; retried after a short write)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:1024])
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename/creation inside it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable file store under ``root`` (normally ``<data_dir>/spool``)."""

    def __init__(self, root: str | Path, min_free_mb: float = 0, fsync: bool = True, space_check_s: float = 1.0):
        self.root = Path(root).resolve()
        self.min_free_mb = float(min_free_mb)
        self.fsync = fsync
        self.space_check_s = float(space_check_s)
        self._space_lock = threading.Lock()
        self._free_at = -1e18  # monotonic time of the last real free-space measurement
        self._free_bytes = 0  # free bytes measured then, minus what this spool wrote since
        self._known_dirs: set[Path] = set()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance is (or would be) stored."""
        return self.root / safe_name(study_uid) / safe_name(series_uid) / f"{safe_name(sop_uid)}.dcm"

    def free_mb(self) -> float:
        """Free disk space in the spool's file system, in MiB."""
        return shutil.disk_usage(self.root).free / (1024 * 1024)

    def _estimated_free_mb(self) -> float:
        """Free space in MiB: measured at most once per ``space_check_s``, minus bytes written since."""
        with self._space_lock:
            now = time.monotonic()
            if now - self._free_at >= self.space_check_s:
                self._free_bytes = shutil.disk_usage(self.root).free
                self._free_at = now
            return self._free_bytes / (1024 * 1024)

    def _account(self, nbytes: int, full: bool = False) -> None:
        with self._space_lock:
            self._free_bytes = 0 if full else self._free_bytes - nbytes

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`SpoolFullError` if writing ``incoming_bytes`` would leave less than ``min_free_mb``.

        The free space is measured at most once per second (``space_check_s``); in between it is the last
        measurement minus what this spool wrote since."""
        free = self._estimated_free_mb()
        if free - incoming_bytes / (1024 * 1024) < self.min_free_mb:
            raise SpoolFullError(f"spool disk has {free:.0f} MB free, below the {self.min_free_mb:.0f} MB minimum "
                                 f"(node.min_free_disk_mb)")

    def write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync folder).

        Raises :class:`SpoolFullError` when the disk is full (nothing half-written is left behind)."""
        _mkdirs(path.parent, self.root)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            if self.fsync:
                fsync_dir(path.parent)
        except OSError as exc:
            self._write_failed(tmp, path, exc)
        self._account(len(data))

    def write_data(self, path: Path, data: bytes | list[bytes]) -> Path:
        """Write ``data`` (bytes, or a list of byte strings written one after the other with ``writev``, so a
        received data set needs no copy to be joined to its file meta) to ``path`` WITHOUT the folder fsync: a
        temporary file renamed to ``path``, then ``fdatasync`` (a new file; until that returns a crash can leave it
        incomplete under its name, which is why it is not acknowledged before and why start-up recovery removes
        unreadable spool files) or ``fdatasync`` then rename (replacing a file: the old one stays whole).

        Returns the folder whose ``fsync`` makes the rename durable: the caller must :func:`fsync_dir` it before it
        treats the file as stored (the receiver does it once per folder and batch).  New folders are created and
        made durable here.  Raises :class:`SpoolFullError` when the disk is full (nothing half-written is left)."""
        folder = path.parent
        if folder not in self._known_dirs:
            _mkdirs(folder, self.root)
            if len(self._known_dirs) > 10_000:
                self._known_dirs.clear()
            self._known_dirs.add(folder)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
        except FileNotFoundError:  # the folder was removed meanwhile (retention, admin): create it again
            self._known_dirs.discard(folder)
            _mkdirs(folder, self.root)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
        replacing = os.path.lexists(path)
        renamed = False
        try:
            try:  # mkstemp made the file 0600
                _write_all(fd, [data] if isinstance(data, (bytes, bytearray, memoryview)) else data)
                if self.fsync and not replacing:
                    # a new name: rename first, then one fdatasync commits the data and (ext4, XFS: same journal
                    # transaction) the rename; the caller's folder fsync then has nothing left to commit
                    os.replace(tmp, path)
                    renamed = True
                    os.fdatasync(fd)
                elif self.fsync:  # replacing an acknowledged file: the old one stays until the new one is durable
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if not renamed:
                os.replace(tmp, path)
        except OSError as exc:
            if renamed:  # never acknowledged and maybe incomplete: not left under its final name
                tmp = str(path)
            self._write_failed(tmp, path, exc)
        self._account(len(data) if isinstance(data, (bytes, bytearray, memoryview)) else sum(map(len, data)))
        return folder

    def _write_failed(self, tmp: str, path: Path, exc: OSError) -> None:
        """Remove the temporary file of a failed write and re-raise: SpoolFullError when the disk is full."""
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            self._account(0, full=True)
            raise SpoolFullError(f"spool disk is full while writing {path.name}") from None
        raise exc

    def cleanup_partials(self) -> int:
        """Remove temporary files left by a crash mid-write; returns how many were removed."""
        n = 0
        for p in self.root.rglob(".tmp-*.part"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n
