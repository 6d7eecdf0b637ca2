"""Warping through displacement fields, and the full-resolution total field on the fixed grid.

Convention (docs/CONTRACTS.md): a displacement ``d`` on the fixed grid (vector float64, mm, LPS) maps fixed point
p to moving point p + d(p); ``warp_image`` samples the moving image there (what
``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(d))`` does), in z-slabs with torch so that a
512x512x500 volume needs no full-size coordinate arrays. Linear sampling follows ITK: a point is inside when its
continuous index lies within [-0.5, n-0.5] (edge voxels extend half a voxel), otherwise ``default_value``.
"""
from __future__ import annotations

import ctypes

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .geometry import WorkGrid, index_to_world

_SLAB_POINTS = 1_000_000  # points per slab: temporaries stay ~12 MB, reused by the allocator (no page-fault churn)


def writable_array(img: sitk.Image) -> np.ndarray:
    """Writable numpy view [z, y, x(, c)] on a SimpleITK image's own buffer (no copy)."""
    view = sitk.GetArrayViewFromImage(img)
    buf = (ctypes.c_char * view.nbytes).from_address(view.ctypes.data)
    arr = np.frombuffer(buf, dtype=view.dtype).reshape(view.shape)
    return arr


def _new_like(ref: sitk.Image, pixel_id, ncomp: int = 1) -> sitk.Image:
    img = sitk.Image(ref.GetSize(), pixel_id, ncomp) if ncomp > 1 else sitk.Image(ref.GetSize(), pixel_id)
    img.CopyInformation(ref)
    return img


class _IndexAffine:
    """An affine function of a reference image's voxel index, evaluated slab by slab in float32:
    ``out = L @ (i, j, k) + c`` (L [C, 3], c [C]) as a tensor [nz, ny, nx, C], without any world-coordinate array.

    Composing the geometry (index -> world -> grid) into one float64 matrix first keeps float32 evaluation
    exact to ~1e-4 mm: no large world coordinates are ever subtracted from each other in float32."""

    def __init__(self, lin: np.ndarray, const: np.ndarray, nx: int, ny: int, device):
        self.lin = torch.as_tensor(np.asarray(lin, np.float64), dtype=torch.float32, device=device)
        self.const = torch.as_tensor(np.asarray(const, np.float64), dtype=torch.float32, device=device)
        self.i = torch.arange(nx, device=device, dtype=torch.float32)
        self.j = torch.arange(ny, device=device, dtype=torch.float32)
        self.device = device

    def __call__(self, z0: int, z1: int) -> torch.Tensor:
        k = torch.arange(z0, z1, device=self.device, dtype=torch.float32)
        ll, c = self.lin, self.const
        out = (self.i[None, None, :, None] * ll[:, 0]) + (self.j[None, :, None, None] * ll[:, 1])
        return out + (k[:, None, None, None] * ll[:, 2] + c)


class _Sampler:
    """Samples an image (linear or nearest, ITK's inside rule) at points given by their continuous index in
    the image, normalised to grid_sample units: ``norm = S @ index - 1`` with S = diag(2 / (size - 1)).

    ``to_norm(world_lin, world_const)`` turns an affine map to world points (mm) into one to those units."""

    def __init__(self, image: sitk.Image, device, mode: str = "bilinear", default: float = 0.0):
        a, b = index_to_world(image)
        size = np.asarray(image.GetSize(), np.float64)
        self.scale = np.diag(2.0 / np.maximum(size - 1, 1))
        self.ainv, self.b = np.linalg.inv(a), b
        half = 1.0 / np.maximum(size - 1, 1)  # ITK: inside while the index is within [-0.5, n - 0.5]
        self.lo = torch.as_tensor(-1.0 - half - 1e-6, dtype=torch.float32, device=device)
        self.hi = torch.as_tensor(1.0 + half + 1e-6, dtype=torch.float32, device=device)
        arr = sitk.GetArrayViewFromImage(image)
        self.vol = torch.from_numpy(np.array(arr, dtype=np.float32))[None, None].to(device)
        self.mode, self.default = mode, float(default)

    def on_grid_of(self, ref: sitk.Image):
        """A function (z0, z1, d) -> samples at p + d for the voxels p of ``ref``'s slices z0..z1-1, with d
        [nz, ny, nx, 3] float32 mm; ``ref``'s index -> world -> this image's normalised coordinates is one
        float64 matrix, so only d is added per voxel."""
        w_lin = self.scale @ self.ainv  # world (mm) -> normalised coordinates: norm = w_lin @ q + w_c
        w_c = -w_lin @ self.b - 1.0
        a, b = index_to_world(ref)
        base = _IndexAffine(w_lin @ a, w_lin @ b + w_c, *ref.GetSize()[:2], self.vol.device)
        w_t = torch.as_tensor(w_lin.T, dtype=torch.float32, device=self.vol.device)  # d (mm) -> norm offset
        return lambda z0, z1, d: self(base(z0, z1) + d @ w_t)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """Sample at normalised points ``g`` [nz, ny, nx, 3] (x, y, z order); ``default`` outside."""
        inside = ((g >= self.lo) & (g <= self.hi)).all(-1)
        out = F.grid_sample(self.vol, g[None], mode=self.mode, padding_mode="border", align_corners=True)[0, 0]
        return torch.where(inside, out, torch.full_like(out, self.default))


def _slabs(ref: sitk.Image):
    nx, ny, nz = ref.GetSize()
    step = max(1, _SLAB_POINTS // (nx * ny))
    for z0 in range(0, nz, step):
        yield z0, min(nz, z0 + step)


def _warp(moving: sitk.Image, displacement: sitk.Image, mode: str, default: float, out_pixel, device):
    if displacement.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("displacement must be a 3-component vector image")
    dev = torch.device(device)
    sampler = _Sampler(moving, dev, mode, default)
    sample = sampler.on_grid_of(displacement)
    d = sitk.GetArrayViewFromImage(displacement)
    out = np.empty(displacement.GetSize()[::-1], dtype=np.float32)
    for z0, z1 in _slabs(displacement):
        dd = torch.from_numpy(np.asarray(d[z0:z1], dtype=np.float32)).to(dev)
        out[z0:z1] = sample(z0, z1, dd).cpu().numpy()
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(displacement)
    return img if out_pixel == sitk.sitkFloat32 else sitk.Cast(img, out_pixel)


def warp_image(moving: sitk.Image, displacement: sitk.Image, default_value: float = -1024.0,
               device: str = "cpu") -> sitk.Image:
    """Moving image resampled (linear) onto the displacement's grid at p + d(p); float32, ``default_value``
    outside the moving image (HU: -1024 = air)."""
    return _warp(moving, displacement, "bilinear", default_value, sitk.sitkFloat32, device)


def warp_labels(labels: sitk.Image, displacement: sitk.Image, device: str = "cpu") -> sitk.Image:
    """Label image resampled (nearest neighbour) onto the displacement's grid at p + d(p); same pixel type
    as ``labels``, 0 outside."""
    return _warp(labels, displacement, "nearest", 0.0, labels.GetPixelID(), device)


def full_field_and_warp(fixed: sitk.Image, affine, grid: WorkGrid | None, u: torch.Tensor | None,
                        moving: sitk.Image | None, default_value: float = -1024.0, device="cpu"):
    """Total displacement on FIXED's exact grid and (optionally) the moving image warped through it.

    Fixed point p -> moving point q = A(p + u(p)) with A = ``affine`` (an AffineResult: q = M (x - c) + c + t)
    and u (mm, [1, 3, D, H, W], channels x/y/z) on the axis-aligned working ``grid`` (extended by its border
    values outside the grid).  Everything affine in the voxel index is folded into one matrix per output, so per
    voxel only u is interpolated and the moving image sampled:
    d(p) = q - p = (M - I) p + (c + t - M c) + M u(p).
    Returns (displacement: sitk vector float64 image, warped: sitk float32 image or None).
    """
    dev = torch.device(device)
    disp = _new_like(fixed, sitk.sitkVectorFloat64, 3)
    d_arr = writable_array(disp)
    warped = _new_like(fixed, sitk.sitkFloat32) if moving is not None else None
    w_arr = writable_array(warped) if warped is not None else None
    nx, ny = fixed.GetSize()[:2]
    a_f, b_f = index_to_world(fixed)  # p = a_f @ index + b_f
    m = np.asarray(affine.matrix, np.float64)
    k0 = np.asarray(affine.center, np.float64) + np.asarray(affine.translation, np.float64) - m @ affine.center
    eye = np.eye(3)
    d_base = _IndexAffine((m - eye) @ a_f, (m - eye) @ b_f + k0, nx, ny, dev)
    m_t = torch.as_tensor(m.T, dtype=torch.float32, device=dev)
    if u is not None:
        e = np.maximum(grid.extent, 1e-6)
        g_lin = np.diag(2.0 / e)  # world -> u-grid normalised coordinates
        g_c = -g_lin @ np.asarray(grid.origin, np.float64) - 1.0
        u_base = _IndexAffine(g_lin @ a_f, g_lin @ b_f + g_c, nx, ny, dev)
        u = u.to(dev, torch.float32)
    sample = _Sampler(moving, dev, "bilinear", default_value).on_grid_of(fixed) if moving is not None else None
    for z0, z1 in _slabs(fixed):
        d = d_base(z0, z1)
        if u is not None:
            uu = F.grid_sample(u, u_base(z0, z1)[None], mode="bilinear", padding_mode="border",
                               align_corners=True)[0].permute(1, 2, 3, 0)
            d = d + uu @ m_t
        d_arr[z0:z1] = d.cpu().numpy()
        if sample is not None:
            w_arr[z0:z1] = sample(z0, z1, d).cpu().numpy()
    return disp, warped
