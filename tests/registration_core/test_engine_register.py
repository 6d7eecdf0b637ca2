"""Engine behaviour on small analytic phantoms (CPU, 5 mm voxels): signs, sizes, conventions."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk

from registration_core import RegistrationConfig, RegistrationInputError, register
from registration_core.network import DEFAULT_WEIGHTS
from registration_core.warp import warp_image, warp_labels
from test_engine_phantom import grid_points, make

FAST = dict(device="cpu", working_spacing=5.0, iterations=30)


def _body_points(img, step=4):
    pts = grid_points(img)[::step, ::step, ::step].reshape(-1, 3)
    x, y, z = pts.T
    inner = ((x / 130) ** 2 + (y / 85) ** 2 < 1) & (np.abs(z) < 90)
    return pts[inner]


def _map(res, pts):
    tr = sitk.DisplacementFieldTransform(sitk.Image(res.displacement))
    return np.array([tr.TransformPoint(p.tolist()) for p in pts])


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["L", "P", "S"])
def test_translation_10mm_recovered_with_sign(axis):
    t = np.zeros(3)
    t[axis] = 10.0
    fixed, _ = make()
    moving, _ = make(transform_inv=lambda q: q - t)  # fixed p <-> moving p + t
    res = register(fixed, moving, RegistrationConfig(**FAST))
    pts = _body_points(fixed)
    d = _map(res, pts) - pts
    med = np.median(d, 0)
    assert med[axis] == pytest.approx(10.0, abs=1.0)
    others = [a for a in range(3) if a != axis]
    assert np.all(np.abs(med[others]) < 1.0)
    # the affine alone maps fixed -> moving as well
    q = np.array([res.affine.TransformPoint(p.tolist()) for p in pts])
    assert np.median(q - pts, 0)[axis] == pytest.approx(10.0, abs=1.5)
    assert res.report["similarity"]["final"] > res.report["similarity"]["identity"]


def test_rotation_10deg_recovered():
    a = math.radians(10.0)
    r = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    c = np.array([5.0, -10.0, 0.0])
    fixed, _ = make()
    # phi(p) = R (p - c) + c ; moving shows anatomy phi^-1(q) = R^T (q - c) + c
    moving, _ = make(size=(74, 62, 56), transform_inv=lambda q: (q - c) @ r + c)
    res = register(fixed, moving, RegistrationConfig(**FAST))
    pts = _body_points(fixed)
    gt = (pts - c) @ r.T + c
    ident = np.linalg.norm(pts - gt, axis=1)
    assert ident.mean() > 10
    # the affine recovers the rotation to a fraction of a voxel (5 mm) ...
    aff = np.linalg.norm(np.array([res.affine.TransformPoint(p.tolist()) for p in pts]) - gt, axis=1)
    assert aff.mean() < 1.0
    m = np.asarray(res.affine.GetMatrix()).reshape(3, 3)
    assert math.degrees(math.atan2(m[1, 0], m[0, 0])) == pytest.approx(10.0, abs=0.5)
    # ... and the total field stays within about half a voxel (the weakly regularised dense field drifts a
    # little in this phantom's flat regions; see the engine report)
    err = np.linalg.norm(_map(res, pts) - gt, axis=1)
    assert err.mean() < 2.5 and np.percentile(err, 90) < 4.5


def test_conventions_match_simpleitk_and_non_identity_direction():
    # fixed stored with permuted/flipped axes (non-identity direction cosines), moving axis-aligned + shifted
    direction = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float)  # columns: image axes in LPS
    t = np.array([-10.0, 5.0, 15.0])
    fixed, _ = make(size=(50, 66, 56), direction=direction)
    moving, _ = make(size=(70, 54, 62), centre=(2.5, 0.0, 0.0), transform_inv=lambda q: q - t)
    res = register(fixed, moving, RegistrationConfig(**FAST))
    d = res.displacement
    assert d.GetPixelID() == sitk.sitkVectorFloat64
    assert d.GetSize() == fixed.GetSize() and d.GetOrigin() == fixed.GetOrigin()
    assert d.GetSpacing() == fixed.GetSpacing() and d.GetDirection() == fixed.GetDirection()
    assert res.warped.GetSize() == fixed.GetSize() and res.warped.GetDirection() == fixed.GetDirection()
    pts = _body_points(fixed)
    assert np.allclose(np.median(_map(res, pts) - pts, 0), t, atol=1.0)
    # SimpleITK's own classes reproduce res.warped from res.displacement
    ref = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.Image(d)), sitk.sitkLinear, -1024.0,
                        sitk.sitkFloat32)
    diff = np.abs(sitk.GetArrayFromImage(ref) - sitk.GetArrayFromImage(res.warped))
    assert np.percentile(diff, 99.5) < 1.0 and diff.mean() < 0.05
    # warp_image is the same operation; outside the moving FOV it is -1024
    again = sitk.GetArrayFromImage(warp_image(moving, d))
    assert np.abs(again - sitk.GetArrayFromImage(res.warped)).max() < 1e-3
    # the affine maps fixed points to moving points (resampling direction)
    q = np.array([res.affine.TransformPoint(p.tolist()) for p in pts])
    assert np.allclose(np.median(q - pts, 0), t, atol=1.5)
    rep = res.report
    assert rep["device"] == "cpu" and rep["memory"]["peak_rss_bytes"] > 0
    assert 0 <= rep["folding_percent"] < 0.5 and rep["sdlogj"] < 0.2
    assert {"preprocess", "affine", "instance_optimisation", "full_resolution", "total"} <= set(rep["times_s"])
    # the report names the weights that made the field, by path and content hash
    assert rep["network"] == str(DEFAULT_WEIGHTS)
    assert rep["network_sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()


def test_warp_labels_nearest_and_outside_zero():
    fixed, labels = make(size=(40, 32, 36), spacing=(6.0, 6.0, 6.0))
    t = np.array([0.0, 0.0, 30.0])
    f = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    f.CopyInformation(fixed)
    f = sitk.Compose(*[sitk.Image(fixed.GetSize(), sitk.sitkFloat64) + float(v) for v in t])
    f.CopyInformation(fixed)
    out = warp_labels(labels, f)
    assert out.GetPixelID() == labels.GetPixelID()
    a, b = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(labels)
    assert set(np.unique(a)) <= set(np.unique(b))
    assert np.array_equal(a[:-5], b[5:])  # 30 mm = 5 slices along +z (S)
    assert np.all(a[-5:] == 0)
    ref = sitk.Resample(labels, fixed, sitk.DisplacementFieldTransform(sitk.Image(f)), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(sitk.GetArrayFromImage(ref), a)


def test_refuses_unrelated_anatomy():
    fixed, _ = make()
    head = sitk.Image([40, 40, 40], sitk.sitkFloat32) - 1000.0
    head.SetSpacing([6.0] * 3)
    arr = sitk.GetArrayFromImage(head)
    zz, yy, xx = np.indices(arr.shape) - 19.5
    r = np.sqrt(xx ** 2 + yy ** 2 + (zz * 0.8) ** 2)
    arr[r < 13] = 1000
    arr[r < 11.5] = 35
    small = sitk.GetImageFromArray(arr)
    small.CopyInformation(head)
    with pytest.raises(RegistrationInputError, match="do not overlap"):
        register(fixed, small, RegistrationConfig(**FAST))


def test_bad_device_and_2d_are_one_line_errors():
    fixed, _ = make(size=(20, 20, 20))
    with pytest.raises(RegistrationInputError, match="2D"):
        register(fixed[:, :, 3:4], fixed, RegistrationConfig(device="cpu"))
    with pytest.raises(RegistrationInputError, match="unknown device"):
        register(fixed, fixed, RegistrationConfig(device="tpu"))


def test_given_start_field_passes_through_the_affine_exactly():
    """A given start (fixed p -> moving p + d(p), mm) with no optimisation steps comes back as the result on the
    fixed grid, whatever affine the engine found: u = M^-1 (p + d - c - t) + c - p inverts the affine exactly (the
    linear field below is reproduced by trilinear interpolation to float precision); the network is not run."""
    t = np.array([6.0, -4.0, 3.0])
    fixed, _ = make()
    moving, _ = make(transform_inv=lambda q: q - t)
    # a start on its own coarser grid that the affine cannot explain: a shear of 2 % plus another shift
    start = sitk.Image([40, 40, 40], sitk.sitkVectorFloat64, 3)
    start.SetOrigin((-200.0, -200.0, -200.0))
    start.SetSpacing((10.0, 10.0, 10.0))
    pts_s = grid_points(start)
    d_s = np.stack([0.02 * pts_s[..., 2] + 1.0, np.full(pts_s.shape[:3], -2.0), 0.01 * pts_s[..., 0]], -1)
    start = sitk.GetImageFromArray(d_s, isVector=True)
    start.SetOrigin((-200.0, -200.0, -200.0))
    start.SetSpacing((10.0, 10.0, 10.0))
    res = register(fixed, moving, RegistrationConfig(**{**FAST, "iterations": 0}), start=start)
    pts = _body_points(fixed)
    d = _map(res, pts) - pts
    want = np.stack([0.02 * pts[:, 2] + 1.0, np.full(len(pts), -2.0), 0.01 * pts[:, 0]], -1)
    assert np.abs(d - want).max() < 0.05
    assert res.report["network"] == "replaced by a given start field"
    assert res.report["weights"] is None and res.region_weights is None
    with pytest.raises(ValueError, match="3 components"):
        register(fixed, moving, RegistrationConfig(**FAST), start=sitk.Image([4, 4, 4], sitk.sitkFloat32))
