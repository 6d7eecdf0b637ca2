"""Longitudinal CT pairs with an exact ground-truth displacement field.

Two generators:

``make_longitudinal_pair`` -- two scans of one synthetic patient (see ``phantom.py``). The anatomy is defined in
a canonical patient space C. The CURRENT (fixed) scan sees it through a smooth non-rigid map
``a: fixed point p -> canonical point`` (breathing with sliding at the chest/abdominal wall, organ shifts,
weight change); the PRIOR (moving) scan sees it through a rigid map ``R: moving point q -> canonical point``
(table shift + patient rotation) on its own grid (different field of view, slice spacing). So fixed ``p`` and
moving ``q = R^-1(a(p))`` show the same tissue, and the ground truth ``d(p) = R^-1(a(p)) - p`` is evaluated
analytically -- no inversion, no approximation -- at every fixed voxel centre and at every landmark.

``random_realistic_deformation`` -- self-supervised pair from any single CT: the given image becomes the
MOVING image, the fixed image is it resampled through a random rigid + smooth B-spline map ``phi``
(fixed -> moving), and ``d(p) = phi(p) - p`` exactly.

All fields follow docs/CONTRACTS.md: SimpleITK vector float64 image on the fixed grid, LPS mm,
fixed point p <-> moving point p + d(p).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..geometry import inside_image
from ..metrics import jacobian_determinant_array
from .anatomy import Anatomy, _smoothstep
from .phantom import LABEL_NAMES, render

__all__ = ["PairSample", "make_longitudinal_pair", "random_realistic_deformation"]


@dataclass
class PairSample:
    """A fixed (current) / moving (prior) pair with exact ground truth.

    fixed, moving : float32 HU images (own grids). fixed_labels, moving_labels : uint8 label maps on those grids.
    displacement : ground-truth field (vector float64, fixed grid, LPS mm; fixed p <-> moving p + d(p)).
    landmarks : (fixed_points_mm (N, 3), moving_points_mm (N, 3)), LPS mm, q = p + d(p) exactly.
    fixed_overlap : uint8 mask on the fixed grid, 1 where p + d(p) lies inside the moving image's grid.
    label_names : {id: name}. info : parameters used (JSON-serialisable).
    """

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image | None
    moving_labels: sitk.Image | None
    displacement: sitk.Image
    landmarks: tuple[np.ndarray, np.ndarray]
    fixed_overlap: sitk.Image
    label_names: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# grid helpers
# ---------------------------------------------------------------------------------------------------------
def _ref_image(size, spacing, origin, direction=None, pixel=sitk.sitkUInt8) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], pixel)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in direction))
    return img


def _grid_points(ref: sitk.Image, k0: int = 0, k1: int | None = None) -> np.ndarray:
    """Physical points (LPS mm) of voxel centres of slices k0..k1 as (nz, ny, nx, 3) float64."""
    nx, ny, nz = ref.GetSize()
    k1 = nz if k1 is None else k1
    k, j, i = np.meshgrid(np.arange(k0, k1), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(np.float64)
    D = np.array(ref.GetDirection()).reshape(3, 3)
    S = np.diag(ref.GetSpacing())
    return idx @ (D @ S).T + np.array(ref.GetOrigin())


def _field_image(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float64, copy=False), isVector=True)
    img.CopyInformation(ref)
    return img


def _add_scan_noise(img: sitk.Image, sigma_hu: float, rng: np.random.Generator) -> sitk.Image:
    """Add CT-like noise: white Gaussian (std sigma_hu after smoothing by ~0.6 voxel), clamp to [-1024, 3071]."""
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if sigma_hu > 0:
        n = sitk.GetImageFromArray(rng.standard_normal(arr.shape, dtype=np.float32))
        n = sitk.GetArrayFromImage(sitk.DiscreteGaussian(n, 0.36, 8, 0.01, False))
        n *= sigma_hu / max(float(n.std()), 1e-6)
        arr += n
    np.clip(arr, -1024.0, 3071.0, out=arr)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _pick_landmarks(labels_arr: np.ndarray, ok: np.ndarray, n: int, rng) -> np.ndarray:
    """Voxel indices (k, j, i) of up to n landmarks at internal structure boundaries inside ``ok``."""
    lab = labels_arr
    edge = np.zeros(lab.shape, bool)
    for ax in range(3):
        dif = np.diff(lab, axis=ax) != 0
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[ax] = slice(0, -1)
        sl_b[ax] = slice(1, None)
        edge[tuple(sl_a)] |= dif
        edge[tuple(sl_b)] |= dif
    cand = np.argwhere(edge & ok & (lab != 0))
    if len(cand) < n:
        cand = np.argwhere(ok & (lab != 0))
    if len(cand) == 0:
        return np.zeros((0, 3), int)
    sel = rng.choice(len(cand), size=min(n, len(cand)), replace=False)
    return cand[np.sort(sel)]


def _edge_landmarks(fixed: sitk.Image, ok: np.ndarray, n: int, rng) -> np.ndarray:
    """Voxel indices (k, j, i) of up to n landmarks on strong edges (top 10 % gradient magnitude) of ``fixed``
    inside ``ok`` and not in air (HU > -900); for pairs without labels."""
    fa = sitk.GetArrayViewFromImage(fixed)
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(fixed, 1.5))
    ok = ok & (fa > -900)
    thr = np.percentile(grad[ok], 90) if ok.any() else 0.0
    cand = np.argwhere(ok & (grad >= thr))
    if not len(cand):
        return np.zeros((0, 3), int)
    sel = rng.choice(len(cand), size=min(n, len(cand)), replace=False)
    return cand[np.sort(sel)]


def source_ct(image: sitk.Image, labels: sitk.Image | None, what: str) -> sitk.Image:
    """A single real CT checked for a generator (3D scalar; ``labels`` on its grid) as float32 HU clamped to
    [-1024, 3071]; ValueError naming ``what`` otherwise."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} needs a 3D scalar image")
    if labels is not None and labels.GetSize() != image.GetSize():
        raise ValueError(f"labels size {labels.GetSize()} differs from image size {image.GetSize()}")
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, -1024.0, 3071.0)


def _idx_to_points(ref: sitk.Image, kji: np.ndarray) -> np.ndarray:
    D = np.array(ref.GetDirection()).reshape(3, 3)
    S = np.diag(ref.GetSpacing())
    ijk = kji[:, ::-1].astype(np.float64)
    return ijk @ (D @ S).T + np.array(ref.GetOrigin())


# ---------------------------------------------------------------------------------------------------------
# anatomical deformation (fixed -> canonical)
# ---------------------------------------------------------------------------------------------------------
class _AnatomicalWarp:
    """Smooth map a: fixed point -> canonical point: weight change, breathing with sliding, organ shifts."""

    def __init__(self, an: Anatomy, rng: np.random.Generator, breathing_mm: float, weight_factor: float,
                 organ_shift_mm: float):
        self.an = an
        self.breathing_mm = float(breathing_mm)
        self.k_fat = float(weight_factor)
        centres = [an.liver_c, an.stom_c, an.kid_l_c, an.kid_r_c, an.bladder_c, an.spleen_c,
                   np.array([0.0, -40.0, -120.0]), np.array([0.0, -30.0, -40.0])]
        self.bumps = []
        for c in centres:
            v = rng.normal(size=3)
            v *= organ_shift_mm * rng.uniform(0.3, 1.0) / (np.linalg.norm(v) + 1e-9)
            sigma = rng.uniform(35.0, 55.0)
            self.bumps.append((np.asarray(c, float) + rng.normal(0, 10, 3), v, sigma))

    # -- components, each a map of (..., 3) points --
    def _weight(self, P):
        an = self.an
        x, y, z = P[..., 0], P[..., 1], P[..., 2]
        ax, ay = an.body_axes(z)
        rho = an._rho(x, y, ax, ay)
        t = an.fat / (0.5 * (ax + ay))
        rho_in = 1.0 - 1.15 * t
        w = 0.01
        sp = w * np.logaddexp(0.0, (rho - rho_in) / w)
        rho_c = rho + (1.0 / self.k_fat - 1.0) * sp
        s = rho_c / np.maximum(rho, 1e-6)
        out = P.copy()
        out[..., 0] *= s
        out[..., 1] *= s
        return out

    def _motion_weight(self, P):
        """~1 inside the body cavity anterior to the spine (lungs, viscera), 0 at the wall/spine: sliding."""
        an = self.an
        x, y, z = P[..., 0], P[..., 1], P[..., 2]
        cax, cay = an.cavity_axes(z)
        rc = an.rho_cavity(x, y, z)
        d_wall = (0.97 - rc) * 0.5 * (cax + cay)           # mm inside the (slightly shrunk) cavity boundary
        d_spine = (an.spine_y(z) - 28.0) - y               # mm anterior to the pre-vertebral plane
        return _smoothstep((d_wall + 2.0) / 4.0) * _smoothstep((d_spine + 2.0) / 4.0)

    def _breathing(self, P):
        an = self.an
        z = P[..., 2]
        z_d = 0.5 * (an.z_dia_r + an.z_dia_l)
        above = _smoothstep((an.z_apex - z) / (an.z_apex - z_d))
        below = _smoothstep((z - (z_d - 260.0)) / 260.0)
        s = np.where(z > z_d, above, below)
        out = P.copy()
        out[..., 2] += self.breathing_mm * s * self._motion_weight(P)
        # anterior-posterior expansion of the lung/abdomen content, 15 % of the S-I amplitude
        out[..., 1] -= 0.15 * self.breathing_mm * s * self._motion_weight(P) * np.clip(-P[..., 1] / 100.0, 0, 1)
        return out

    def _organs(self, P):
        out = P.copy()
        mw = self._motion_weight(P)
        for c, v, sigma in self.bumps:
            g = np.exp(-np.sum((P - c) ** 2, axis=-1) / (2 * sigma * sigma)) * mw
            out += g[..., None] * v
        return out

    def __call__(self, P):
        return self._organs(self._breathing(self._weight(P)))


def _euler(angles_deg, translation, center=(0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(float(c) for c in center))
    t.SetRotation(*[float(np.deg2rad(a)) for a in angles_deg])
    t.SetTranslation(tuple(float(v) for v in translation))
    return t


def _affine_inverse_apply(tx: sitk.Euler3DTransform, X: np.ndarray) -> np.ndarray:
    """Apply the inverse of a rigid transform to (..., 3) points."""
    M = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    t = np.array(tx.GetTranslation())
    return (X - c - t) @ M + c      # row-vector form of M^T (x - c - t)


def _affine_apply(tx: sitk.Euler3DTransform, X: np.ndarray) -> np.ndarray:
    M = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    t = np.array(tx.GetTranslation())
    return (X - c) @ M.T + c + t


def make_longitudinal_pair(phantom: int | Anatomy = 0, seed: int | None = None, *,
                           spacing=3.0, fov_mm=(480.0, 360.0, 600.0), moving_spacing=None,
                           moving_fov_scale: float | None = None, canonical_spacing: float | None = None,
                           breathing_mm: float | None = None, organ_shift_mm: float | None = None,
                           weight_factor: float | None = None, max_shift_mm: float = 100.0,
                           max_rot_deg: float = 15.0, noise_hu: float = 15.0, lung_hu_change: float | None = None,
                           n_landmarks: int = 100) -> PairSample:
    """Two CT scans of one synthetic patient with an exact ground-truth displacement field.

    phantom : anatomy seed (int) or an :class:`Anatomy`. seed : seed of the deformation/scan randomness
    (default ``phantom seed + 1000``). spacing : fixed grid spacing (mm, scalar or (sx, sy, sz)); fov_mm :
    fixed field of view (x, y, z mm, centred on the body axis). moving_spacing : moving grid spacing (default:
    in-plane x U(0.85, 1.2), slice spacing x one of 0.75/1.25/1.5/2). moving_fov_scale : moving z-extent relative
    to the fixed (default U(0.75, 1.0)), offset along z by up to +-60 mm. canonical_spacing : resolution of the
    rendered anatomy (default: finest spacing of either scan).
    Deformation magnitudes (defaults random): breathing_mm (S-I diaphragm motion, +-5..25 mm, lungs/viscera
    slide along the chest wall which stays put), organ_shift_mm (abdominal organ displacement up to ~10 mm),
    weight_factor (subcutaneous fat thickness ratio current/prior, 0.75..1.35), table shift up to
    ``max_shift_mm`` along z (+-20 mm in-plane) and patient rotation up to ``max_rot_deg`` about the body axis
    (+-4 deg about the others). noise_hu : CT noise std per scan. lung_hu_change : lung density change in the
    current scan (default U(-40, 40) HU).

    Returns a :class:`PairSample` (fixed = current, moving = prior). Deterministic for given seeds.
    """
    an = phantom if isinstance(phantom, Anatomy) else Anatomy(int(phantom))
    seed = an.seed + 1000 if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    sp_f = np.broadcast_to(np.asarray(spacing, float), (3,)).copy()
    fov = np.asarray(fov_mm, float)
    size_f = np.maximum(np.round(fov / sp_f).astype(int), 2)
    zc_f = rng.uniform(-30.0, 30.0)
    origin_f = np.array([0.0, 0.0, zc_f]) - 0.5 * (size_f - 1) * sp_f
    fixed_ref = _ref_image(size_f, sp_f, origin_f)

    breathing_mm = rng.choice([-1, 1]) * rng.uniform(5, 25) if breathing_mm is None else breathing_mm
    organ_shift_mm = rng.uniform(3, 10) if organ_shift_mm is None else organ_shift_mm
    weight_factor = float(np.exp(rng.uniform(np.log(0.75), np.log(1.35)))) if weight_factor is None \
        else weight_factor
    warp = _AnatomicalWarp(an, rng, breathing_mm, weight_factor, organ_shift_mm)
    rot = (rng.uniform(-1, 1) * min(4.0, max_rot_deg), rng.uniform(-1, 1) * min(4.0, max_rot_deg),
           rng.uniform(-1, 1) * max_rot_deg)
    trans = (rng.uniform(-1, 1) * min(20.0, max_shift_mm), rng.uniform(-1, 1) * min(20.0, max_shift_mm),
             rng.uniform(-1, 1) * max_shift_mm)
    R = _euler(rot, trans)                         # moving point -> canonical point

    if moving_spacing is None:
        s_xy = sp_f[0] * rng.uniform(0.85, 1.2)
        sp_m = np.array([s_xy, s_xy, sp_f[2] * rng.choice([0.75, 1.25, 1.5, 2.0])])
    else:
        sp_m = np.broadcast_to(np.asarray(moving_spacing, float), (3,)).copy()
    scale = rng.uniform(0.75, 1.0) if moving_fov_scale is None else float(moving_fov_scale)
    fov_m = np.array([fov[0] * 1.05, fov[1] * 1.05, fov[2] * scale])
    size_m = np.maximum(np.round(fov_m / sp_m).astype(int), 2)
    centre_can = np.array([0.0, 0.0, zc_f + rng.uniform(-60, 60)])
    centre_m = _affine_inverse_apply(R, centre_can)
    origin_m = centre_m - 0.5 * (size_m - 1) * sp_m
    moving_ref = _ref_image(size_m, sp_m, origin_m)

    # ---- fixed scan geometry: a(p) and the ground truth d = R^-1(a(p)) - p at every fixed voxel ----
    nx, ny, nz = size_f
    u_a = np.empty((nz, ny, nx, 3), np.float64)
    disp = np.empty((nz, ny, nx, 3), np.float64)
    overlap = np.empty((nz, ny, nx), bool)
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    step = max(1, int(1_000_000 // (nx * ny)))
    for k0 in range(0, nz, step):
        P = _grid_points(fixed_ref, k0, min(nz, k0 + step))
        A = warp(P)
        u_a[k0:k0 + step] = A - P
        Q = _affine_inverse_apply(R, A)
        disp[k0:k0 + step] = Q - P
        overlap[k0:k0 + step] = inside_image(moving_ref, Q)
        lo = np.minimum(lo, A.reshape(-1, 3).min(0))
        hi = np.maximum(hi, A.reshape(-1, 3).max(0))
        del P, A, Q

    # ---- canonical anatomy: rendered over the union of what both scans see ----
    mx, my, mz = size_m
    corners_m = np.array([[i, j, k] for i in (0, mx - 1) for j in (0, my - 1) for k in (0, mz - 1)], float)
    corners_m = _affine_apply(R, corners_m * sp_m + origin_m)
    cs = float(min(sp_f.min(), sp_m.min())) if canonical_spacing is None else float(canonical_spacing)
    lo = np.minimum(lo, corners_m.min(0)) - 2 * cs
    hi = np.maximum(hi, corners_m.max(0)) + 2 * cs
    size_c = np.ceil((hi - lo) / cs).astype(int) + 1
    hu_c, lab_c = render(an, size_c, (cs, cs, cs), lo)
    canon = sitk.GetImageFromArray(hu_c)
    canon.SetSpacing((cs, cs, cs))
    canon.SetOrigin(tuple(lo))
    canon_lab = sitk.GetImageFromArray(lab_c)
    canon_lab.CopyInformation(canon)
    del hu_c, lab_c

    tx_a = sitk.DisplacementFieldTransform(_field_image(u_a, fixed_ref))
    del u_a
    fixed = sitk.Resample(canon, fixed_ref, tx_a, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    fixed_labels = sitk.Resample(canon_lab, fixed_ref, tx_a, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    moving = sitk.Resample(canon, moving_ref, R, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    moving_labels = sitk.Resample(canon_lab, moving_ref, R, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    del canon, canon_lab

    # lung density differs between the two breathing states
    lung_hu_change = rng.uniform(-40, 40) if lung_hu_change is None else float(lung_hu_change)
    fa = sitk.GetArrayFromImage(fixed)
    fl = sitk.GetArrayViewFromImage(fixed_labels)
    fa[(fl == 4) | (fl == 5)] += lung_hu_change
    f2 = sitk.GetImageFromArray(fa)
    f2.CopyInformation(fixed)
    fixed = _add_scan_noise(f2, noise_hu, rng)
    moving = _add_scan_noise(moving, noise_hu, rng)

    overlap_img = sitk.GetImageFromArray(overlap.astype(np.uint8))
    overlap_img.CopyInformation(fixed_ref)
    displacement = _field_image(disp, fixed_ref)

    kji = _pick_landmarks(sitk.GetArrayViewFromImage(fixed_labels), overlap, n_landmarks, rng)
    p = _idx_to_points(fixed_ref, kji)
    q = _affine_inverse_apply(R, warp(p)) if len(p) else p.copy()
    info = {"generator": "make_longitudinal_pair", "anatomy_seed": an.seed, "seed": seed,
            "breathing_mm": float(breathing_mm), "organ_shift_mm": float(organ_shift_mm),
            "weight_factor": float(weight_factor), "rotation_deg": [float(a) for a in rot],
            "translation_mm": [float(t) for t in trans], "fixed_spacing": sp_f.tolist(),
            "moving_spacing": sp_m.tolist(), "canonical_spacing": cs, "noise_hu": float(noise_hu),
            "lung_hu_change": float(lung_hu_change)}
    return PairSample(fixed, moving, fixed_labels, moving_labels, displacement, (p, q), overlap_img,
                      dict(LABEL_NAMES), info)


# ---------------------------------------------------------------------------------------------------------
# self-supervised pairs from a single CT
# ---------------------------------------------------------------------------------------------------------
def random_realistic_deformation(image: sitk.Image, labels: sitk.Image | None = None, seed: int = 0, *,
                                 amplitude_mm: float = 8.0, control_spacing_mm: float = 50.0,
                                 max_shift_mm: float = 20.0, max_rot_deg: float = 8.0, noise_hu: float = 10.0,
                                 n_landmarks: int = 100, label_names: dict | None = None) -> PairSample:
    """Self-supervised pair from one real CT with an exact ground-truth field.

    The given ``image`` (HU) becomes the MOVING (prior) scan (plus ``noise_hu`` noise); the FIXED (current)
    scan is the image resampled on its own grid through ``phi(p) = R(p + v(p))``: ``v`` a smooth cubic
    B-spline field (control points every ``control_spacing_mm``, random coefficients of std ``amplitude_mm``,
    damped until the map has no folding), ``R`` a rigid transform about the image centre (rotation up to
    ``max_rot_deg`` about each axis, shift up to ``max_shift_mm``). Ground truth ``d(p) = phi(p) - p`` on the
    fixed grid (LPS mm); ``labels`` (optional, same grid as ``image``) are carried along (nearest neighbour).
    Landmarks are fixed voxel centres at label boundaries (or strong edges when no labels), q = p + d(p).
    Outside the moving field of view the fixed image is -1024 HU; ``fixed_overlap`` marks where it is defined.
    """
    img = source_ct(image, labels, "random_realistic_deformation")
    rng = np.random.default_rng(seed)
    ref = _ref_image(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    extent = np.array(img.GetSize()) * np.array(img.GetSpacing())
    mesh = [max(1, int(round(e / control_spacing_mm))) for e in extent]
    bs = sitk.BSplineTransformInitializer(ref, mesh, 3)
    coef = rng.normal(0.0, amplitude_mm, len(bs.GetParameters()))
    size = np.array(img.GetSize())
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    R = _euler(rng.uniform(-1, 1, 3) * max_rot_deg, rng.uniform(-1, 1, 3) * max_shift_mm, centre)
    disp_arr = None
    for _ in range(8):
        bs.SetParameters(tuple(coef))
        v = sitk.TransformToDisplacementField(bs, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
        jac = jacobian_determinant_array(v)
        if jac.min() > 0.3:
            disp_arr = sitk.GetArrayFromImage(v)
            break
        coef *= 0.7
    if disp_arr is None:
        disp_arr = np.zeros(tuple(size[::-1]) + (3,))
        coef[:] = 0
    nz = size[2]
    out = np.empty_like(disp_arr)
    overlap = np.empty(disp_arr.shape[:3], bool)
    step = max(1, int(2_000_000 // (size[0] * size[1])))
    for k0 in range(0, nz, step):
        P = _grid_points(ref, k0, min(nz, k0 + step))
        Q = _affine_apply(R, P + disp_arr[k0:k0 + step])
        out[k0:k0 + step] = Q - P
        overlap[k0:k0 + step] = inside_image(ref, Q)
    del disp_arr
    displacement = _field_image(out, ref)
    tx = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    fixed = sitk.Resample(img, ref, tx, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    fixed = _add_scan_noise(fixed, noise_hu, rng)
    moving = _add_scan_noise(img, noise_hu, rng)
    overlap_img = sitk.GetImageFromArray(overlap.astype(np.uint8))
    overlap_img.CopyInformation(ref)
    if labels is not None:
        lab_u8 = sitk.Cast(labels, sitk.sitkUInt8)
        fixed_labels = sitk.Resample(lab_u8, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        lab_arr = sitk.GetArrayViewFromImage(fixed_labels)
        kji = _pick_landmarks(lab_arr, overlap, n_landmarks, rng)
    else:
        fixed_labels = lab_u8 = None
        kji = _edge_landmarks(fixed, overlap, n_landmarks, rng)
    p = _idx_to_points(ref, kji)
    q = p + out[kji[:, 0], kji[:, 1], kji[:, 2]] if len(kji) else p.copy()
    info = {"generator": "random_realistic_deformation", "seed": int(seed), "amplitude_mm": float(amplitude_mm),
            "control_spacing_mm": float(control_spacing_mm), "rotation_deg": list(np.rad2deg(
                [R.GetAngleX(), R.GetAngleY(), R.GetAngleZ()]).astype(float)),
            "translation_mm": list(map(float, R.GetTranslation())), "noise_hu": float(noise_hu),
            "bspline_scale_used": float(np.std(coef) / amplitude_mm) if amplitude_mm else 0.0}
    return PairSample(fixed, moving, fixed_labels, lab_u8, displacement, (p, q), overlap_img,
                      dict(label_names or {}), info)
