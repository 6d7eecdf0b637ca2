"""Realistic longitudinal pairs from one real CT: two scans of one patient months apart, exact ground truth.

``longitudinal_pair(image, labels, seed)`` mimics what separates a prior and a current CT of one patient:

- **patient position**: a rigid motion of a few degrees (``max_rot_deg`` about each axis) and up to about a
  centimetre (``max_shift_mm`` per axis), about the scan centre;
- **breathing**: a diaphragm-like motion along S of ``breath_mm`` (10-20 mm, either direction), largest at the
  lung bases and the upper abdomen, fading towards the lung apices and the pelvis, and towards the body wall
  (which slides less than the organs inside it), with an antero-posterior expansion of the chest that goes with it;
- **everything else** (weight change, bowel filling, posture): a smooth random cubic B-spline field (control
  points every ``control_spacing_mm``, coefficients of std ``smooth_mm``);
- **acquisition**: another slice spacing for the current scan (``slice_factor`` x the prior's), another field of
  view (each scan loses its own random 0-``crop`` share of the z range at the ends), soft-tissue contrast
  change (parenchyma between -50 and 300 HU gains ``contrast_hu``, as with another contrast phase) and
  independent noise.

The given image is the anatomy. The PRIOR (moving) scan is it, z-cropped, plus noise. The CURRENT (fixed) scan
is rendered on its own grid through ``phi(p) = R(p + v(p))`` (``v`` = breathing + B-spline, ``R`` rigid), so fixed
point ``p`` shows the tissue at moving point ``phi(p)`` and the ground truth ``d(p) = phi(p) - p`` is exact at every
fixed voxel centre and landmark (LPS mm; docs/CONTRACTS.md: fixed p <-> moving p + d(p)). The current scan is
rendered from the whole source image, so it shows real anatomy where the prior's field of view ends.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..geometry import inside_image
from ..metrics import jacobian_determinant_array
from .deformations import (PairSample, _add_scan_noise, _affine_apply, _edge_landmarks, _euler, _field_image,
                           _grid_points, _idx_to_points, _pick_landmarks, _ref_image, source_ct)

__all__ = ["longitudinal_pair", "lung_base_z"]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _body_and_lungs(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(body, lungs) boolean arrays [z, y, x]: body = largest component of HU > -300 with holes filled; lungs =
    air (HU < -400) inside the body in components of at least 50 ml."""
    body = sitk.BinaryThreshold(img, -300, 1e6, 1, 0)
    body = sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True) == 1
    body = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(body, [2, 2, 2]))
    air = sitk.And(sitk.BinaryThreshold(img, -1e6, -400, 1, 0), body)
    vox_ml = float(np.prod(img.GetSpacing())) / 1000.0
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(air), minimumObjectSize=max(1, int(50 / vox_ml)))
    return sitk.GetArrayFromImage(body).astype(bool), sitk.GetArrayFromImage(cc) > 0


def lung_base_z(img: sitk.Image) -> tuple[float | None, float | None]:
    """(z of the lung bases, z of the lung apices) in LPS mm (S positive), or (None, None) without lungs in view."""
    _, lungs = _body_and_lungs(img)
    if lungs.sum() < 100:
        return None, None
    kji = np.argwhere(lungs)
    z = _idx_to_points(img, kji)[:, 2]
    return float(np.percentile(z, 3)), float(np.percentile(z, 97))


class _Breathing:
    """Diaphragm-like displacement v_b(p) in mm (LPS): S motion ``amp`` at the lung bases fading to 0 at the apices
    and over ``fade_mm`` below the diaphragm, damped towards the body wall, plus an AP expansion of 20 % of it."""

    def __init__(self, amp: float, z_base: float, z_apex: float, centre_xy, half_xy, fade_mm: float = 150.0):
        self.amp, self.z_base, self.z_apex, self.fade = amp, z_base, max(z_apex, z_base + 60.0), fade_mm
        self.cxy = np.asarray(centre_xy, float)
        self.hxy = np.maximum(np.asarray(half_xy, float), 50.0)

    def __call__(self, P: np.ndarray) -> np.ndarray:
        z = P[..., 2]
        up = 1.0 - _smoothstep((z - self.z_base) / (self.z_apex - self.z_base))     # 1 at base, 0 at apex
        down = 1.0 - _smoothstep((self.z_base - z) / self.fade)                      # 1 at base, 0 far below
        w_z = np.where(z >= self.z_base, up, down)
        r = np.sqrt((((P[..., :2] - self.cxy) / self.hxy) ** 2).sum(-1))
        w_r = 1.0 - 0.6 * _smoothstep(r / 1.2)                                        # body wall moves less
        v = np.zeros_like(P)
        v[..., 2] = self.amp * w_z * w_r
        # chest expands antero-posteriorly with the diaphragm's descent (inspiration: anterior wall forward, -y)
        v[..., 1] = 0.2 * abs(self.amp) * np.sign(-self.amp) * w_z * np.clip((P[..., 1] - self.cxy[1]) / self.hxy[1],
                                                                              -1.2, 1.2)
        return v


def longitudinal_pair(image: sitk.Image, labels: sitk.Image | None = None, seed: int = 0, *,
                      max_rot_deg: float = 4.0, max_shift_mm: float = 10.0, breath_mm: tuple = (10.0, 20.0),
                      smooth_mm: float = 4.0, control_spacing_mm: float = 60.0, slice_factor: tuple = (0.7, 1.5),
                      crop: float = 0.12, contrast_hu: tuple = (-20.0, 60.0), noise_hu: tuple = (8.0, 25.0),
                      n_landmarks: int = 100, label_names: dict | None = None) -> PairSample:
    """A (current, prior) pair from one real CT under a realistic longitudinal change (module docstring).

    image: HU, any grid (LPS mm). labels: optional label map on the same grid, warped with the exact map (nearest
    neighbour). Returns a :class:`PairSample`: fixed = current scan (own grid: other slice spacing and z range),
    moving = prior (the image, z-cropped, noisy); displacement = exact ground truth on the fixed grid (LPS mm,
    fixed p <-> moving p + d(p)); landmarks at label boundaries (or strong edges) where both scans see the tissue;
    ``info`` records every drawn parameter. Deterministic in ``seed``.
    """
    src = source_ct(image, labels, "longitudinal_pair")
    rng = np.random.default_rng(seed)
    size = np.array(src.GetSize())
    sp = np.array(src.GetSpacing())
    nz = int(size[2])

    # prior: the source cropped at the z ends
    c0, c1 = (rng.uniform(0, crop, 2) * nz).astype(int)
    c1 = max(0, min(c1, nz - c0 - 8))
    moving_src = src[:, :, c0:nz - c1]
    # current: its own slice spacing and z range inside the source's
    fz = float(rng.uniform(*slice_factor))
    sz = float(max(sp[:2].min(), sp[2] * fz))
    ext_z = (nz - 1) * sp[2]
    d0, d1 = rng.uniform(0, crop, 2) * ext_z
    n_fz = max(8, int((ext_z - d0 - d1) / sz) + 1)
    D = np.array(src.GetDirection()).reshape(3, 3)
    origin_f = np.array(src.GetOrigin()) + D[:, 2] * d0
    ref = _ref_image((size[0], size[1], n_fz), (sp[0], sp[1], sz), origin_f, src.GetDirection())

    # motion: rigid about the scan centre, breathing, smooth random field
    centre = np.array(src.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    R = _euler(rng.uniform(-1, 1, 3) * max_rot_deg, rng.uniform(-1, 1, 3) * max_shift_mm, centre)
    z_base, z_apex = lung_base_z(src)
    body, _ = _body_and_lungs(src)
    kji = np.argwhere(body)
    bpts = _idx_to_points(src, kji[:: max(1, len(kji) // 20000)]) if len(kji) else centre[None]
    lo, hi = np.percentile(bpts, 2, 0), np.percentile(bpts, 98, 0)
    if z_base is None:   # no lungs in view: the diaphragm lies above the scan, the abdomen still moves
        z_base, z_apex = float(hi[2]) + 40.0, float(hi[2]) + 240.0
    amp = float(rng.uniform(*breath_mm)) * float(rng.choice([-1.0, 1.0]))
    breathing = _Breathing(amp, z_base, z_apex, (lo[:2] + hi[:2]) / 2, (hi[:2] - lo[:2]) / 2)
    extent = size * sp
    mesh = [max(1, int(round(e / control_spacing_mm))) for e in extent]
    bs = sitk.BSplineTransformInitializer(_ref_image(size, sp, src.GetOrigin(), src.GetDirection()), mesh, 3)
    coef = rng.normal(0.0, smooth_mm, len(bs.GetParameters()))

    P_all = _grid_points(ref)
    v_breath = breathing(P_all)
    scale_used = 1.0
    v = None
    for _ in range(8):
        bs.SetParameters(tuple(coef * scale_used))
        vb = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            bs, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection()))
        v = vb + v_breath * (scale_used ** 0.5)
        if jacobian_determinant_array(_field_image(v, ref)).min() > 0.3:
            break
        scale_used *= 0.7
    Q = _affine_apply(R, P_all + v)
    disp = Q - P_all
    displacement = _field_image(disp, ref)
    overlap = inside_image(moving_src, Q)
    del P_all, Q, v, v_breath

    # render the current scan from the whole source, change its contrast, add noise
    tx = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    fixed = sitk.Resample(src, ref, tx, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    gain = float(rng.uniform(*contrast_hu))
    fa = sitk.GetArrayFromImage(fixed)
    w = _smoothstep((fa + 50.0) / 80.0) * (1.0 - _smoothstep((fa - 200.0) / 150.0))
    fa = (fa + gain * w).astype(np.float32)
    fixed2 = sitk.GetImageFromArray(fa)
    fixed2.CopyInformation(fixed)
    sig_f, sig_m = rng.uniform(*noise_hu, 2)
    fixed = _add_scan_noise(fixed2, float(sig_f), rng)
    moving = _add_scan_noise(moving_src, float(sig_m), rng)
    overlap_img = sitk.GetImageFromArray(overlap.astype(np.uint8))
    overlap_img.CopyInformation(ref)

    if labels is not None:
        lab_u8 = sitk.Cast(labels, sitk.sitkUInt8)
        fixed_labels = sitk.Resample(lab_u8, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        moving_labels = lab_u8[:, :, c0:nz - c1]
        kji = _pick_landmarks(sitk.GetArrayViewFromImage(fixed_labels), overlap, n_landmarks, rng)
    else:
        fixed_labels = moving_labels = None
        kji = _edge_landmarks(fixed, overlap, n_landmarks, rng)
    p = _idx_to_points(ref, kji)
    q = p + disp[kji[:, 0], kji[:, 1], kji[:, 2]] if len(kji) else p.copy()
    info = {"generator": "longitudinal_pair", "seed": int(seed),
            "rotation_deg": list(np.rad2deg([R.GetAngleX(), R.GetAngleY(), R.GetAngleZ()]).astype(float)),
            "translation_mm": list(map(float, R.GetTranslation())), "breathing_mm": amp,
            "lung_base_z_mm": z_base, "smooth_mm": float(smooth_mm * scale_used),
            "fixed_slice_mm": sz, "moving_slice_mm": float(sp[2]),
            "moving_crop_slices": [int(c0), int(c1)], "fixed_crop_mm": [float(d0), float(d1)],
            "contrast_gain_hu": gain, "noise_hu": [float(sig_f), float(sig_m)],
            "max_displacement_mm": float(np.linalg.norm(disp, axis=-1).max())}
    return PairSample(fixed, moving, fixed_labels, moving_labels, displacement, (p, q), overlap_img,
                      dict(label_names or {}), info)
