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
from .torchutil import world_to_norm

_SLAB_POINTS = 2_000_000


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


def _slab_world(ref: sitk.Image, z0: int, z1: int, device) -> torch.Tensor:
    """World points (mm, float64) of ref's voxels in slices z0..z1-1: [nz, ny, nx, 3]."""
    a, b = index_to_world(ref)
    nx, ny, _ = ref.GetSize()
    kk, jj, ii = torch.meshgrid(torch.arange(z0, z1, device=device, dtype=torch.float64),
                                torch.arange(ny, device=device, dtype=torch.float64),
                                torch.arange(nx, device=device, dtype=torch.float64), indexing="ij")
    idx = torch.stack([ii, jj, kk], -1)
    return idx @ torch.as_tensor(a.T, device=device) + torch.as_tensor(b, device=device)


class _Sampler:
    """Samples an image at world points (float64 mm) with ITK's inside rule; linear or nearest."""

    def __init__(self, image: sitk.Image, device, mode: str = "bilinear", default: float = 0.0):
        a, b = index_to_world(image)
        self.ainv = torch.as_tensor(np.linalg.inv(a).T, device=device)
        self.b = torch.as_tensor(b, device=device)
        self.size = torch.as_tensor(image.GetSize(), device=device, dtype=torch.float64)
        arr = sitk.GetArrayViewFromImage(image)
        self.vol = torch.from_numpy(np.array(arr, dtype=np.float32))[None, None].to(device)
        self.mode, self.default = mode, float(default)

    def __call__(self, pts: torch.Tensor) -> torch.Tensor:
        idx = (pts - self.b) @ self.ainv  # continuous index (i, j, k)
        inside = ((idx >= -0.5) & (idx <= self.size - 0.5)).all(-1)
        g = (idx / (self.size - 1).clamp_min(1) * 2 - 1).to(torch.float32)
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
    d = sitk.GetArrayViewFromImage(displacement)
    out = np.empty(displacement.GetSize()[::-1], dtype=np.float32)
    for z0, z1 in _slabs(displacement):
        p = _slab_world(displacement, z0, z1, dev)
        p = p + torch.from_numpy(np.array(d[z0:z1], dtype=np.float64)).to(dev)
        out[z0:z1] = sampler(p).cpu().numpy()
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

    Fixed point p -> moving point A(p + u(p)) with A = ``affine`` (an AffineResult) and u (mm, [1, 3, D, H, W],
    channels x/y/z) on the axis-aligned working ``grid`` (extended by its border values outside the grid).
    Returns (displacement: sitk vector float64 image, warped: sitk float32 image or None).
    """
    dev = torch.device(device)
    disp = _new_like(fixed, sitk.sitkVectorFloat64, 3)
    d_arr = writable_array(disp)
    warped = _new_like(fixed, sitk.sitkFloat32) if moving is not None else None
    w_arr = writable_array(warped) if warped is not None else None
    sampler = _Sampler(moving, dev, "bilinear", default_value) if moving is not None else None
    mat = torch.as_tensor(affine.matrix, device=dev, dtype=torch.float64)
    c = torch.as_tensor(affine.center, device=dev, dtype=torch.float64)
    t = torch.as_tensor(affine.translation, device=dev, dtype=torch.float64)
    u = u.to(dev, torch.float32) if u is not None else None
    for z0, z1 in _slabs(fixed):
        p = _slab_world(fixed, z0, z1, dev)
        x = p
        if u is not None:
            g = world_to_norm(p.to(torch.float32), grid)[None]
            uu = F.grid_sample(u, g, mode="bilinear", padding_mode="border", align_corners=True)
            x = p + uu[0].permute(1, 2, 3, 0).to(torch.float64)
        q = (x - c) @ mat.T + c + t
        d_arr[z0:z1] = (q - p).cpu().numpy()
        if sampler is not None:
            w_arr[z0:z1] = sampler(q).cpu().numpy()
    return disp, warped
