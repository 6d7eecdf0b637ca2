"""Analytic tests for registration_core.metrics (small fields, physical units, direction cosines)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from registration_core.metrics import (dice, folding_percent, hd95, jacobian_determinant,
                                       jacobian_determinant_array, sdlogj, tre)


def _grid(size=(16, 14, 12), spacing=(1.5, 2.0, 3.0), origin=(-10.0, 5.0, 20.0), direction=None):
    img = sitk.Image(list(size), sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _points(ref: sitk.Image) -> np.ndarray:
    """Physical coordinates (z, y, x, 3) of every voxel of ref."""
    size = ref.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float)
    D = np.array(ref.GetDirection()).reshape(3, 3)
    S = np.diag(ref.GetSpacing())
    return idx @ (D @ S).T + np.array(ref.GetOrigin())


def _field(ref: sitk.Image, fn) -> sitk.Image:
    """Displacement field on ref's grid with d(p) = fn(p) (p: (..., 3) LPS mm)."""
    d = fn(_points(ref))
    img = sitk.GetImageFromArray(d.astype(np.float64), isVector=True)
    img.CopyInformation(ref)
    return img


def _rot_direction(deg=30.0):
    a = math.radians(deg)
    R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    R2 = np.array([[1, 0, 0], [0, math.cos(0.4), -math.sin(0.4)], [0, math.sin(0.4), math.cos(0.4)]])
    return tuple((R @ R2).ravel())


@pytest.mark.parametrize("direction", [None, _rot_direction()])
def test_identity_field(direction):
    ref = _grid(direction=direction)
    f = _field(ref, lambda p: np.zeros_like(p))
    J = jacobian_determinant(f)
    assert J.GetSize() == ref.GetSize() and J.GetSpacing() == ref.GetSpacing()
    assert np.allclose(sitk.GetArrayFromImage(J), 1.0)
    assert folding_percent(f) == 0.0
    assert sdlogj(f) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("direction", [None, _rot_direction()])
def test_uniform_scaling_gives_1331(direction):
    ref = _grid(direction=direction)
    c = np.array([3.0, -2.0, 7.0])
    f = _field(ref, lambda p: 0.1 * (p - c))  # x -> x + 0.1 (x - c)  == scaling by 1.1 about c
    jac = jacobian_determinant_array(f)
    assert np.allclose(jac, 1.331, atol=1e-9)
    assert sdlogj(f) == pytest.approx(0.0, abs=1e-12)
    assert folding_percent(f) == 0.0


def test_anisotropic_linear_field_in_rotated_grid():
    """A general linear map A: J = det(I + A) regardless of grid direction/spacing."""
    ref = _grid(direction=_rot_direction(50))
    A = np.array([[0.2, 0.05, -0.1], [0.0, -0.3, 0.02], [0.1, 0.0, 0.15]])
    f = _field(ref, lambda p: p @ A.T)
    assert np.allclose(jacobian_determinant_array(f), np.linalg.det(np.eye(3) + A), atol=1e-9)


def test_known_fold_is_detected():
    ref = _grid(size=(20, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0))
    # d_x = -2 x in the slab x in [5, 10]: dx/dx + 1 = -1 there -> folding
    f = _field(ref, lambda p: np.stack([np.where((p[..., 0] >= 5) & (p[..., 0] <= 10), -2 * p[..., 0], 0.0),
                                        np.zeros(p.shape[:-1]), np.zeros(p.shape[:-1])], -1))
    pct = folding_percent(f)
    assert 15.0 < pct < 50.0
    jac = jacobian_determinant_array(f)
    assert jac[:, :, 7].max() < 0  # inside the slab
    assert np.allclose(jac[:, :, 15], 1.0)
    # masked to the unfolded half: no folding counted
    mask = np.zeros(jac.shape, np.uint8)
    mask[:, :, 13:] = 1
    assert folding_percent(f, mask=mask) == 0.0
    assert sdlogj(f) > 0.1


def test_sdlogj_matches_learn2reg_formula():
    """Reimplement Learn2Reg's voxel-unit computation (scipy correlate [-0.5,0,0.5], crop 2) and compare."""
    from scipy import ndimage
    rng = np.random.default_rng(0)
    ref = _grid(size=(18, 16, 14), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0))
    d = ndimage.gaussian_filter(rng.normal(0, 3.0, (14, 16, 18, 3)), (2, 2, 2, 0))
    f = sitk.GetImageFromArray(d, isVector=True)
    f.CopyInformation(ref)
    disp = d.transpose(3, 0, 1, 2)[None]  # (1, 3, z, y, x); channel c is along array axis (2 - c)
    # put in L2R layout: channel order must match array axis order -> channels (z, y, x)
    disp = disp[:, ::-1]
    k = np.array([-0.5, 0, 0.5])
    grads = []
    for ax in range(3):
        shape = [1, 1, 1]
        shape[ax] = 3
        grads.append(np.stack([ndimage.correlate(disp[0, c], k.reshape(shape), mode="constant", cval=0.0)
                               for c in range(3)]))
    jac = np.stack(grads, 1) + np.eye(3).reshape(3, 3, 1, 1, 1)  # jac[c, ax]
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(jac.transpose(2, 3, 4, 0, 1))
    ref_val = np.log(np.clip(det + 3, 1e-9, 1e9)).std()
    assert ref_val > 0.001
    assert sdlogj(f) == pytest.approx(ref_val, rel=1e-9)


def test_tre_pure_translation():
    ref = _grid(direction=_rot_direction())
    t = np.array([4.0, -3.0, 12.0])
    f = _field(ref, lambda p: np.broadcast_to(t, p.shape).copy())
    pts = _points(ref)[2:5, 3, 4]                      # three grid points
    pts = np.vstack([pts, pts[0] + [0.3, 0.7, 0.2]])   # and an off-grid point (linear interpolation)
    e = tre(f, pts, pts + t)
    assert e.shape == (4,)
    assert np.allclose(e, 0.0, atol=1e-9)
    e2 = tre(f, pts, pts + t + [3.0, 4.0, 0.0])
    assert np.allclose(e2, 5.0)
    assert np.allclose(tre(None, pts, pts + t), np.linalg.norm(t))


def test_tre_interpolates_linearly():
    ref = _grid(spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0))
    f = _field(ref, lambda p: np.stack([0.5 * p[..., 0], 0 * p[..., 0], 0 * p[..., 0]], -1))
    p = np.array([[3.25, 2.0, 2.0]])
    assert tre(f, p, p + [0.5 * 3.25, 0, 0])[0] == pytest.approx(0.0, abs=1e-9)


def test_tre_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="differ in length"):
        tre(None, np.zeros((3, 3)), np.zeros((2, 3)))


def test_dice_per_label_and_mean():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[:5] = 1
    b[:5] = 1           # label 1 identical -> 1.0
    a[5:, :5] = 2
    b[5:, :] = 2        # |A|=250, |B|=500, overlap 250 -> 2*250/750
    res = dice(a, b)
    assert res[1] == 1.0
    assert res[2] == pytest.approx(2 / 3)
    assert res["mean"] == pytest.approx((1 + 2 / 3) / 2)
    res3 = dice(a, b, labels=[2, 7])
    assert math.isnan(res3[7]) and res3["mean"] == pytest.approx(2 / 3)


def test_dice_rejects_different_grids():
    a = sitk.Image([5, 5, 5], sitk.sitkUInt8)
    b = sitk.Image([5, 5, 5], sitk.sitkUInt8)
    b.SetSpacing((2, 2, 2))
    with pytest.raises(ValueError, match="same grid"):
        dice(a, b)


def test_hd95_shifted_cube_in_mm():
    a = np.zeros((30, 30, 30), np.uint8)
    b = np.zeros_like(a)
    a[5:20, 5:20, 5:20] = 1
    b[5:20, 5:20, 9:24] = 1          # shifted 4 voxels along x (last array axis)
    r = hd95(a, b, spacing=(2.0, 1.0, 1.0))  # x spacing 2 mm -> 8 mm
    assert r[1] == pytest.approx(8.0, abs=1e-6)
    r_same = hd95(a, a, spacing=(1, 1, 1))
    assert r_same[1] == 0.0
    img_a = sitk.GetImageFromArray(a)
    img_b = sitk.GetImageFromArray(b)
    img_a.SetSpacing((0.5, 1, 1))
    img_b.SetSpacing((0.5, 1, 1))
    assert hd95(img_a, img_b)[1] == pytest.approx(2.0, abs=1e-6)
    empty = np.zeros_like(a)
    assert hd95(a, empty, spacing=(1, 1, 1))[1] == math.inf


def test_bad_displacement_is_rejected():
    with pytest.raises(ValueError, match="3 components"):
        jacobian_determinant(sitk.Image([4, 4, 4], sitk.sitkFloat32))


def test_jacobian_in_slabs_equals_one_block(monkeypatch):
    """The slab-wise determinant (bounded memory for whole-body fields) is bit-identical to one block,
    including the one-sided differences at the first and last slice and an oblique, anisotropic grid."""
    from scipy import ndimage

    from registration_core import metrics as m

    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.normal(0, 20, (37, 41, 43, 3)), (2, 2, 2, 0))
    d = sitk.GetImageFromArray(a, isVector=True)
    d.SetSpacing((0.7, 0.9, 2.0))
    d.SetDirection(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix())
    whole = m.jacobian_determinant_array(d)
    assert 1.0 < m.folding_percent(d) < 50.0  # a field that folds somewhere: the comparison means something
    for voxels in (1, 41 * 43 * 2, 41 * 43 * 5 + 7):
        monkeypatch.setattr(m, "_JAC_SLAB_VOXELS", voxels)
        assert np.array_equal(m.jacobian_determinant_array(d), whole)
