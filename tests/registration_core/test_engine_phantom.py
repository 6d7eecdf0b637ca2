"""Analytic CT phantom for the engine tests, evaluated at world points (so moved/deformed copies are exact).

HU are averaged over sub-voxel samples (partial volume, like a real scanner); shifts in tests are whole voxels
(5 mm grid) so translated copies are exact. ``ct(points)`` gives HU at LPS points (mm); ``make(transform_inv, ...)`` renders an image whose voxel at world q
shows anatomy point transform_inv(q). So a moving image built with transform_inv = phi^-1 satisfies
fixed p <-> moving phi(p). Patient right (liver) is -x; the table lies posterior (+y).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

LABELS = {1: "lungs", 2: "liver", 3: "spine", 4: "kidney"}


def _ell(p, c, r):
    return (((p - np.asarray(c)) / np.asarray(r)) ** 2).sum(-1) < 1


def ct(p: np.ndarray, with_table: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels uint8) at world points p [..., 3] (x, y, z mm, LPS)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    hu = np.full(p.shape[:-1], -1000.0, np.float32)
    lab = np.zeros(p.shape[:-1], np.uint8)
    body = ((x / 150) ** 2 + (y / 100) ** 2 < 1) & (np.abs(z) < 115)
    tex = 25 * (np.sin(x / 9.0 + 0.3) * np.sin(y / 11.0) + np.sin(z / 7.0 + x / 13.0) + np.cos(y / 8.0 - z / 10.0))
    hu[body] = 30 + tex[body]
    fat = body & ((x / 140) ** 2 + (y / 90) ** 2 > 1)
    hu[fat] = -90
    for c in ((-70, -10, 50), (70, -10, 50)):
        m = _ell(p, c, (50, 60, 70)) & body
        hu[m] = -850 + 0.5 * tex[m]
        lab[m] = 1
    for c in ((-60, -20, 60), (55, 10, 35), (80, -30, 70), (-85, 20, 30), (40, -40, 80), (-40, 5, 90)):
        m = _ell(p, c, (7, 7, 7))
        hu[m] = 40
    m = _ell(p, (-60, 0, -40), (60, 50, 45)) & body
    hu[m] = 70 + tex[m]
    lab[m] = 2
    m = _ell(p, (60, 45, -60), (20, 20, 35))
    hu[m] = 160
    lab[m] = 4
    m = ((x / 18) ** 2 + ((y - 70) / 18) ** 2 < 1) & body
    hu[m] = 450 + 2 * tex[m] + 150 * np.sin(z[m] / 6.0)
    lab[m] = 3
    m = _ell(p, (-20, -60, -90), (15, 25, 12))  # asymmetric bowel gas
    hu[m] = -700
    if with_table:
        hu[(y > 112) & (y < 122)] = 150
    return hu, lab


def grid_points(ref: sitk.Image) -> np.ndarray:
    """World points [z, y, x, 3] of every voxel of ``ref``."""
    nx, ny, nz = ref.GetSize()
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float)
    a = np.asarray(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())
    return idx @ a.T + np.asarray(ref.GetOrigin())


def make(size=(66, 50, 56), spacing=(5.0, 5.0, 5.0), centre=(0.0, 0.0, 0.0), direction=None, transform_inv=None,
         with_table=True) -> tuple[sitk.Image, sitk.Image]:
    """Render (HU image float32, label image uint8) on a grid centred at ``centre`` (mm)."""
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        ref.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    a = np.asarray(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())
    ref.SetOrigin((np.asarray(centre, float) - a @ ((np.asarray(size) - 1) / 2.0)).tolist())
    p = grid_points(ref)
    tf = transform_inv if transform_inv is not None else (lambda q: q)
    hu, lab = ct(tf(p), with_table)
    # partial volume: average HU over 2x2x2 sub-voxel samples (labels stay point-sampled at the centre)
    hu = hu / 9.0
    for off in np.array([[i, j, k] for i in (-0.25, 0.25) for j in (-0.25, 0.25) for k in (-0.25, 0.25)]):
        hu += ct(tf(p + a @ off), with_table)[0] / 9.0
    img = sitk.GetImageFromArray(hu)
    img.CopyInformation(ref)
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(ref)
    return img, labels


def test_phantom_is_asymmetric_and_has_structures():
    img, lab = make()
    arr, la = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    assert set(np.unique(la)) == {0, 1, 2, 3, 4}
    assert not np.allclose(arr, arr[:, :, ::-1])  # left/right differ (liver on patient right = -x)
    assert abs(arr.min() + 1000) < 0.01 and arr.max() > 400
