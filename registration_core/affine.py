"""Affine pre-alignment (torch, any device): several starts (body centroids, top/bottom body alignment, table
shifts found by correlating per-slice body profiles along z, rotations about the body axis), probed by a few Adam
steps at the coarsest level and ranked by LNCC over the overlap of the two fields of view; the best are refined
coarse to fine by Adam on LNCC with per-parameter learning rates.

Model (fixed world point x -> moving world point y, mm, LPS):  y = M (x - c) + c + t,  M = R0 + B,
with c the fixed body centroid, R0 the start rotation, B (3x3, starts 0) and t (mm) optimised; a penalty
rigidity * ||M^T M - I||^2 keeps M near a rotation unless the images demand a scaling or shear. This is exactly
``sitk.AffineTransform`` with matrix M, center c, translation t (a resampling transform: fixed -> moving).
The similarity is computed only over fixed body voxels whose image lies inside the moving scan's z-range and is
normalised by that overlap, so a moving scan with a shorter or shifted field of view is not penalised for the
anatomy it does not contain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .geometry import WorkGrid
from .preprocess import Prepared, normalise
from .similarity import LNCC
from .torchutil import to_tensor, world_points, world_to_norm


@dataclass
class AffineResult:
    """Fixed -> moving affine: y = matrix @ (x - center) + center + translation (mm, LPS)."""

    matrix: np.ndarray
    center: np.ndarray
    translation: np.ndarray
    similarity: float
    iterations: int
    starts: int
    similarity_coarse: float = float("nan")   # LNCC over the overlap at the coarsest level (less noise-bound)

    def to_sitk(self) -> sitk.AffineTransform:
        """The same mapping as a SimpleITK AffineTransform (fixed point -> moving point)."""
        t = sitk.AffineTransform(3)
        t.SetMatrix(self.matrix.astype(float).ravel().tolist())
        t.SetCenter(self.center.astype(float).tolist())
        t.SetTranslation(self.translation.astype(float).tolist())
        return t

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map fixed points [N, 3] (mm) to moving points."""
        return (pts - self.center) @ self.matrix.T + self.center + self.translation

    def apply_inverse(self, pts: np.ndarray) -> np.ndarray:
        """Map moving points [..., 3] (mm) back to fixed points: x = matrix^-1 (y - center - translation) + center."""
        return (pts - self.center - self.translation) @ np.linalg.inv(self.matrix).T + self.center


def _rot(axis: int, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


class _Level:
    def __init__(self, fp: Prepared, mp: Prepared, spacing: float, window, device):
        self.spacing = spacing
        self.fgrid = fp.grid(spacing)
        self.mgrid = mp.grid(spacing)
        f = normalise(self.fgrid.resample(fp.coarse_src), window)
        m = normalise(self.mgrid.resample(mp.coarse_src), window)
        self.f = to_tensor(f, device)
        self.m = to_tensor(m, device)
        self.w = to_tensor(fp.mask_on(self.fgrid).astype(np.float32), device)
        self.denom = self.w.sum()
        self.pts = world_points(self.fgrid, device)
        self.radius = 2
        self.lncc = LNCC(self.f, self.w, self.radius, self.denom)


class _Model(torch.nn.Module):
    def __init__(self, r0, t0, c, device):
        super().__init__()
        kw = dict(device=device, dtype=torch.float32)
        self.r0 = torch.as_tensor(r0, **kw)
        self.t0 = torch.as_tensor(t0, **kw)
        self.c = torch.as_tensor(c, **kw)
        self.b = torch.nn.Parameter(torch.zeros(3, 3, **kw))
        self.t = torch.nn.Parameter(torch.zeros(3, **kw))

    def matrix(self):
        return self.r0 + self.b

    def forward(self, pts):
        return (pts - self.c) @ self.matrix().T + self.c + self.t0 + self.t


def _loss(model, lv: _Level):
    """Negative LNCC over the part of the fixed body whose image lies inside the moving scan's z-range (outside
    the moving field of view nothing is known, so it neither helps nor hurts), normalised by that overlap."""
    y = model(lv.pts)
    g = world_to_norm(y, lv.mgrid)[None]
    warped = F.grid_sample(lv.m, g, mode="bilinear", padding_mode="border", align_corners=True)
    with torch.no_grad():
        inside = ((y[..., 2] >= lv.z_lo) & (y[..., 2] <= lv.z_hi)).to(lv.w.dtype)[None, None]
        w = lv.w * inside
        lv.last_overlap = float(w.sum() / lv.denom.clamp_min(1e-6))
    return -(lv.lncc.map(warped) * w).sum() / w.sum().clamp_min(1.0)


def _non_rigidity(matrix: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of M^T M - I (dimensionless): 0 for a rotation, about 12 s^2 for an isotropic scaling
    by 1 + s, about 2 h^2 for a shear h."""
    return (matrix.T @ matrix - torch.eye(3, device=matrix.device, dtype=matrix.dtype)).pow(2).sum()


def _run(model, lv, iters, lr_t, lr_b, rigidity: float = 0.0):
    """Adam with a linearly decaying rate on -LNCC + rigidity * :func:`_non_rigidity`; returns (final negative
    LNCC, fixed-body overlap fraction)."""
    opt = torch.optim.Adam([{"params": [model.t], "lr": lr_t}, {"params": [model.b], "lr": lr_b}])
    base = [lr_t, lr_b]
    for it in range(iters):
        frac = 1 - 0.8 * it / max(1, iters)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * frac
        opt.zero_grad()
        loss = _loss(model, lv) + rigidity * _non_rigidity(model.matrix())
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(_loss(model, lv)), lv.last_overlap


def _score(loss: float, overlap: float, need: float) -> float:
    """Start ranking (higher is better): overlap-normalised LNCC, discounted when the overlap is implausibly
    small compared with what the two fields of view allow (``need``)."""
    return -loss * min(1.0, overlap / max(1e-3, need))


def _profiles(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per axial slice (z, mm) body descriptors of a prepared scan: body area, lung/gas area, bone area and mean
    HU inside the body, each standardised over the slices that contain body. Returns (z_mm [n], feats [n, 4])."""
    hu, m = p.coarse, p.mask
    s = p.coarse_grid.spacing
    area = m.sum((1, 2)).astype(float)
    gas = (m & (hu < -400)).sum((1, 2)).astype(float)
    bone = (m & (hu > 200)).sum((1, 2)).astype(float)
    mean = np.where(area > 0, (hu * m).sum((1, 2)) / np.maximum(area, 1), -1000.0)
    feats = np.stack([np.sqrt(area), np.sqrt(gas), np.sqrt(bone), mean / 100.0], 1) * (area[:, None] > 0)
    z = p.coarse_grid.origin[2] + s * np.arange(hu.shape[0])
    return z, feats


def _z_candidates(fp: Prepared, mp: Prepared, k: int = 3, min_overlap_mm: float = 100.0) -> list[float]:
    """Table-shift candidates (moving z - fixed z, mm): peaks of the correlation of the per-slice body profiles
    (:func:`_profiles`) over all z-offsets that leave at least ``min_overlap_mm`` of body overlap."""
    zf, pf = _profiles(fp)
    zm, pm = _profiles(mp)
    s = fp.coarse_grid.spacing
    # resample the moving profile onto the fixed slice spacing (both coarse grids are isotropic, same spacing)
    bf = np.flatnonzero(pf[:, 0] > 0)
    bm = np.flatnonzero(pm[:, 0] > 0)
    if len(bf) < 3 or len(bm) < 3:
        return []
    pf, zf = pf[bf[0]:bf[-1] + 1], zf[bf[0]:bf[-1] + 1]
    pm, zm = pm[bm[0]:bm[-1] + 1], zm[bm[0]:bm[-1] + 1]
    nf, nm = len(pf), len(pm)
    need = max(3, min(int(min_overlap_mm / s), int(0.5 * min(nf, nm))))
    scores = []
    for lag in range(-(nf - need), nm - need + 1):   # fixed slice i <-> moving slice i + lag
        i0, i1 = max(0, -lag), min(nf, nm - lag)
        if i1 - i0 < need:
            continue
        a, b = pf[i0:i1], pm[i0 + lag:i1 + lag]
        a = a - a.mean(0)
        b = b - b.mean(0)
        den = np.sqrt((a * a).sum(0) * (b * b).sum(0)) + 1e-6
        r = float(np.mean((a * b).sum(0) / den))
        scores.append((r, zm[0] - zf[0] + lag * s))
    scores.sort(key=lambda x: -x[0])
    out: list[float] = []
    for r, dz in scores:
        if all(abs(dz - o) > 30 for o in out):
            out.append(dz)
        if len(out) >= k:
            break
    return out


def _inplane_shift(fp: Prepared, mp: Prepared, dz: float) -> np.ndarray:
    """x/y body-centroid difference (moving - fixed, mm) over the slices that overlap at table shift ``dz``."""
    def cen(p, lo, hi):
        g = p.coarse_grid
        z = g.origin[2] + g.spacing * np.arange(p.mask.shape[0])
        sel = (z >= lo) & (z <= hi)
        idx = np.argwhere(p.mask[sel])
        if len(idx) < 10:
            return None
        return np.asarray(g.origin[:2]) + g.spacing * idx.mean(0)[::-1][:2]
    lo = max(fp.body_lo[2], mp.body_lo[2] - dz)
    hi = min(fp.body_hi[2], mp.body_hi[2] - dz)
    a, b = cen(fp, lo, hi), cen(mp, lo + dz, hi + dz)
    if a is None or b is None:
        return (mp.centroid - fp.centroid)[:2]
    return b - a


def optimise_affine(fp: Prepared, mp: Prepared, spacings, iterations, window, device,
                    rotation_deg: float = 15.0, progress=None, rigidity: float = 0.0) -> AffineResult:
    """Fixed -> moving affine (see module docstring). ``spacings``/``iterations``: coarse-to-fine levels (mm).

    Starts (table position and field of view may differ, the patient may lie rotated): body centroids, top and
    bottom body alignment, and the best z-offsets of the per-slice body profiles (table shift, found by 1D
    correlation), each with the x/y body-centroid shift of the overlapping slices; every start is probed with
    rotations about the body (z) axis of 0, +-rotation_deg/2, +-rotation_deg (and +-rotation_deg about x and y
    for the best one) by a few Adam steps at the coarsest level. The best starts by overlap-normalised LNCC
    are refined coarse to fine and the best result is returned; ``similarity`` is its LNCC over the overlap.
    ``rigidity`` weighs :func:`_non_rigidity` of the matrix against LNCC in every Adam step: scans of one patient
    differ mainly by a rigid motion, and without it a shear and a 7 % z-compression that matched a prior with a
    shorter field of view slightly better left 25 mm errors (held-out phantom 950: affine TRE 10.5 -> 3.0 mm at
    0.3; scalings the images do support, e.g. 4 % on the real lung pair, are kept).
    """
    levels = [_Level(fp, mp, s, window, device) for s in spacings]
    zlo, zhi = float(mp.fov[0][2]), float(mp.fov[1][2])
    for lv in levels:
        lv.z_lo, lv.z_hi = zlo, zhi
        lv.last_overlap = 0.0
    c = fp.centroid
    # overlap the two fields of view allow at best, as a share of the fixed body (z extents)
    fz = max(1e-3, fp.body_hi[2] - fp.body_lo[2])
    need = 0.7 * min(1.0, (min(fp.body_hi[2] - fp.body_lo[2], mp.body_hi[2] - mp.body_lo[2])) / fz)
    # translation starts
    t_com = mp.centroid - fp.centroid
    cands = [t_com]

    def add(t):
        if all(np.abs(t - o).max() > 20 for o in cands):
            cands.append(t)

    for tz in (mp.body_hi[2] - fp.body_hi[2], mp.body_lo[2] - fp.body_lo[2]):
        t = t_com.copy()
        t[2] = tz
        add(t)
    for dz in _z_candidates(fp, mp):
        add(np.array([*_inplane_shift(fp, mp, dz), dz]))
    lv0 = levels[0]
    lr_t0, lr_b0 = 0.5 * lv0.spacing, 0.02
    probe = 8
    scored = []

    def trial(r0, t0):
        m = _Model(r0, t0, c, device)
        loss, ov = _run(m, lv0, probe, lr_t0, lr_b0, rigidity)
        scored.append((_score(loss, ov, need), m))

    for t0 in cands:
        trial(np.eye(3), t0)
    if rotation_deg > 0:
        # rotations about the body axis for the two best table positions, then about x and y for the best start
        firsts = sorted(scored, key=lambda s: -s[0])[:2]
        for _, m0 in firsts:
            for a in (-rotation_deg / 2, rotation_deg / 2, -rotation_deg, rotation_deg):
                trial(_rot(2, a), m0.t0.cpu().numpy().astype(float))
        best = max(scored, key=lambda s: s[0])[1]
        with torch.no_grad():
            t_best = (best.t0 + best.t).cpu().numpy().astype(float)
            r_best = best.matrix().cpu().numpy().astype(float)
        for axis in (0, 1):
            for sgn in (-1, 1):
                trial(_rot(axis, sgn * rotation_deg) @ r_best, t_best)
    starts = len(scored)
    total = probe * starts
    scored.sort(key=lambda s: -s[0])
    # the two best starts are refined at the coarsest level, the better one then at the finer levels
    results = []
    for _, model in scored[:2]:
        loss, ov = _run(model, lv0, iterations[0], 0.5 * lv0.spacing, 0.01 * lv0.spacing / 8, rigidity)
        total += iterations[0]
        results.append((_score(loss, ov, need), -loss, model))
    _, sim, model = max(results, key=lambda r: r[0])
    sim_coarse = sim
    for lv, iters in zip(levels[1:], iterations[1:]):
        loss, _ = _run(model, lv, iters, 0.5 * lv.spacing, 0.01 * lv.spacing / 8, rigidity)
        sim = -loss
        total += iters
    if progress is not None:
        progress.update(len(levels))
    with torch.no_grad():
        mat = model.matrix().double().cpu().numpy()
        trans = (model.t0 + model.t).double().cpu().numpy()
    return AffineResult(mat, np.asarray(c, float), trans, sim, total, starts, sim_coarse)
