"""The registration pipeline: preprocess -> affine -> network (optional) -> instance optimisation -> full-res.

See the package docstring for the method; conventions in docs/CONTRACTS.md.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .affine import AffineResult, optimise_affine
from .blocks import SpatialTransformer
from .config import RegistrationConfig
from .deformable import optimise_deformable
from .errors import RegistrationInputError
from .geometry import WorkGrid, inside_image, shrink_for
from .instance_opt import optimise_field, resize, warp_same_grid
from .io import check_image
from .metrics import folding_percent, jacobian_determinant_array, sdlogj
from .network import DEFAULT_WEIGHTS, load_network
from .preprocess import Prepared, normalise
from .regions import REGIONS
from .similarity import masked_ncc
from .torchutil import (
    peak_memory_bytes,
    pick_device,
    release_free_memory,
    to_tensor,
    tune_allocator,
    world_points,
)
from .warp import full_field_and_warp

__version__ = "0.1.0"


@dataclass
class RegistrationResult:
    """Output of :func:`register` (see docs/CONTRACTS.md).

    displacement: sitk vector float64 image on FIXED's exact grid, mm LPS, fixed p -> moving p + d(p) (total).
    affine: sitk.AffineTransform, fixed point -> moving point (the affine part alone).
    warped: moving resampled onto the fixed grid through ``displacement``, float32 HU, -1024 outside.
    report: JSON-serialisable dict (stage times in s, device, peak memory in bytes, similarity, folding, the
        weights used, per-region figures, ...).
    region_weights: the network's K soft region weights (vector float32 image, component k = region id k + 1 of
        :mod:`registration_core.regions`, summing to 1 per voxel) on the network's grid over the fixed body box
        (axis-aligned LPS, about ``network_spacing`` mm); None when no network ran.
    """

    displacement: sitk.Image
    affine: sitk.AffineTransform
    warped: sitk.Image
    report: dict = field(default_factory=dict)
    region_weights: sitk.Image | None = None


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="registration", unit="step", dynamic_ncols=True)

    def stage(self, name):
        if self.bar is not None:
            self.bar.set_description(name)

    def update(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _inside_fraction(aff: AffineResult, fp: Prepared, mp: Prepared) -> float:
    """Share of the smaller body (fixed or moving) that overlaps the other after the affine (0..1)."""
    g = fp.coarse_grid
    idx = np.argwhere(fp.mask)[:, ::-1].astype(float)  # x, y, z voxel indices
    pts = np.asarray(g.origin) + g.spacing * idx
    q = aff.apply(pts)
    mg = mp.coarse_grid
    mi = np.round((q - np.asarray(mg.origin)) / mg.spacing).astype(int)
    ok = np.all((mi >= 0) & (mi < np.asarray(mg.size)), 1)
    hit = np.zeros(len(q), bool)
    hit[ok] = mp.mask[mi[ok, 2], mi[ok, 1], mi[ok, 0]]
    vol_f = fp.mask.sum() * g.spacing ** 3
    vol_m = mp.mask.sum() * mg.spacing ** 3
    return float(hit.sum() * g.spacing ** 3 / max(1e-6, min(vol_f, vol_m)))


def _affine_plausible(aff: AffineResult) -> str | None:
    sv = np.linalg.svd(aff.matrix, compute_uv=False)
    if sv.max() > 1.35 or sv.min() < 0.74:
        return f"the alignment needs a scaling of {sv.min():.2f}-{sv.max():.2f}"
    if np.linalg.det(aff.matrix) <= 0:
        return "the alignment needs a mirror flip"
    return None


def field_quality(u: torch.Tensor, aff: AffineResult, grid: WorkGrid,
                  regions: tuple[np.ndarray, list[float]] | None = None) -> dict:
    """Regularity of the TOTAL mapping (affine o residual) on the working grid: ``folding_percent`` (% of voxels
    with Jacobian determinant <= 0) and ``sdlogj`` (std of log J, Learn2Reg's definition), both from
    :mod:`registration_core.metrics`. ``u``: residual field [1, 3, z, y, x] in mm (channels x, y, z, LPS) on
    ``grid``; ``aff`` maps fixed points to moving points. With ``regions`` = (region map uint8 [z, y, x] on
    ``grid``, 0 outside the body; shares of the body per region) the result also has ``regions``
    (:func:`region_figures`)."""
    u_np = u[0].permute(1, 2, 3, 0).double().cpu().numpy()
    pts = world_points(grid, "cpu", torch.float64).numpy()
    x = pts + u_np
    total = (x - aff.center) @ aff.matrix.T + aff.center + aff.translation - pts
    del x, pts
    disp_img = grid.to_image(total)
    jac = jacobian_determinant_array(disp_img)
    out = {"folding_percent": float(folding_percent(jac)), "sdlogj": float(sdlogj(disp_img))}
    if regions is not None:
        out["regions"] = region_figures(total, u_np @ aff.matrix.T, jac, *regions)
    return out


#: HU above which a fixed voxel counts as anatomy for the region figures even outside the body mask (lungs that
#: the field of view cuts are no axial hole, so the body mask leaves them out; outside air is about -1000 HU)
ANATOMY_MIN_HU = -950.0


def fixed_anatomy(f: torch.Tensor, body: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """The fixed body mask plus fixed voxels above :data:`ANATOMY_MIN_HU` inside the fixed scan, the latter opened
    by one voxel (noise speckles in the outside air go, lungs stay). ``f`` is the HU-``window``-normalised fixed
    image (-1024 HU outside its field of view); [1, 1, z, y, x] float 0/1 on the working grid.

    The body mask alone misses lungs that the field of view cuts (they are no axial hole): on the real lung pair
    it held none of the 51 landmarks, so the lungs had no data term and their field was extrapolated."""
    lo, hi = window
    if lo >= ANATOMY_MIN_HU:
        return body
    dense = (f > (ANATOMY_MIN_HU - lo) / (hi - lo)).to(body.dtype)
    opened = F.max_pool3d(-F.max_pool3d(-dense, 3, stride=1, padding=1), 3, stride=1, padding=1)
    return torch.maximum(body, opened)


def anatomy_mask(work: WorkingPair, window: tuple[float, float]) -> torch.Tensor:
    """Where the region figures are taken: :func:`fixed_anatomy` of the working pair; [1, 1, z, y, x] float 0/1."""
    return fixed_anatomy(work.f, work.body, window)


def region_maps(weights: torch.Tensor, body: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """The network's soft region weights on the working grid: (region map uint8 [z, y, x] = argmax region id
    1..K inside ``body``, 0 outside; share of the body per region = weights summed over body voxels / body
    voxels, in region order, summing to 1). ``weights``: [1, K, z', y', x'] on a grid over the same box as
    ``body`` [1, 1, z, y, x] (first/last voxel centres shared), resized trilinearly one channel at a time."""
    shape = body.shape[-3:]
    inside = body[0, 0] > 0
    n_body = max(1, int(inside.sum()))
    best = torch.full(shape, -1.0, device=body.device)
    labels = torch.zeros(shape, dtype=torch.uint8, device=body.device)
    shares = []
    for k in range(weights.shape[1]):
        wk = resize(weights[:, k:k + 1].float(), shape)[0, 0]
        shares.append(float(wk[inside].sum()) / n_body)
        better = wk > best
        labels[better] = k + 1
        best = torch.where(better, wk, best)
    labels[~inside] = 0
    return labels.cpu().numpy(), shares


def region_figures(total: np.ndarray, deformable: np.ndarray, jac: np.ndarray, labels: np.ndarray,
                   shares: list[float]) -> dict:
    """Per-region figures of the final field, keyed by region name (:mod:`registration_core.regions`): ``id``,
    ``title``, ``colour`` (#rrggbb, as in the QC picture), ``share_of_body`` (0..1, soft weights), ``voxels``
    (working-grid voxels whose largest weight is the region, inside the body), ``mean_mm`` / ``p95_mm`` (magnitude of the total displacement, affine included),
    ``deformable_mean_mm`` / ``deformable_p95_mm`` (magnitude of the non-affine part) and ``folding_percent``
    (% of those voxels with Jacobian determinant <= 0). Arrays on one grid: ``total`` / ``deformable``
    [z, y, x, 3] mm, ``jac`` [z, y, x], ``labels`` [z, y, x] region ids (0 = outside the body). Figures of a
    region with no voxel are None."""
    out = {}
    for r, share in zip(REGIONS, shares):
        sel = labels == r.id
        n = int(sel.sum())
        row = {"id": r.id, "title": r.title, "colour": "#{:02x}{:02x}{:02x}".format(*r.colour),
               "share_of_body": round(float(share), 4), "voxels": n}
        if n:
            mag = np.linalg.norm(total[sel], axis=-1)
            dmag = np.linalg.norm(deformable[sel], axis=-1)
            row.update(mean_mm=round(float(mag.mean()), 3), p95_mm=round(float(np.percentile(mag, 95)), 3),
                       deformable_mean_mm=round(float(dmag.mean()), 3),
                       deformable_p95_mm=round(float(np.percentile(dmag, 95)), 3),
                       folding_percent=round(float(100.0 * np.count_nonzero(jac[sel] <= 0) / n), 4))
        else:
            row.update(mean_mm=None, p95_mm=None, deformable_mean_mm=None, deformable_p95_mm=None,
                       folding_percent=None)
        out[r.name] = row
    return out


def _pick_spacing(fp: Prepared, mp: Prepared, cfg: RegistrationConfig, device) -> float:
    ext = np.asarray(fp.body_hi) - np.asarray(fp.body_lo)
    vol = float(np.prod(np.maximum(ext, 1.0)))
    cap = cfg.max_working_voxels_cuda if device.type == "cuda" else cfg.max_working_voxels
    # no grid much finer than the finer of the two scans: detail the prior has (e.g. 1.4 mm pixels against the
    # current scan's 2.7 x 5 mm) still sharpens the features that drive the field, and MIND descriptors sampled at
    # 2/3 of the finest input spacing are sharper than at that spacing (abdomen, 3 mm scans: 2.1 vs 2.7 mm TRE on
    # a validation case), but nothing is gained further below
    finest = min(fp.image.GetSpacing()) if cfg.finest_follows_fixed else min(min(fp.image.GetSpacing()),
                                                                              min(mp.image.GetSpacing())) / 1.5
    s = max(cfg.working_spacing, finest, (vol / cap) ** (1 / 3))
    return float(round(s, 2))


def prepare_pair(fixed: sitk.Image, moving: sitk.Image, cfg: RegistrationConfig) -> tuple[Prepared, Prepared]:
    """The engine's preprocessing of a (current, prior) pair: 4 mm axis-aligned LPS copies with body masks and
    boxes (:class:`Prepared`), with ``cfg``'s body threshold (HU) and margin (mm)."""
    return (Prepared(fixed, "fixed (current) image", 4.0, cfg.body_threshold_hu, cfg.body_margin_mm),
            Prepared(moving, "moving (prior) image", 4.0, cfg.body_threshold_hu, cfg.body_margin_mm))


def affine_stage(fp: Prepared, mp: Prepared, cfg: RegistrationConfig, device, progress=None) -> AffineResult:
    """The engine's affine pre-alignment (fixed point -> moving point, LPS mm) with ``cfg``'s settings; used by
    :func:`register` and by the training data, so both always run the same stage."""
    return optimise_affine(fp, mp, cfg.affine_spacings, cfg.affine_iterations, cfg.hu_window, device,
                           cfg.rotation_starts_deg, progress=progress, rigidity=cfg.affine_rigidity)


def _load_net(cfg: RegistrationConfig, device):
    """(network or None, status: the weights path or why there is none, sha256 hex of the weights file or None)."""
    w = cfg.weights
    if w is not None and str(w).strip().lower() in ("", "none"):
        return None, "disabled", None
    if w is None:
        if not DEFAULT_WEIGHTS.is_file():
            return None, "skipped (no weights file)", None
        w = DEFAULT_WEIGHTS
    net = load_network(w, device)
    return net, str(w), hashlib.sha256(Path(w).read_bytes()).hexdigest()


def weights_provenance(path: str | None, sha256: str | None) -> dict | None:
    """The report's ``weights`` entry: ``name`` (file name), ``path``, ``sha256`` (hex of the file's bytes) and
    ``shipped`` (True when it is the packaged default file, by content); None when no network ran."""
    if not sha256 or not path:
        return None
    shipped = DEFAULT_WEIGHTS.is_file() and (Path(path).resolve() == DEFAULT_WEIGHTS.resolve() or
                                             hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest() == sha256)
    return {"name": Path(path).name, "path": str(path), "sha256": sha256, "shipped": bool(shipped)}


def register(fixed: sitk.Image, moving: sitk.Image, config: RegistrationConfig | None = None,
             progress: bool = False, start: sitk.Image | None = None) -> RegistrationResult:
    """Register ``moving`` (prior) to ``fixed`` (current) CT: images in HU, any grids/orientations (LPS mm).

    Returns a :class:`RegistrationResult` whose displacement lies on FIXED's exact grid (vector float64, mm):
    fixed point p corresponds to moving point p + d(p) (affine included). Raises
    :class:`RegistrationInputError` (one line) for unusable input or scans that do not overlap.

    ``start``: a known total field in the same convention (3-component vector image, mm, LPS, any grid; values
    beyond its grid are carried on from its edge) that instance optimisation starts from instead of the network's
    field (which is then not run): a previous registration of the same pair, or -- in ``bench/steps`` -- the exact
    field of a synthetic pair, the start a perfect network would give.
    """
    if start is not None and start.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(f"start field must have 3 components per voxel, not {start.GetNumberOfComponentsPerPixel()}")
    cfg = config or RegistrationConfig()
    t_all = time.perf_counter()
    check_image(fixed, "fixed (current) image")
    check_image(moving, "moving (prior) image")
    device = pick_device(cfg.device)
    tune_allocator()
    threads_before = torch.get_num_threads()
    threads = _pick_threads(cfg, device)
    torch.set_num_threads(threads)
    try:
        return _register(fixed, moving, cfg, progress, device, t_all, start)
    finally:
        torch.set_num_threads(threads_before)


def _pick_threads(cfg: RegistrationConfig, device) -> int:
    if cfg.threads:
        return max(1, int(cfg.threads))
    n = torch.get_num_threads()
    if device.type == "cpu":
        try:
            cores = len(os.sched_getaffinity(0))
            if os.getloadavg()[0] >= cores:
                return 1
        except (AttributeError, OSError):
            pass
    return n


def _level_iterations(cfg: RegistrationConfig) -> tuple[int, tuple[int, ...]]:
    """(iterations at the finest level, iterations per deformable level) for the progress bar and the LNCC
    optimiser; ``cfg.iterations`` None means 60 at the finest level."""
    fine_iters = 60 if cfg.iterations is None else max(0, int(cfg.iterations))
    level_iters = tuple([int(round(fine_iters * cfg.coarse_iteration_factor))] * (len(cfg.level_factors) - 1)
                        + [fine_iters])
    if cfg.deformable == "mind":
        level_iters = tuple(int(round(fine_iters * cfg.coarse_iteration_factor)) * (len(sc) - 1) + fine_iters
                            for sc in cfg.schedules_mm) if fine_iters else ()
    return fine_iters, level_iters


def _check_affine(aff: AffineResult, fp: Prepared, mp: Prepared, cfg: RegistrationConfig) -> dict:
    """The affine's report entry (matrix, centre and translation in mm, LNCC, body overlap 0..1); raises
    :class:`RegistrationInputError` when the scans do not overlap, are too dissimilar after the alignment or
    need an implausible scaling or a mirror flip."""
    overlap = _inside_fraction(aff, fp, mp)
    entry = {"matrix": aff.matrix.tolist(), "center_mm": aff.center.tolist(),
             "translation_mm": aff.translation.tolist(), "lncc": aff.similarity,
             "lncc_coarse": aff.similarity_coarse,
             "starts": aff.starts, "iterations": aff.iterations, "body_overlap": overlap}
    why = _affine_plausible(aff)
    # similarity judged at the coarsest affine level: there noise and residual deformation (which the
    # deformable stages remove) lower LNCC far less than at 4 mm (synthetic pairs: 0.27-0.34 at 8 mm where
    # 0.13-0.17 at 4 mm; an unrelated body part: 0.07 at 8 mm)
    sim = aff.similarity_coarse if np.isfinite(aff.similarity_coarse) else aff.similarity
    if overlap < cfg.min_overlap or sim < cfg.min_similarity or why:
        detail = why or (f"only {100 * overlap:.0f}% of the body overlaps" if overlap < cfg.min_overlap
                         else f"image similarity after alignment is only {sim:.2f}")
        raise RegistrationInputError(
            f"the scans do not overlap: no alignment shows the same anatomy ({detail}); "
            "check that both series are of the same patient and body region")
    return entry


@dataclass
class WorkingPair:
    """The pair on the working grid (output of :func:`resample_stage`).

    grid: isotropic axis-aligned LPS grid over the fixed body box (``spacing`` mm); f, m: fixed and affinely
    resampled moving, HU-window normalised to [0, 1], [1, 1, z, y, x] on the device (with ``extrapolate_edges``
    each scan's edge voxels carried on past its field of view, not -1024 HU); body: fixed body mask;
    weight: similarity weight (:func:`fixed_anatomy` dilated by 8 mm, inside the moving field of view, and with
    ``extrapolate_edges`` inside the fixed one); valid: 1 where the affine maps into the moving image;
    ncc_identity / ncc_affine: NCC inside the body before / after the affine."""

    grid: WorkGrid
    spacing: float
    f: torch.Tensor
    m: torch.Tensor
    body: torch.Tensor
    weight: torch.Tensor
    valid: torch.Tensor
    ncc_identity: float
    ncc_affine: float


def resample_stage(fixed: sitk.Image, moving: sitk.Image, fp: Prepared, mp: Prepared, aff: AffineResult,
                   cfg: RegistrationConfig, device) -> WorkingPair:
    """Working grid over the fixed body box (spacing from :func:`_pick_spacing`, mm) and both images on it, the
    moving one through the affine (fixed point -> moving point); masks and similarity before/after the affine."""
    s0 = _pick_spacing(fp, mp, cfg, device)
    grid = fp.grid(s0)
    f_hu = grid.resample(shrink_for(fixed, s0), extrapolate=cfg.extrapolate_edges)
    m_src = shrink_for(moving, s0)
    m_aff = grid.resample(m_src, transform=aff.to_sitk(), extrapolate=cfg.extrapolate_edges)
    m_id = grid.resample(m_src)
    pts = world_points(grid, "cpu", torch.float64).numpy()
    valid_aff = inside_image(moving, aff.apply(pts.reshape(-1, 3)).reshape(pts.shape)).astype(np.float32)
    valid_id = inside_image(moving, pts).astype(np.float32)
    in_fixed = inside_image(fixed, pts).astype(np.float32) if cfg.extrapolate_edges else None
    del pts
    body = to_tensor(fp.mask_on(grid).astype(np.float32), device)
    f = to_tensor(normalise(f_hu, cfg.hu_window), device)
    r = max(1, int(round(8.0 / s0)))
    body_d = F.max_pool3d(fixed_anatomy(f, body, cfg.hu_window), 2 * r + 1, stride=1, padding=r)
    m = to_tensor(normalise(m_aff, cfg.hu_window), device)
    va = to_tensor(valid_aff, device)
    if cfg.extrapolate_edges:
        body_d = body_d * to_tensor(in_fixed, device)
    ncc_id = masked_ncc(f, to_tensor(normalise(m_id, cfg.hu_window), device), body * to_tensor(valid_id, device))
    ncc_aff = masked_ncc(f, m, body * va)
    return WorkingPair(grid=grid, spacing=s0, f=f, m=m, body=body, weight=body_d * va, valid=va,
                       ncc_identity=ncc_id, ncc_affine=ncc_aff)


@dataclass
class NetworkStart:
    """Output of :func:`network_stage`: ``start`` residual [1, 3, z, y, x] in mm (channels x/y/z) on the working
    grid, or None without weights; ``status``: the weights path or why there is none; ``sha256``: hex of the
    weights file or None; ``weights``: the K soft region weights [1, K, z', y', x'] on the network's grid over the
    box of ``grid`` (the working grid: same first/last voxel centres) or None."""

    start: torch.Tensor | None
    status: str
    sha256: str | None
    weights: torch.Tensor | None = None
    grid: WorkGrid | None = None

    def weights_image(self) -> sitk.Image | None:
        """The region weights as a vector float32 sitk image (component k = region id k + 1) on the network's
        grid: axis-aligned LPS, spacing per axis = extent / (n - 1) mm; None without a network."""
        if self.weights is None:
            return None
        g = self.grid
        arr = self.weights[0].permute(1, 2, 3, 0).float().cpu().numpy()  # [z, y, x, K]
        img = sitk.GetImageFromArray(arr, isVector=True)
        img.SetOrigin(g.origin)
        img.SetSpacing([float(e / max(1, n - 1)) for e, n in zip(g.extent, arr.shape[:3][::-1])])
        return img


@torch.no_grad()
def cascade(net, f: torch.Tensor, m: torch.Tensor, passes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The network applied ``passes`` times, each pass to the prior warped by the field so far (a recursive
    cascade with shared weights). f, m: [1, 1, D, H, W] on one grid. With u the field so far, the next pass sees
    m_u(y) = m(y + u(y)) and returns a residual r with f(x) ~ m_u(x + r(x)) = m(x + r(x) + u(x + r(x))), so the
    field becomes r + u o (id + r). Returns (displacement
    [1, 3, D, H, W] in voxels of that grid, channels x/y/z, fixed voxel v <-> moving v + u(v); the first pass's
    region weights [1, K, D, H, W])."""
    disp, weights, _ = net(f, m)
    warp = SpatialTransformer()
    for _ in range(int(passes) - 1):
        r, _, _ = net(f, warp(m, disp))
        disp = r + warp(disp, r)
    return disp, weights


def network_stage(work: WorkingPair, cfg: RegistrationConfig, device) -> NetworkStart:
    """The network's start field on the working grid and its region weights (:class:`NetworkStart`). The network
    sees both images at ``cfg.network_spacing`` mm; its voxel displacement is scaled to mm and resized."""
    net, net_status, net_sha = _load_net(cfg, device)
    if net is None:
        return NetworkStart(None, net_status, net_sha)
    g4 = work.grid.resized(cfg.network_spacing)
    disp, weights = cascade(net, resize(work.f, g4.shape_zyx), resize(work.m, g4.shape_zyx), cfg.network_passes)
    init_u = resize(disp * g4.spacing, work.f.shape[-3:])
    return NetworkStart(init_u, net_status, net_sha, weights.float(), work.grid)


def start_on_grid(start: sitk.Image, aff: AffineResult, grid: WorkGrid, device) -> torch.Tensor:
    """A total field ``start`` (fixed point p -> moving point p + d(p), mm, LPS; any grid, carried on from its edge)
    as the deformable stage's residual on the working ``grid``: u with A(p + u(p)) = p + d(p), i.e.
    u(p) = M^-1 (p + d(p) - c - t) + c - p for the affine A(x) = M (x - c) + c + t. Returns [1, 3, D, H, W] mm,
    channels x/y/z."""
    d = np.stack([grid.resample(sitk.VectorIndexSelectionCast(start, k, sitk.sitkFloat32), default=0.0,
                                extrapolate=True) for k in range(3)], -1).astype(np.float64)   # [z, y, x, 3]
    p = world_points(grid, "cpu", torch.float64).numpy()
    u = aff.apply_inverse(p + d) - p
    return torch.as_tensor(np.moveaxis(u, -1, 0)[None].astype(np.float32), device=device)


def deformable_stage(work: WorkingPair, cfg: RegistrationConfig, init_u: torch.Tensor | None, fine_iters: int,
                     level_iters: tuple[int, ...], device, progress=None) -> tuple[torch.Tensor, dict]:
    """Instance optimisation from ``init_u`` (or zero): the MIND stage (``cfg.deformable == "mind"``,
    :func:`optimise_deformable`) or the LNCC optimiser (:func:`optimise_field`); ``fine_iters == 0`` keeps the
    start. Returns (residual [1, 3, z, y, x] in mm on the working grid, info with ``levels``)."""
    f, m, weight, grid, va = work.f, work.m, work.weight, work.grid, work.valid
    if fine_iters > 0 and cfg.deformable == "mind":
        return optimise_deformable(f, m, weight, grid, cfg, init_u, valid=va, progress=progress)
    if fine_iters > 0:
        spacings = tuple(work.spacing * k for k in cfg.level_factors)
        return optimise_field(f, m, weight, grid, spacings, level_iters, cfg.lncc_radius_mm, cfg.lncc_smoothness,
                              cfg.field_smoothing_passes, cfg.learning_rate_mm, init_u, progress=progress,
                              control_factor=cfg.control_factor, radius_vox=cfg.lncc_radius_vox,
                              adam_eps=cfg.adam_eps, folding_weight=cfg.folding_weight,
                              folding_floor=cfg.folding_floor, valid=va)
    u = init_u if init_u is not None else torch.zeros(1, 3, *f.shape[-3:], device=device)
    return u, {"levels": []}


class _Timer:
    """Stage wall times (s) into ``times[name]``, with the progress bar's stage label."""

    def __init__(self, times: dict, bar: _Progress):
        self.times, self.bar = times, bar

    def __call__(self, name: str, label: str | None = None):
        self.name = name
        if label:
            self.bar.stage(label)
        return self

    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.times[self.name] = time.perf_counter() - self.t
        return False


def _register(fixed, moving, cfg: RegistrationConfig, progress: bool, device, t_all,
              start: sitk.Image | None = None) -> RegistrationResult:
    """The pipeline as its stages: preprocess -> affine -> resample -> network -> deformable -> full resolution
    -> quality -> report (see :func:`register`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)
    times: dict[str, float] = {}
    report: dict = {"engine_version": __version__, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or "cpu",
                    "torch_threads": torch.get_num_threads()}
    fine_iters, level_iters = _level_iterations(cfg)
    bar = _Progress(progress, len(cfg.affine_spacings) + sum(level_iters) + 2)
    stage = _Timer(times, bar)
    try:
        with stage("preprocess", "preprocess"):      # coarse axis-aligned copies, body masks and boxes
            fp, mp = prepare_pair(fixed, moving, cfg)
        with stage("affine", "affine"):
            aff = affine_stage(fp, mp, cfg, device, progress=bar)
        report["affine"] = _check_affine(aff, fp, mp, cfg)
        with stage("resample", "resample"):          # working grid; moving resampled through the affine
            work = resample_stage(fixed, moving, fp, mp, aff, cfg, device)
        with stage("network", "network"):            # skipped without weights or with a given start
            net_out = (NetworkStart(start_on_grid(start, aff, work.grid, device), "replaced by a given start field",
                                    None) if start is not None else network_stage(work, cfg, device))
        report["network"], report["network_sha256"] = net_out.status, net_out.sha256
        report["weights"] = weights_provenance(net_out.status, net_out.sha256)
        bar.update(1)
        with stage("instance_optimisation", "optimise"):
            u, info = deformable_stage(work, cfg, net_out.start, fine_iters, level_iters, device, progress=bar)
        with torch.no_grad():
            ncc_final = masked_ncc(work.f, warp_same_grid(work.m, u, work.grid), work.body * work.valid)
            # the network's number of fields; one (K = 1, the ablation's plain UNet) has no decomposition to report
            n_fields = None if net_out.weights is None else int(net_out.weights.shape[1])
            decomposed = n_fields == len(REGIONS)
            regions = region_maps(net_out.weights, anatomy_mask(work, cfg.hu_window)) if decomposed else None
        grid, s0, ncc_id, ncc_aff = work.grid, work.spacing, work.ncc_identity, work.ncc_affine
        region_img = net_out.weights_image() if decomposed else None
        del work, net_out
        release_free_memory()  # the optimiser's cached temporaries must not sit under the full-size outputs
        with stage("full_resolution", "full resolution"):  # total field on FIXED's exact grid + warped moving
            disp_img, warped = full_field_and_warp(fixed, aff, grid, u, moving, -1024.0, device)
        bar.update(1)
        with stage("quality"):                       # regularity of the field (working grid), per region
            quality = field_quality(u, aff, grid, regions)
    finally:
        bar.close()

    times["total"] = time.perf_counter() - t_all
    report.update({
        "times_s": {k: round(v, 3) for k, v in times.items()},
        "memory": peak_memory_bytes(device),
        "similarity": {"measure": "NCC inside the fixed body (working grid, HU window normalised)",
                       "identity": ncc_id, "affine": ncc_aff, "final": ncc_final},
        "folding_percent": quality["folding_percent"], "sdlogj": quality["sdlogj"],
        "regions": quality.get("regions"),
        "regions_note": ("per region (argmax of the network's weights, working grid, inside the fixed body or "
                         "above -950 HU in the fixed scan, so that lungs cut by the field of view count): "
                         "share_of_body from the soft weights; displacement magnitudes in mm of the total field "
                         "and of its non-affine part; folding_percent = % of voxels with J <= 0")
        if quality.get("regions") else ("no network: no region decomposition" if n_fields is None
                                          else f"the network has {n_fields} field(s), no region decomposition"),
        "field_quality_grid": f"working grid {s0} mm (registration_core.metrics)",
        "working_spacing_mm": s0, "working_grid_size": list(grid.size),
        "iterations": {"affine": aff.iterations, "levels": info["levels"]},
        "deformable": {k: v for k, v in info.items() if k != "levels"},
        "fixed": {"size": list(fixed.GetSize()), "spacing": list(fixed.GetSpacing())},
        "moving": {"size": list(moving.GetSize()), "spacing": list(moving.GetSpacing())},
        "config": cfg.to_dict(),
    })
    return RegistrationResult(displacement=disp_img, affine=aff.to_sitk(), warped=warped, report=report,
                              region_weights=region_img)
