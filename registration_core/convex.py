"""Discrete displacement search with coupled convex regularisation (after ConvexAdam, Siebert et al. 2021).

On a coarse grid, the cost of every integer displacement in a (2h+1)^3 window is computed at once from feature
descriptors (mean squared MIND difference, box-smoothed): a cost volume. Its per-voxel arg-min captures large
motion (breathing, bowel) that a gradient step from zero would miss, but is noisy; the coupled convex scheme
alternates (a) a per-voxel arg-min of cost + c * |d - d_smooth|^2 and (b) smoothing the chosen field, with the
coupling c rising, so the result is both close to the data term's minima and smooth. Everything is tensor ops on
one device; memory is (2h+1)^3 x the coarse grid's voxels.

Displacements here are in coarse-grid voxels along (x, y, z) = (W, H, D) axes; the caller converts to mm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .similarity import box_mean


def cost_volume(ff: torch.Tensor, fm: torch.Tensor, half: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cost [K, D, H, W] of displacing each fixed voxel by each offset of a (2h+1)^3 window (K = (2h+1)^3).

    ff, fm: features [1, C, D, H, W] on the same coarse grid; cost = mean over C of (ff(x) - fm(x + o))^2,
    smoothed by two 3^3 box means (moving features replicate-padded at the borders). Offsets are ordered with
    x fastest: k = (oz + h) (2h+1)^2 + (oy + h)(2h+1) + (ox + h). ``weight`` is unused here (costs are per voxel).
    """
    D, H, W = ff.shape[-3:]
    n = 2 * half + 1
    mp = F.pad(fm, [half] * 6, mode="replicate")
    out = ff.new_empty(n ** 3, D, H, W)
    k = 0
    for oz in range(n):
        for oy in range(n):
            for ox in range(n):
                out[k] = (ff - mp[:, :, oz:oz + D, oy:oy + H, ox:ox + W]).pow(2).mean(1)[0]
                k += 1
    return box_mean(box_mean(out[None], 1), 1)[0]


def offsets(half: int, device, dtype=torch.float32) -> torch.Tensor:
    """The offsets of :func:`cost_volume`'s order as [3, K] (x, y, z) in coarse voxels."""
    r = torch.arange(-half, half + 1, device=device, dtype=dtype)
    oz, oy, ox = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([ox.reshape(-1), oy.reshape(-1), oz.reshape(-1)])


def coupled_convex(cost: torch.Tensor, half: int, couplings=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                   chunk: int = 16) -> torch.Tensor:
    """Smooth displacement [1, 3, D, H, W] (x, y, z; coarse voxels) from a cost volume [K, D, H, W].

    Starts from the smoothed per-voxel arg-min; each coupling ``c`` (in cost units per squared voxel; costs are
    mean squared MIND differences, ~0.01-0.1) re-selects arg-min over k of cost + c |o_k - d|^2 and smooths the
    selection with a 3^3 box mean. Slices of ``chunk`` z-planes bound the temporary memory.
    """
    K, D, H, W = cost.shape
    o = offsets(half, cost.device, cost.dtype)                        # [3, K]
    d = o[:, cost.argmin(0).reshape(-1)].reshape(1, 3, D, H, W)
    d = box_mean(d, 1)
    sq = o.pow(2).sum(0)                                              # |o_k|^2
    for c in couplings:
        idx = torch.empty(D, H, W, dtype=torch.long, device=cost.device)
        for z0 in range(0, D, chunk):
            z1 = min(D, z0 + chunk)
            dz = d[0, :, z0:z1].reshape(3, -1)                        # [3, V]
            # |o - d|^2 = |o|^2 - 2 o.d + |d|^2 (the last is constant over k)
            pen = sq[:, None] - 2.0 * (o.t() @ dz)                    # [K, V]
            tot = cost[:, z0:z1].reshape(K, -1) + c * pen
            idx[z0:z1] = tot.argmin(0).reshape(z1 - z0, H, W)
        d = box_mean(o[:, idx.reshape(-1)].reshape(1, 3, D, H, W), 1)
    return d
