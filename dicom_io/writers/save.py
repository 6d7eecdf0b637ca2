"""Save result objects all-or-nothing: encode everything into a temporary sibling folder, then rename."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from pydicom.dataset import Dataset


def object_filename(ds: Dataset) -> str:
    """File name for a result object: '<Modality>_<SOPInstanceUID>.dcm'."""
    return f"{ds.get('Modality', 'OT')}_{ds.SOPInstanceUID}.dcm"


def save_objects(datasets: Iterable[Dataset], folder: str | os.PathLike) -> list[Path]:
    """Write every dataset (DICOM Part 10, `enforce_file_format=True`) into `folder`, atomically.

    All files are first encoded into a temporary folder next to `folder` (same file system).  If anything fails,
    the temporary folder is removed and nothing appears in `folder`.  Then the temporary folder is renamed to
    `folder` when that does not exist yet, or each file is moved in with os.replace (atomic per file) when it
    does.  Returns the final paths in input order.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    datasets = list(datasets)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        names = []
        for ds in datasets:
            name = object_filename(ds)
            path = tmp / name
            ds.save_as(path, enforce_file_format=True)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            names.append(name)
        if not folder.exists():
            os.rename(tmp, folder)
        else:
            for name in names:
                os.replace(tmp / name, folder / name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]
