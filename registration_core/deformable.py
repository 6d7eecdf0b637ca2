"""The deformable stage: MIND-SSC features, a discrete coupled-convex search, then regularised Adam refinement.

Input: the fixed image ``f`` and the affinely pre-aligned moving image ``m`` on the working grid G (axis-aligned
LPS, spacing s mm, [1, 1, D, H, W], normalised HU), a loss weight (fixed body x where the moving scan has data),
and a start field (the network's prediction, or None). Output: a dense field ``u`` on G (mm, channels x/y/z = L/P/S)
applied *before* the affine: fixed point x -> moving point A(x + u(x)).

1. **Features.** MIND-SSC descriptors of both images on G (:mod:`.features`): structure, not intensity, so a
   contrast phase or noise change between the scans does not pull the field.
2. **Discrete search** (:mod:`.convex`): features averaged onto a coarse grid (``search_spacing`` mm), a cost
   volume over integer offsets within +-``search_half`` coarse voxels around the start field, and coupled convex
   regularisation; the result (smooth, large-range) becomes the start of step 3 if it lowers the cost (by at
   least ``search_min_gain`` of it when there is a start field: the network already holds the large motion).
3. **Adam refinement**, coarse to fine (``spacings``): at each level a dense field on a control grid
   (``control_factor`` x the level spacing), smoothed by 3^3 box means and upsampled; loss = masked mean squared
   MIND difference (+ ``lncc_weight`` x the LNCC of the intensities) + ``smoothness`` x diffusion + ``bending`` x
   bending energy (which, unlike diffusion, lets the field keep its slope where the data term ends) +
   ``folding_weight`` x a penalty that keeps det J above ``folding_floor`` (so the field does not fold where the
   data term would pull it into folds, e.g. at sliding organ boundaries - ConvexAdam's weakness).
   On CPU the level spacings are floored so that a level holds at most ``max_refine_voxels`` voxels of the
   working grid's box: on a whole body the finest level is then ~3.6 mm, not the 2.6 mm feature grid (the warped
   12-channel features dominate the cost; the features themselves stay on the finer grid, pooled per level).
Every operation is torch on the images' device: the same code on CPU and CUDA.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .convex import cost_volume, coupled_convex
from .features import mind_ssc
from .geometry import WorkGrid
from .instance_opt import (bending_energy, diffusion, folding_penalty, identity_grid, resize, smooth_field,
                           warp_same_grid)
from .similarity import LNCC
from .torchutil import mm_to_norm_scale


def _pool_to(x: torch.Tensor, size_zyx) -> torch.Tensor:
    """Area-average (adaptive) ``x`` to ``size_zyx``; trilinear when the target is finer."""
    if tuple(x.shape[-3:]) == tuple(size_zyx):
        return x
    if all(n <= o for n, o in zip(size_zyx, x.shape[-3:])):
        return F.adaptive_avg_pool3d(x, tuple(size_zyx))
    return F.interpolate(x, size=tuple(size_zyx), mode="trilinear", align_corners=True)


class _WeightedPoints:
    """The MIND data term evaluated only where the loss weight is non-zero.

    The weight (fixed body x the moving scan's eroded field of view) is zero over a large part of the working box
    (air around the body, the part of the current scan the prior does not cover); warping the 12-channel moving
    features there, forward and backward, was most of the deformable stage's time. Same value as the dense
    ``sum(mean_c (ff - fm(x + u))^2 * w)`` up to float summation order. Positions: grid_sample units of the level
    grid (x, y, z), u in mm.
    """

    def __init__(self, ff: torch.Tensor, w: torch.Tensor, ident: torch.Tensor):
        flat_w = w.reshape(-1)
        self.index = torch.nonzero(flat_w > 0).squeeze(1)
        self.dense = self.index.numel() > 0.9 * flat_w.numel()
        if self.dense:
            self.ff, self.w, self.ident = ff, w, ident
            return
        c = ff.shape[1]
        self.ff = ff.reshape(c, -1).index_select(1, self.index)          # [C, N]
        self.w = flat_w.index_select(0, self.index)                        # [N]
        self.ident = ident.reshape(-1, 3).index_select(0, self.index)      # [N, 3]

    def cost(self, fm: torch.Tensor, u: torch.Tensor, grid: WorkGrid) -> torch.Tensor:
        """sum over the weighted voxels of w x mean over channels of (ff - fm(x + u(x)))^2 (u: [1, 3, D, H, W] mm)."""
        if self.dense:
            return ((self.ff - warp_same_grid(fm, u, grid, self.ident)).pow(2).mean(1, keepdim=True) * self.w).sum()
        scale = mm_to_norm_scale(grid, fm.device, fm.dtype)
        u_pts = u.reshape(3, -1).index_select(1, self.index).t()          # [N, 3] mm
        pos = (self.ident + u_pts * scale).view(1, 1, 1, -1, 3)
        wm = F.grid_sample(fm, pos, mode="bilinear", padding_mode="border", align_corners=True)
        wm = wm.view(fm.shape[1], -1)                                      # [C, N]
        return ((self.ff - wm).pow(2).mean(0) * self.w).sum()


def discrete_search(ff: torch.Tensor, fm: torch.Tensor, u0: torch.Tensor, grid: WorkGrid, spacing: float,
                    half: int, max_voxels: int = 150_000) -> torch.Tensor:
    """Coupled-convex search around ``u0`` (mm, on ``grid``): returns u0 + the search's offset field (mm, on
    ``grid``). ff, fm: features on ``grid``; the search runs on a coarse grid of about ``spacing`` mm (coarser
    when the grid would exceed ``max_voxels``, which bounds the cost volume's memory to (2h+1)^3 x that) with
    offsets of whole coarse voxels up to ``half`` each way."""
    vol = float(np.prod(grid.extent + grid.spacing))
    g = grid.resized(max(spacing, (vol / max_voxels) ** (1 / 3)))
    size = g.shape_zyx
    fm_w = warp_same_grid(fm, u0, grid) if u0.abs().amax() > 0 else fm
    cf, cm = _pool_to(ff, size), _pool_to(fm_w, size)
    cost = cost_volume(cf, cm, half)
    d = coupled_convex(cost, half)                        # coarse voxels (x, y, z)
    del cost
    step = torch.tensor(g.extent / np.maximum(np.asarray(g.size) - 1, 1), dtype=d.dtype,
                        device=d.device).view(1, 3, 1, 1, 1)  # mm per coarse voxel along x, y, z
    return u0 + resize(d * step, ff.shape[-3:])


def refine(ff, fm, weight, grid: WorkGrid, spacings, iterations, u0, *, smoothness: float, folding_weight: float,
           folding_floor: float, control_factor: float, passes: int, lr_mm: float, adam_eps: float | None,
           f_int=None, m_int=None, lncc_weight: float = 0.0, lncc_radius: int = 3, valid=None,
           bending: float = 0.0, progress=None) -> tuple[torch.Tensor, dict]:
    """Adam refinement of ``u0`` (mm, on ``grid``) against the MIND features ``ff``/``fm`` (see module docstring).

    weight: loss weight on ``grid``; valid: where the moving scan has data (eroded by the feature footprint at each
    level so that the edge of its field of view does not drive the field). Returns (u on ``grid``, info).
    """
    device = ff.device
    u_fine = u0
    info = {"levels": []}
    n = len(spacings)
    cfs = control_factor if isinstance(control_factor, (tuple, list)) else (control_factor,) * n
    pss = passes if isinstance(passes, (tuple, list)) else (passes,) * n
    for sp, iters, cf, passes in zip(spacings, iterations, cfs, pss):
        g = grid.resized(sp)
        size = g.shape_zyx
        ctrl = grid.resized(sp * cf).shape_zyx
        ff_l, fm_l, w_l = _pool_to(ff, size), _pool_to(fm, size), resize(weight, size)
        if valid is not None:
            r = 2
            v_l = (resize(valid, size) > 0.999).to(w_l.dtype)
            w_l = w_l * -F.max_pool3d(-v_l, 2 * r + 1, stride=1, padding=r)
        denom = w_l.sum().clamp_min(1e-6)
        lncc = m_l = None
        if lncc_weight:
            lncc = LNCC(resize(f_int, size), w_l, lncc_radius)
            m_l = resize(m_int, size)
        ident = identity_grid(size, device)
        term = _WeightedPoints(ff_l, w_l, ident)
        u_p = torch.nn.Parameter(resize(u_fine, ctrl).clone())
        ctrl_spacing = float(g.extent[0] / max(1, ctrl[2] - 1))
        scale = float(u_p[0, 0].numel()) if adam_eps else 1.0
        opt = torch.optim.Adam([u_p], lr=lr_mm * sp / 2, eps=adam_eps or 1e-8)
        base_lr = opt.param_groups[0]["lr"]
        def objective(u_param):
            """(total energy, data term) of a control-grid field at this level."""
            u_c = smooth_field(u_param, passes)
            u = F.interpolate(u_c, size=size, mode="trilinear", align_corners=True)
            cost = term.cost(fm_l, u, g) / denom
            loss = cost * 10.0
            if lncc is not None:
                loss = loss - lncc_weight * lncc(warp_same_grid(m_l, u, g, ident))
            loss = loss + smoothness * diffusion(u_c, ctrl_spacing)
            if bending:
                loss = loss + bending * bending_energy(u_c, ctrl_spacing)
            if folding_weight:
                loss = loss + folding_weight * folding_penalty(u_c, ctrl_spacing, folding_floor)
            return loss, cost

        for it in range(iters):
            opt.param_groups[0]["lr"] = base_lr * (1 - 0.7 * it / max(1, iters))
            opt.zero_grad(set_to_none=True)
            loss, _ = objective(u_p)
            (loss * scale).backward()
            opt.step()
            if progress is not None:
                progress.update(1)
        with torch.no_grad():
            energy, data = objective(u_p)
            u_fine = resize(smooth_field(u_p.detach(), passes), ff.shape[-3:])
        info["levels"].append({"spacing_mm": g.spacing, "control_spacing_mm": ctrl_spacing, "iterations": iters,
                               "mind_ssd": float(data), "energy": float(energy)})
    return u_fine.detach(), info


def mind_cost(ff, fm, u, grid: WorkGrid, weight) -> float:
    """Weighted mean squared MIND difference after warping the moving features by ``u`` (mm, on ``grid``)."""
    with torch.no_grad():
        wm = warp_same_grid(fm, u, grid)
        return float(((ff - wm).pow(2).mean(1, keepdim=True) * weight).sum() / weight.sum().clamp_min(1e-6))


def optimise_deformable(f, m, weight, grid: WorkGrid, cfg, init_u=None, valid=None,
                        progress=None) -> tuple[torch.Tensor, dict]:
    """The whole deformable stage (module docstring) with ``cfg``'s settings (:class:`RegistrationConfig`).

    f, m: normalised images on ``grid`` [1, 1, D, H, W]; weight: loss weight; init_u: start field (mm) or None.
    Returns (u in mm on ``grid``, info with per-step costs).
    """
    device = f.device
    u0 = init_u if init_u is not None else torch.zeros(1, 3, *f.shape[-3:], device=device)
    with torch.no_grad():
        ff = mind_ssc(f, cfg.mind_radius, cfg.mind_dilation, cfg.mind_var_floor)
        fm = mind_ssc(m, cfg.mind_radius, cfg.mind_dilation, cfg.mind_var_floor)
    info: dict = {"start_cost": mind_cost(ff, fm, u0, grid, weight)}
    if cfg.search_half > 0:
        with torch.no_grad():
            u_s = discrete_search(ff, fm, u0, grid, cfg.search_spacing, cfg.search_half, cfg.max_search_voxels)
            c_s = mind_cost(ff, fm, u_s, grid, weight)
        info["search_cost"] = c_s
        # around a start field the search must clearly beat it (cfg.search_min_gain); from the affine, any gain
        need = 1.0 - (cfg.search_min_gain if init_u is not None else 0.0)
        used = c_s < info["start_cost"] * need
        if used:
            u0 = u_s
        info["search_used"] = used
    fine = 60 if cfg.iterations is None else int(cfg.iterations)
    best = None
    # on large bodies the finest level is coarser than the feature grid: it holds at most ``max_refine_voxels``
    floor = grid.spacing
    cap = getattr(cfg, "max_refine_voxels", None)
    if cap and device.type == "cpu":
        floor = max(floor, grid.spacing * (float(np.prod(grid.size)) / cap) ** (1 / 3))
    info["refine_floor_mm"] = round(floor, 3)
    for sched in cfg.schedules_mm:
        spacings = tuple(max(floor, float(v)) for v in sched)
        n = len(spacings)
        iters = tuple([int(round(fine * cfg.coarse_iteration_factor))] * (n - 1) + [fine])
        # coarse levels: a control grid at twice the level spacing, lightly smoothed (large smooth motion); the last
        # level, the same in every schedule: ``control_factor`` and ``field_smoothing_passes``
        u, ref = refine(ff, fm, weight, grid, spacings, iters, u0, smoothness=cfg.smoothness,
                        folding_weight=cfg.folding_weight, folding_floor=cfg.folding_floor,
                        control_factor=(2.0,) * (n - 1) + (cfg.control_factor,),
                        passes=(1,) * (n - 1) + (cfg.field_smoothing_passes,), lr_mm=cfg.learning_rate_mm,
                        adam_eps=cfg.adam_eps, f_int=f, m_int=m, lncc_weight=cfg.lncc_weight,
                        lncc_radius=cfg.lncc_radius_vox or 3, valid=valid, bending=cfg.bending,
                        progress=progress)
        energy = ref["levels"][-1]["energy"]
        info.setdefault("schedules", []).append({"levels_mm": list(spacings), "energy": energy})
        if best is None or energy < best[0]:
            best = (energy, u, ref)
    _, u, ref = best
    info.update(ref)
    info["final_cost"] = mind_cost(ff, fm, u, grid, weight)
    return u, info
