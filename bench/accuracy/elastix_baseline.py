"""itk-elastix baseline: affine + B-spline (default parameter maps, 10 mm final grid), field in our convention.

``elastix_register(fixed, moving)`` returns a displacement field that follows docs/CONTRACTS.md (SimpleITK vector
float64 on the fixed grid, LPS mm, fixed p <-> moving p + d(p)). elastix's transform maps fixed points to moving
points (it is a resampling transform) and ``transformix_deformation_field`` returns exactly that displacement;
:func:`check_convention` verifies this on a pure translation before any numbers are trusted.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_itk = None


def _itk_module():
    global _itk
    if _itk is None:
        import itk  # slow import (tens of seconds): only when elastix is actually used

        _itk = itk
    return _itk


def _to_itk(img: sitk.Image, tmp: Path, name: str):
    itk = _itk_module()
    path = tmp / f"{name}.mha"
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(path))
    return itk.imread(str(path), itk.F)


def elastix_register(fixed: sitk.Image, moving: sitk.Image, threads: int | None = None,
                     final_grid_mm: float = 10.0, bspline: bool = True) -> tuple[sitk.Image, dict]:
    """Register moving to fixed with itk-elastix (affine then B-spline, default maps; final grid ``final_grid_mm``;
    ``bspline=False``: the affine map alone, elastix's affine stage).

    Returns (displacement field, info). The field is the total fixed->moving mapping (affine included), on the
    fixed grid, LPS mm, as SimpleITK ``sitkVectorFloat64``. ``info`` holds the wall time of the registration
    (``time_s``, excluding the deformation-field export) and the parameter maps used.
    """
    itk = _itk_module()
    with tempfile.TemporaryDirectory(prefix="elx_") as td:
        tmp = Path(td)
        f = _to_itk(fixed, tmp, "fixed")
        m = _to_itk(moving, tmp, "moving")
        po = itk.ParameterObject.New()
        aff = po.GetDefaultParameterMap("affine")
        bsp = po.GetDefaultParameterMap("bspline")
        bsp["FinalGridSpacingInPhysicalUnits"] = [f"{final_grid_mm:.6f}"]
        maps = (aff, bsp) if bspline else (aff,)
        for pm in maps:  # (WriteResultImage must stay "true": the Python wrapper needs a result image)
            pm["DefaultPixelValue"] = ["-1024"]
            po.AddParameterMap(pm)
        t0 = time.perf_counter()
        kw = {"number_of_threads": threads} if threads else {}
        _, result = itk.elastix_registration_method(f, m, parameter_object=po,
                                                    log_to_console=bool(os.environ.get("ELX_LOG")), **kw)
        t_reg = time.perf_counter() - t0
        # output_directory: without it transformix writes deformationField.nii into the current directory
        field = itk.transformix_deformation_field(m, result, output_directory=str(tmp))
        out = tmp / "field.mha"
        itk.imwrite(field, str(out))
        disp = sitk.Cast(sitk.ReadImage(str(out)), sitk.sitkVectorFloat64)
    # transformix writes the field on the fixed grid; make the geometry bit-identical to the fixed image
    if disp.GetSize() != fixed.GetSize():
        raise RuntimeError(f"elastix field size {disp.GetSize()} differs from fixed {fixed.GetSize()}")
    disp.CopyInformation(fixed)
    return disp, {"time_s": t_reg, "final_grid_mm": final_grid_mm if bspline else None, "threads": threads,
                  "stages": "affine + B-spline" if bspline else "affine"}


def check_convention(shift_mm=(6.0, -4.0, 8.0)) -> float:
    """Register a blob image to a copy translated by ``shift_mm`` and return the mean error (mm) of the field.

    moving(x) = fixed(x - t), so fixed p shows the tissue that the moving image shows at p + t: the correct
    field is d = +t everywhere. Raises if elastix's field does not match this convention (error > 1.5 mm).
    """
    rng = np.random.default_rng(0)
    size = (48, 44, 40)
    arr = np.zeros(size[::-1], np.float32)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    for _ in range(25):
        c = rng.uniform([8, 8, 8], [n - 8 for n in size[::-1]])
        r = rng.uniform(2.5, 5.0)
        arr += 400 * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * r * r))
    from scipy import ndimage

    arr += 150 * ndimage.gaussian_filter(rng.standard_normal(arr.shape), 2.0).astype(np.float32) / 0.05
    fixed = sitk.GetImageFromArray(arr)
    fixed.SetSpacing((2.0, 2.0, 2.5))
    fixed.SetOrigin((-40.0, 10.0, 100.0))
    t = np.asarray(shift_mm, float)
    tx = sitk.TranslationTransform(3, tuple(-t))          # moving(x) = fixed(x - t)
    moving = sitk.Resample(fixed, fixed, tx, sitk.sitkLinear, 0.0)
    disp, _ = elastix_register(fixed, moving, threads=None)
    d = sitk.GetArrayFromImage(disp)[6:-6, 6:-6, 6:-6].reshape(-1, 3)
    err = float(np.linalg.norm(d - t, axis=1).mean())
    if err > 1.5:
        raise RuntimeError(f"elastix displacement convention check failed: mean |d - t| = {err:.2f} mm "
                           f"(mean d = {d.mean(0).round(2).tolist()}, expected {t.tolist()})")
    return err
