"""Read and write 3D images (NIfTI, MHA/MHD, NRRD) with clear one-line errors.

Images are SimpleITK images in LPS patient coordinates (mm), whatever the file format stores on disk (SimpleITK
converts NIfTI's RAS header to LPS on read and back on write).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import SimpleITK as sitk

from .errors import RegistrationInputError

#: file name endings this module reads and writes
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def _suffix_ok(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


def read_image(path: str | os.PathLike, what: str = "image", allow_vector: bool = False) -> sitk.Image:
    """Read a 3D image file (NIfTI/MHA/MHD/NRRD) and return it as a SimpleITK image (LPS, mm).

    ``what`` names the image in error messages (e.g. "fixed image"). Raises :class:`RegistrationInputError` with one
    line when the file is missing, unreadable/damaged, not 3D (a single slice counts as 2D), or (unless
    ``allow_vector``) has more than one component per voxel. A 4D file whose 4th dimension has size 1 is accepted
    and returned as 3D.
    """
    p = Path(path)
    if not p.exists():
        raise RegistrationInputError(f"{what} not found: {p}")
    if p.is_dir():
        raise RegistrationInputError(f"{what} {p} is a folder, not an image file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise RegistrationInputError(
            f"cannot read {what} {p}: not a NIfTI/MHA/NRRD image, or the file is damaged") from None
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    if dim == 4 and size[3] == 1:
        reader.SetExtractIndex([0, 0, 0, 0])
        reader.SetExtractSize(size[:3] + [0])
        dim, size = 3, size[:3]
    if dim != 3:
        raise RegistrationInputError(f"{what} {p} is a {dim}D image; a 3D CT volume is needed")
    if min(size) < 2:
        raise RegistrationInputError(
            f"{what} {p} has a single slice ({size[0]}x{size[1]}x{size[2]}, i.e. 2D); a 3D CT volume is needed")
    ncomp = reader.GetNumberOfComponents()
    if ncomp != 1 and not allow_vector:
        raise RegistrationInputError(f"{what} {p} has {ncomp} values per voxel; a single-channel CT is needed")
    try:
        img = reader.Execute()
    except RuntimeError:
        raise RegistrationInputError(f"cannot read {what} {p}: the file is truncated or damaged") from None
    check_image(img, what=f"{what} {p}", allow_vector=allow_vector)
    return img


def check_image(img: sitk.Image, what: str = "image", allow_vector: bool = False) -> None:
    """Raise :class:`RegistrationInputError` unless ``img`` is a usable 3D scalar volume with sane geometry."""
    import numpy as np

    if img.GetDimension() != 3:
        raise RegistrationInputError(f"{what} is a {img.GetDimension()}D image; a 3D CT volume is needed")
    if min(img.GetSize()) < 2:
        raise RegistrationInputError(f"{what} has a single slice (2D); a 3D CT volume is needed")
    if img.GetNumberOfComponentsPerPixel() != 1 and not allow_vector:
        raise RegistrationInputError(f"{what} has several values per voxel; a single-channel CT is needed")
    sp = np.asarray(img.GetSpacing())
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise RegistrationInputError(f"{what} has invalid voxel spacing {tuple(sp)}")
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1) > 1e-3:
        raise RegistrationInputError(f"{what} has an invalid (non-orthonormal) orientation matrix")


def _gzip_threads() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return 2


def _write_nii_gz(img: sitk.Image, path: Path, level: int) -> None:
    """Write ``.nii.gz``: ITK writes the plain NIfTI (geometry handled by ITK), ISA-L's igzip compresses it.

    A .nii.gz is exactly a gzip stream of the .nii; igzip compresses ~10x faster than ITK's zlib, on several
    threads, which matters for whole-body displacement fields (1.5 GB of float32 vectors: ~3 s instead of ~60 s).
    ITK writes into a named pipe that the compressor reads, so the plain file never touches the disk (fallback:
    a temporary plain file next to the output where a pipe cannot be made).
    """
    try:
        from isal import igzip_threaded

        level = min(max(level, 0), 3)  # ISA-L levels are 0..3

        def open_gz(target):
            return igzip_threaded.open(target, "wb", compresslevel=level, threads=_gzip_threads())
    except ImportError:  # pragma: no cover - isal is a dependency; plain gzip is the fallback
        import gzip

        def open_gz(target):
            return gzip.open(target, "wb", compresslevel=level)
    import tempfile
    import threading

    pipe_dir = None
    try:
        pipe_dir = Path(tempfile.mkdtemp(prefix="totalreg-nii-"))
        source = pipe_dir / "image.nii"
        os.mkfifo(source, 0o600)
    except OSError:
        if pipe_dir is not None:
            shutil.rmtree(pipe_dir, ignore_errors=True)
        pipe_dir = None
        base = path.name[:-len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.name
        source = path.with_name(base + ".plain.nii")
    errors: list[BaseException] = []

    def compress() -> None:
        try:
            with open(source, "rb") as src, open_gz(path) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            try:  # drain the pipe so that ITK's writer sees EOF/EPIPE and returns instead of blocking
                with open(source, "rb") as src:
                    while src.read(16 << 20):
                        pass
            except OSError:
                pass

    try:
        if pipe_dir is None:
            sitk.WriteImage(img, str(source), False)
            compress()
        else:
            worker = threading.Thread(target=compress, name="nii-gzip", daemon=True)
            worker.start()
            try:
                sitk.WriteImage(img, str(source), False)
            finally:
                # if ITK failed before it opened the pipe, the reader still waits in open(): connect and close a
                # writer so that it sees EOF (ENXIO: the reader has not reached open() yet - try again)
                while worker.is_alive():
                    try:
                        os.close(os.open(source, os.O_WRONLY | os.O_NONBLOCK))
                        break
                    except OSError:
                        worker.join(0.01)
                worker.join()
        if errors:
            raise RuntimeError(f"compressing failed: {errors[0]}")
    finally:
        if pipe_dir is not None:
            shutil.rmtree(pipe_dir, ignore_errors=True)
        else:
            source.unlink(missing_ok=True)


def write_image(img: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write ``img`` to ``path`` (format from the suffix) atomically: a temporary file renamed into place
    (single-file formats; .mhd/.nhdr header+data pairs are written in place).

    Parent folders are created. ``compression_level`` (0-9) applies to .nii.gz/.mha/.nrrd; 1 is fast.
    """
    p = Path(path)
    if not _suffix_ok(p):
        raise RegistrationInputError(f"cannot write {p}: use one of {', '.join(SUPPORTED_SUFFIXES)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.name.lower().endswith((".mhd", ".nhdr")):  # header + data file pair: the data file is named by ITK
        try:
            sitk.WriteImage(img, str(p), compression_level > 0, compression_level if compression_level > 0 else -1)
        except RuntimeError as exc:
            raise RegistrationInputError(f"cannot write {p}: {str(exc).splitlines()[-1]}") from None
        return p
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    try:
        if p.name.lower().endswith(".nii.gz") and compression_level > 0:
            _write_nii_gz(img, tmp, compression_level)
        else:
            compress = compression_level > 0 and not p.name.lower().endswith(".nii")
            sitk.WriteImage(img, str(tmp), compress, compression_level if compress else -1)
        os.replace(tmp, p)
    except RuntimeError as exc:
        tmp.unlink(missing_ok=True)
        raise RegistrationInputError(f"cannot write {p}: {str(exc).splitlines()[-1]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return p
