"""ConvexAdam baseline (PyPI ``convexadam``, Apache-2.0; Siebert, Hansen & Heinrich): MIND-SSC features, coupled
convex discrete search, Adam refinement -- its package defaults, run on this machine's CPU.

ConvexAdam registers two arrays of one shape. As the issue asks, both scans are first resampled (identity, linear)
onto one isotropic grid laid over the FIXED scan (same origin and direction, spacing
spacing, at least ``min_spacing_mm``), the moving scan filled with -1024 HU outside its field of view. ConvexAdam
returns voxel offsets along the array axes (z, y, x) of that grid; they are turned into LPS mm through the grid's
direction and spacing and resampled (linear) onto the exact fixed grid, so the field follows docs/CONTRACTS.md
(fixed p <-> moving p + d(p)). :func:`check_convention` verifies the conversion on a pure translation.
"""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk


def iso_grid(fixed: sitk.Image, min_spacing_mm: float = 1.5) -> sitk.Image:
    """An empty float32 image over ``fixed``'s extent: same origin and direction, isotropic ``min_spacing_mm`` spacing."""
    sp = float(min_spacing_mm)
    ext = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    size = [max(8, int(np.ceil(e / sp))) for e in ext]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(fixed.GetOrigin())
    ref.SetDirection(fixed.GetDirection())
    ref.SetSpacing((sp, sp, sp))
    return ref


def convexadam_register(fixed: sitk.Image, moving: sitk.Image, threads: int | None = None,
                        min_spacing_mm: float = 1.5) -> tuple[sitk.Image, dict]:
    """Register ``moving`` to ``fixed`` with ConvexAdam's defaults (``convex_adam_pt``) on the CPU.

    Returns (displacement, info): displacement a SimpleITK vector float64 image on FIXED's exact grid, LPS mm,
    fixed p <-> moving p + d(p); info holds ``time_s`` (ConvexAdam alone, without the resampling around it) and the
    isotropic grid used.
    """
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    if threads:
        torch.set_num_threads(int(threads))
    ref = iso_grid(fixed, min_spacing_mm)
    f = sitk.Resample(sitk.Cast(fixed, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -1024.0)
    m = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -1024.0)
    fa = sitk.GetArrayFromImage(f)
    ma = sitk.GetArrayFromImage(m)
    t0 = time.perf_counter()
    vox = convex_adam_pt(img_fixed=fa, img_moving=ma, device=torch.device("cpu"))  # (z, y, x, 3): dz, dy, dx
    t = time.perf_counter() - t0
    D = np.array(ref.GetDirection()).reshape(3, 3)
    sp = np.array(ref.GetSpacing())
    ijk = vox[..., ::-1]                         # voxel offsets along x, y, z (index order of SimpleITK)
    mm = ijk @ (D @ np.diag(sp)).T               # LPS mm
    field = sitk.GetImageFromArray(mm.astype(np.float64), isVector=True)
    field.CopyInformation(ref)
    out = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    return out, {"time_s": t, "iso_grid": {"size": list(ref.GetSize()), "spacing_mm": float(sp[0])}}


def check_convention(shift_mm=(6.0, -9.0, 4.5)) -> float:
    """Mean |d - t| (mm) over the body when the moving scan is the fixed one shifted by ``t`` (fixed p shows the
    tissue of moving p + t, so the right field is d = t); a small number means the conversion is right."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (48, 64, 64)).astype(np.float32)
    img = sitk.GetImageFromArray(a)
    img = sitk.SmoothingRecursiveGaussian(img, 4.0) * 4000.0
    img.SetSpacing((2.0, 2.0, 2.0))
    tx = sitk.TranslationTransform(3, [-s for s in shift_mm])
    moving = sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0)  # moving(q) = fixed(q - t)
    d, _ = convexadam_register(img, moving, min_spacing_mm=2.0)
    arr = sitk.GetArrayFromImage(d)[8:-8, 8:-8, 8:-8]
    return float(np.linalg.norm(arr - np.array(shift_mm), axis=-1).mean())
