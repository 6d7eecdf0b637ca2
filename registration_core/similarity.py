"""Local normalised cross-correlation (LNCC) with separable box filters, device agnostic torch.

All tensors are [N, C, D, H, W]. ``radius`` is in voxels (window 2r+1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted_sum(x: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    """'valid' sum of ``k`` consecutive entries along ``dim``: out[i] = x[i] + ... + x[i + k - 1]."""
    n = x.shape[dim] - k + 1
    acc = x.narrow(dim, 0, n).clone()
    for i in range(1, k):
        acc.add_(x.narrow(dim, i, n))
    return acc


class _WindowSum(torch.autograd.Function):
    """:func:`_shifted_sum` with its adjoint as the backward (the same sum over the zero-padded gradient): one
    output-sized buffer per pass instead of autograd's full-size zero tensor per shifted view."""

    @staticmethod
    def forward(ctx, x, dim: int, k: int):
        ctx.dim, ctx.k = dim, k
        return _shifted_sum(x, dim, k)

    @staticmethod
    def backward(ctx, g):
        dim, k = ctx.dim, ctx.k
        shape = list(g.shape)
        shape[dim] += 2 * (k - 1)
        gp = g.new_zeros(shape)
        gp.narrow(dim, k - 1, g.shape[dim]).copy_(g)
        return _shifted_sum(gp, dim, k), None, None


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^3 window, edges replicated (same shape out): separable, each axis a sum of 2r+1
    shifted views (~4x faster than grouped conv3d on CPU, forward and backward; any device)."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    x = F.pad(x, [radius] * 6, mode="replicate")
    for dim in (2, 3, 4):
        x = _WindowSum.apply(x, dim, k)
    return x * (1.0 / k ** 3)


class LNCC:
    """Local normalised cross-correlation against a fixed image whose window statistics are computed once.

    ``LNCC(f, weight, radius)(m)`` returns sum(weight * cc) / denom (higher is better), with cc the squared local
    correlation coefficient signed by the covariance (VoxelMorph-style cc^2), window (2r+1)^3 voxels. Only three
    box filters (m, m^2, f*m) run per call.
    """

    def __init__(self, f: torch.Tensor, weight: torch.Tensor, radius: int, denom=None, eps: float = 1e-4):
        self.f, self.weight, self.radius, self.eps = f, weight, int(radius), eps
        with torch.no_grad():
            s = box_mean(torch.cat([f, f * f], 1), self.radius)
            self.mf = s[:, 0:1]
            self.vf = (s[:, 1:2] - self.mf * self.mf).clamp_min(0)
        self.denom = (weight.sum() if denom is None else denom).clamp_min(1e-6)

    def map(self, m: torch.Tensor) -> torch.Tensor:
        """Per-voxel signed cc^2 in [-1, 1]."""
        s = box_mean(torch.cat([m, m * m, self.f * m], 1), self.radius)
        mm = s[:, 0:1]
        vm = (s[:, 1:2] - mm * mm).clamp_min(0)
        cov = s[:, 2:3] - self.mf * mm
        return cov * cov.abs() / (self.vf * vm + self.eps)

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        return (self.map(m) * self.weight).sum() / self.denom


def lncc_map(f, m, radius: int, eps: float = 1e-4) -> torch.Tensor:
    """Signed squared local correlation coefficient per voxel (see :class:`LNCC`)."""
    return LNCC(f, torch.ones_like(f), radius, eps=eps).map(m)


def masked_lncc(f, m, weight, radius: int, denom=None) -> torch.Tensor:
    """Weighted mean LNCC: sum(w * cc) / denom (default sum(w)); higher is better."""
    return LNCC(f, weight, radius, denom)(m)


def masked_ncc(f, m, weight) -> float:
    """Global normalised cross-correlation inside ``weight`` (>0); a float in [-1, 1]."""
    w = weight / weight.sum().clamp_min(1e-6)
    mf, mm = (f * w).sum(), (m * w).sum()
    cov = ((f - mf) * (m - mm) * w).sum()
    vf, vm = (((f - mf) ** 2) * w).sum(), (((m - mm) ** 2) * w).sum()
    return float(cov / (vf * vm).sqrt().clamp_min(1e-8))
