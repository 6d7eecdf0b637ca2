"""Preprocessing: body mask, body box, HU window normalisation (arrays [z,y,x] on axis-aligned LPS grids)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import RegistrationInputError
from .geometry import WorkGrid, physical_bounds, shrink_for


def body_mask(hu: np.ndarray, spacing: float, threshold: float = -500.0) -> np.ndarray:
    """Patient body on an isotropic grid (``spacing`` mm): HU > threshold, opened (~4 mm) to cut the table off,
    largest connected component, axial holes (lungs, bowel gas) filled. Returns bool [z,y,x]."""
    m = hu > threshold
    r = max(1, int(round(4.0 / spacing)))
    if r >= 1 and spacing <= 6:
        m = ndimage.binary_opening(m, structure=ndimage.generate_binary_structure(3, 1), iterations=r)
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    m = lab == int(np.argmax(counts))
    for k in range(m.shape[0]):  # axial (z) slices of an LPS-aligned grid
        if m[k].any():
            m[k] = ndimage.binary_fill_holes(m[k])
    return m


def normalise(hu, window: tuple[float, float]):
    """Map HU linearly so that window[0] -> 0 and window[1] -> 1, clipped (numpy or torch)."""
    lo, hi = window
    if isinstance(hu, np.ndarray):
        return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return (hu.clamp(lo, hi) - lo) / (hi - lo)


class Prepared:
    """An image prepared for registration: its coarse axis-aligned grid, body mask, and body box (mm)."""

    def __init__(self, image: sitk.Image, what: str, spacing: float, threshold: float, margin: float):
        self.image = image
        lo, hi = physical_bounds(image)
        self.fov = (lo, hi)
        self.coarse_grid = WorkGrid.covering(lo, hi, spacing)
        self.coarse_src = shrink_for(image, spacing)
        self.coarse = self.coarse_grid.resample(self.coarse_src, default=-1024.0)
        self.mask = body_mask(self.coarse, spacing, threshold)
        if self.mask.sum() < 10:
            raise RegistrationInputError(
                f"the {what} contains no body (no voxels above {threshold:.0f} HU); is it a CT in HU?")
        idx = np.argwhere(self.mask)  # z, y, x
        o = np.asarray(self.coarse_grid.origin)
        blo = o + spacing * idx.min(0)[::-1] - margin
        bhi = o + spacing * idx.max(0)[::-1] + margin
        self.body_lo = np.maximum(blo, lo - spacing)
        self.body_hi = np.minimum(bhi, hi + spacing)
        zz = idx * spacing
        self.centroid = o + zz.mean(0)[::-1]

    def grid(self, spacing: float) -> WorkGrid:
        """Axis-aligned grid at ``spacing`` mm over the body box."""
        return WorkGrid.covering(self.body_lo, self.body_hi, spacing)

    def mask_on(self, grid: WorkGrid) -> np.ndarray:
        """Body mask resampled (nearest) onto ``grid``; bool [z,y,x]."""
        m = self.coarse_grid.to_image(self.mask.astype(np.uint8))
        return grid.resample(m, default=0, interpolator=sitk.sitkNearestNeighbor) > 0.5
