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


def _write_nii_gz(img: sitk.Image, path: Path, level: int) -> None:
    """Write ``.nii.gz``: ITK writes the plain NIfTI (geometry handled by ITK), ISA-L's igzip compresses it.

    A .nii.gz is exactly a gzip stream of the .nii; igzip compresses ~10x faster than ITK's zlib, which matters for
    whole-body displacement fields (1.5 GB of float32 vectors: ~5 s instead of ~60 s on one core).
    """
    try:
        from isal import igzip as gz
        level = min(max(level, 0), 3)  # ISA-L levels are 0..3
    except ImportError:  # pragma: no cover - isal is a dependency; plain gzip is the fallback
        import gzip as gz
    base = path.name[:-len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.name
    plain = path.with_name(base + ".plain.nii")
    try:
        sitk.WriteImage(img, str(plain), False)
        with open(plain, "rb") as src, gz.open(path, "wb", compresslevel=level) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    finally:
        plain.unlink(missing_ok=True)


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
