"""Instance optimisation of a dense displacement field (torch, any device; nothing CPU-only in the loop).

The field ``u`` (mm, channels x/y/z = L/P/S) lives on the fixed working grid G (axis-aligned LPS) and is applied
*before* the affine: fixed point x -> moving point  A(x + u(x)).  The moving image has already been resampled
through A onto G (``m``), so the loss compares f(x) with m(x + u(x)).

Coarse to fine over ``spacings`` (e.g. 4 mm then 2 mm): at each level ``u`` is a dense parameter on that level's
control grid at ``control_factor`` x the level spacing, smoothed by 3^3 box filters and upsampled trilinearly to
the level grid (cheap implicit regularisation, like ConvexAdam / B-spline grids), and penalised with a diffusion
term (mean squared spatial gradient, dimensionless); Adam with a step size in mm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import WorkGrid
from .similarity import LNCC, box_mean
from .torchutil import mm_to_norm_scale


def resize(x: torch.Tensor, size_zyx) -> torch.Tensor:
    """Trilinear resize with align_corners=True (keeps the grid's first/last voxel centres)."""
    if tuple(x.shape[-3:]) == tuple(size_zyx):
        return x
    if any(n < o for n, o in zip(size_zyx, x.shape[-3:])):
        x = box_mean(x, 1)  # mild anti-aliasing before going coarser
    return F.interpolate(x, size=tuple(size_zyx), mode="trilinear", align_corners=True)


def identity_grid(size_zyx, device, dtype=torch.float32) -> torch.Tensor:
    """grid_sample identity grid [1, D, H, W, 3] (x, y, z), align_corners=True."""
    theta = torch.eye(3, 4, device=device, dtype=dtype)[None]
    return F.affine_grid(theta, (1, 1, *size_zyx), align_corners=True)


def smooth_field(u: torch.Tensor, passes: int) -> torch.Tensor:
    """Apply ``passes`` 3x3x3 box means to a [1, 3, D, H, W] field."""
    for _ in range(passes):
        u = box_mean(u, 1)
    return u


def diffusion(u: torch.Tensor, spacing: float) -> torch.Tensor:
    """Mean squared forward difference of u (mm/mm, dimensionless) over all components and axes."""
    dz = (u[:, :, 1:] - u[:, :, :-1]) / spacing
    dy = (u[:, :, :, 1:] - u[:, :, :, :-1]) / spacing
    dx = (u[..., 1:] - u[..., :-1]) / spacing
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean())


def bending_energy(u: torch.Tensor, spacing: float) -> torch.Tensor:
    """Thin-plate bending energy of u (mm) per voxel, in 1/mm^2: the mean over components of u_xx^2 + u_yy^2 +
    u_zz^2 + 2 (u_xy^2 + u_xz^2 + u_yz^2), by second differences on a [1, 3, D, H, W] field of ``spacing`` mm.

    Unlike :func:`diffusion` it does not penalise affine fields: a displacement that grows steadily across the scan
    (breathing: the diaphragm moves most, the apex least) costs nothing, so where the data term ends (the first
    and last slices of a scan) the field keeps its slope instead of flattening towards zero gradient."""
    def d(x, dim):
        return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)
    h2 = spacing * spacing
    terms = []
    dims = [k for k in (2, 3, 4) if u.shape[k] >= 3]
    for i, a in enumerate(dims):
        ua = d(u, a)
        terms.append(d(ua, a).pow(2).mean())
        for b in dims[i + 1:]:
            terms.append(2.0 * d(ua, b).pow(2).mean())
    if not terms:
        return u.new_zeros(())
    return sum(terms) / (h2 * h2)


def jacobian_det(u: torch.Tensor, spacing: float) -> torch.Tensor:
    """Determinant of the Jacobian of x -> x + u(x) by central differences on the interior voxels of a
    [1, 3, D, H, W] field (u in mm, channels x/y/z; ``spacing`` mm): [D-2, H-2, W-2], dimensionless."""
    c = u[0] / (2 * spacing)
    dx = c[:, 1:-1, 1:-1, 2:] - c[:, 1:-1, 1:-1, :-2]  # d(u_x, u_y, u_z)/dx
    dy = c[:, 1:-1, 2:, 1:-1] - c[:, 1:-1, :-2, 1:-1]
    dz = c[:, 2:, 1:-1, 1:-1] - c[:, :-2, 1:-1, 1:-1]
    a, b, cc = dx[0] + 1, dy[0], dz[0]
    d, e, f = dx[1], dy[1] + 1, dz[1]
    g, h, i = dx[2], dy[2], dz[2] + 1
    return a * (e * i - f * h) - b * (d * i - f * g) + cc * (d * h - e * g)


def folding_penalty(u: torch.Tensor, spacing: float, floor: float = 0.2) -> torch.Tensor:
    """Mean of relu(floor - det J)^2 over the field: zero while every local volume change stays above ``floor``,
    growing quadratically as the field approaches and passes folding (det J <= 0)."""
    if min(u.shape[-3:]) < 3:
        return u.new_zeros(())
    return F.relu(floor - jacobian_det(u, spacing)).pow(2).mean()


def warp_same_grid(m: torch.Tensor, u: torch.Tensor, grid: WorkGrid, ident=None) -> torch.Tensor:
    """m(x + u(x)) for m, u on the same grid (u in mm, channels x/y/z); linear, zeros outside."""
    if ident is None:
        ident = identity_grid(m.shape[-3:], m.device, m.dtype)
    scale = mm_to_norm_scale(grid, m.device, m.dtype)
    g = ident + u.permute(0, 2, 3, 4, 1) * scale
    return F.grid_sample(m, g, mode="bilinear", padding_mode="border", align_corners=True)


def optimise_field(f, m, weight, grid: WorkGrid, spacings, iterations, radius_mm=5.0, smoothness=1.0,
                   passes=1, lr_mm=0.5, init_u=None, progress=None,
                   control_factor: float = 2.0, radius_vox: int | None = None, adam_eps: float | None = None,
                   folding_weight: float = 0.0, folding_floor: float = 0.2,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Dense field u (mm, [1, 3, D, H, W] on ``grid``) maximising LNCC(f, m(x+u)) - smoothness * diffusion(u)
    - folding_weight * folding_penalty(u) (the last on the control grid: it keeps det J above ``folding_floor``
    where the similarity would pull the field into folds, e.g. at sliding organ boundaries).

    f, m: normalised images on ``grid`` ([1, 1, D, H, W]); weight: loss weight (fixed body, or body x moving FOV).
    valid: where ``m`` holds moving-image data (1) rather than the fill value outside the moving field of view
    (0); at each level it is eroded by the LNCC window radius, so that no window that sees the edge of the moving
    field of view drives the field (that edge is no anatomy: matching it stretched the field by 10-20 mm over
    the last 50 mm of a scan whose ends the other scan does not cover).
    spacings/iterations: levels coarse to fine (mm / Adam steps). init_u: start field on ``grid`` (mm) or None.
    Returns (u, info) with per-level final similarity.
    """
    device = f.device
    u_fine = init_u if init_u is not None else torch.zeros(1, 3, *f.shape[-3:], device=device)
    info = {"levels": []}
    for sp, iters in zip(spacings, iterations):
        g = grid.resized(sp)
        size = g.shape_zyx
        ctrl = grid.resized(sp * control_factor).shape_zyx  # control grid of the field parameter
        f_l, m_l, w_l = resize(f, size), resize(m, size), resize(weight, size)
        r = int(radius_vox) if radius_vox else max(1, int(round(radius_mm / g.spacing)))
        if valid is not None:
            v_l = (resize(valid, size) > 0.999).to(w_l.dtype)
            w_l = w_l * -F.max_pool3d(-v_l, 2 * r + 1, stride=1, padding=r)  # erosion by r voxels
        lncc = LNCC(f_l, w_l, r)
        ident = identity_grid(size, device)
        u_p = torch.nn.Parameter(resize(u_fine, ctrl).clone())
        ctrl_spacing = float(g.extent[0] / max(1, ctrl[2] - 1))
        n_ctrl = float(u_p[0, 0].numel())
        # with adam_eps the loss is scaled to a per-control-point sum, so eps damps steps where the similarity
        # gradient is only noise (flat regions) instead of Adam normalising noise to full-size steps
        scale = n_ctrl if adam_eps else 1.0
        opt = torch.optim.Adam([u_p], lr=lr_mm * sp / 2, eps=adam_eps or 1e-8)
        base_lr = opt.param_groups[0]["lr"]
        sim = 0.0
        for it in range(iters):
            opt.param_groups[0]["lr"] = base_lr * (1 - 0.7 * it / max(1, iters))
            opt.zero_grad(set_to_none=True)
            u_c = smooth_field(u_p, passes)
            u = F.interpolate(u_c, size=size, mode="trilinear", align_corners=True)
            warped = warp_same_grid(m_l, u, g, ident)
            s = lncc(warped)
            loss = -s + smoothness * diffusion(u_c, ctrl_spacing)
            if folding_weight:
                loss = loss + folding_weight * folding_penalty(u_c, ctrl_spacing, folding_floor)
            loss = loss * scale
            loss.backward()
            opt.step()
            sim = float(s.detach())
            if progress is not None:
                progress.update(1)
        with torch.no_grad():
            u_fine = resize(smooth_field(u_p.detach(), passes), f.shape[-3:])
        info["levels"].append({"spacing_mm": g.spacing, "control_spacing_mm": ctrl_spacing, "iterations": iters,
                               "lncc": sim})
    return u_fine.detach(), info
