"""``kind: folder`` — atomic copy (temporary name, fsync, rename, fsync of the folder) to
``{path}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``. Check: the folder exists and is writable."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.destinations import DestinationKind, Options


class FolderOptions(Options):
    """A folder on this machine (or a mount)."""

    path: Path | None = None


def folder_target(root: Path, ds: Dataset) -> Path:
    """Where the folder destination puts one instance: root/StudyUID/SeriesUID/SOPInstanceUID.dcm."""
    return Path(root) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Folder(DestinationKind):
    """A folder."""

    name = "folder"
    label = "Folder"
    options = FolderOptions
    required = ("path",)

    def address(self, dest) -> str:
        """The folder's path."""
        return str(dest.path)

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        """Each file copied atomically and fsynced; the number copied (OSError on failure)."""
        root = Path(dest.path)
        acked = 0
        for f in files:
            ds = dcmread(f, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            target = folder_target(root, ds)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, open(f, "rb") as src:
                    shutil.copyfileobj(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
            acked += 1
        return acked

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        """The folder exists and is writable."""
        path = Path(dest.path)
        ok = path.is_dir() and os.access(path, os.W_OK)
        return ok, "folder exists and is writable" if ok else f"folder {path} does not exist or is not writable"


KIND = Folder()
