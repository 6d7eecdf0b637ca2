"""Geometry helpers between SimpleITK images and DICOM Image Plane attributes (LPS, mm).

SimpleITK's direction matrix holds the image axes as columns (index i, j, k directions in LPS).  DICOM
ImageOrientationPatient (IOP) is the row direction (along increasing column index = ITK axis i) followed by the
column direction (along increasing row index = ITK axis j).  PixelSpacing is (row spacing, column spacing) =
(spacing_j, spacing_i).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def direction_matrix(image: sitk.Image) -> np.ndarray:
    """3x3 direction matrix of a 3D image; column c is the LPS unit vector of index axis c."""
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def iop_of(image: sitk.Image) -> list[float]:
    """DICOM ImageOrientationPatient (row cosines then column cosines, LPS) of a 3D SimpleITK image."""
    d = direction_matrix(image)
    return [*d[:, 0].tolist(), *d[:, 1].tolist()]


def slice_positions(image: sitk.Image) -> list[np.ndarray]:
    """ImagePositionPatient (LPS mm, centre of the first voxel) of every slice k of a 3D image."""
    d = direction_matrix(image)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    sz = image.GetSpacing()[2]
    return [origin + k * sz * d[:, 2] for k in range(image.GetSize()[2])]


def pixel_spacing_of(image: sitk.Image) -> list[float]:
    """DICOM PixelSpacing (row spacing, column spacing) in mm of a SimpleITK image."""
    sp = image.GetSpacing()
    return [float(sp[1]), float(sp[0])]


def normal_from_iop(iop) -> np.ndarray:
    """Unit slice normal (row x column cosines) for a DICOM ImageOrientationPatient."""
    r = np.asarray(iop[:3], dtype=float)
    c = np.asarray(iop[3:6], dtype=float)
    n = np.cross(r, c)
    return n / np.linalg.norm(n)


def direction_tuple(axes) -> tuple[float, ...]:
    """Row-major 3x3 direction cosines (columns = image axes in LPS) for ``SetDirection``, with components below
    1e-9 in magnitude set to 0: they are rounding noise of the DS strings, and subnormal values (e.g. 4e-311) make
    ITK's SVD-based matrix inverse fail, after which every resampled point falls "outside" the image."""
    a = np.asarray(axes, dtype=float)
    return tuple(np.where(np.abs(a) < 1e-9, 0.0, a).ravel().tolist())
