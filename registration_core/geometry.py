"""Axis-aligned LPS working grids and image geometry helpers (mm, LPS).

A :class:`WorkGrid` has identity direction cosines: voxel index (i, j, k) sits at world point
``origin + spacing * (i, j, k)`` (x=L, y=P, z=S). Arrays on a grid are indexed ``[k, j, i]`` (z, y, x), like
``sitk.GetArrayFromImage``. Torch tensors use the same order ``[N, C, D=z, H=y, W=x]``; a ``grid_sample`` grid's
last dimension is ordered (x, y, z) and normalised with ``align_corners=True`` over the grid's extent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class WorkGrid:
    """Axis-aligned grid: origin (x, y, z) mm of voxel 0, isotropic ``spacing`` mm, ``size`` (nx, ny, nz)."""

    origin: tuple[float, float, float]
    spacing: float
    size: tuple[int, int, int]

    @staticmethod
    def covering(lo, hi, spacing: float) -> "WorkGrid":
        """Smallest grid at ``spacing`` whose voxel centres cover the box [lo, hi] (mm, x/y/z)."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        n = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 2)
        centre = (lo + hi) / 2
        origin = centre - spacing * (n - 1) / 2
        return WorkGrid(tuple(map(float, origin)), float(spacing), tuple(int(v) for v in n))

    @property
    def extent(self) -> np.ndarray:
        """Distance (mm) between first and last voxel centres along x, y, z."""
        return self.spacing * (np.asarray(self.size, float) - 1)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.size[::-1])

    def resized(self, spacing: float) -> "WorkGrid":
        """Same box (first/last voxel centres kept), about ``spacing`` mm; spacing becomes extent/(n-1) (min)."""
        n = np.maximum(np.round(self.extent / spacing).astype(int) + 1, 2)
        return WorkGrid(self.origin, float(spacing), tuple(int(v) for v in n))

    def resample(self, image: sitk.Image, transform: sitk.Transform | None = None, default: float = -1024.0,
                 interpolator=sitk.sitkLinear, extrapolate: bool = False) -> np.ndarray:
        """Resample ``image`` onto this grid (through ``transform``: grid point -> image point); float32 [z,y,x].
        Outside the image: ``default``, or with ``extrapolate`` the nearest voxel's value (no artificial edge)."""
        f = sitk.ResampleImageFilter()
        f.SetSize([int(v) for v in self.size])
        f.SetOutputSpacing([self.spacing] * 3)
        f.SetOutputOrigin(self.origin)
        f.SetOutputDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
        f.SetInterpolator(interpolator)
        f.SetDefaultPixelValue(float(default))
        f.SetOutputPixelType(sitk.sitkFloat32)
        f.SetUseNearestNeighborExtrapolator(bool(extrapolate))
        if transform is not None:
            f.SetTransform(transform)
        return sitk.GetArrayFromImage(f.Execute(image))

    def to_image(self, arr: np.ndarray) -> sitk.Image:
        """Wrap a [z,y,x] (or [z,y,x,3] vector) array as a SimpleITK image on this grid."""
        img = sitk.GetImageFromArray(arr, isVector=arr.ndim == 4)
        img.SetOrigin(self.origin)
        img.SetSpacing([self.spacing] * 3)
        return img


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (mm) of the image's voxel centres: (lo, hi) as (x, y, z)."""
    size = np.asarray(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in corners])
    return pts.min(0), pts.max(0)


def index_to_world(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with world = A @ index + b (index as (i, j, k), world LPS mm)."""
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return d @ np.diag(image.GetSpacing()), np.asarray(image.GetOrigin(), float)


def inside_image(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """True where LPS points (mm, [..., 3]) lie in ``image``'s field of view: continuous index within half a voxel
    of its first and last voxel centres on every axis. bool [...]."""
    a, b = index_to_world(image)
    idx = (np.asarray(pts, float) - b) @ np.linalg.inv(a).T
    return np.all((idx >= -0.5) & (idx <= np.asarray(image.GetSize()) - 0.5), -1)


def shrink_for(image: sitk.Image, target_spacing: float) -> sitk.Image:
    """Block-average ``image`` by integer factors so that no axis is finer than about ``target_spacing``/1.5.

    Cheap anti-aliasing before linear resampling to a coarser grid; returns float32.
    """
    sp = np.asarray(image.GetSpacing())
    factors = [max(1, int(np.floor(target_spacing / s / 1.0))) for s in sp]
    img = sitk.BinShrink(image, factors) if max(factors) > 1 else image  # shrink first: no full-size copy
    return sitk.Cast(img, sitk.sitkFloat32) if img.GetPixelID() != sitk.sitkFloat32 else img
