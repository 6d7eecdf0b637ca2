"""MIND-SSC self-similarity descriptors (Heinrich et al., MICCAI 2013), device-agnostic torch.

A voxel's descriptor describes its neighbourhood's *structure*, not its intensity: for the 12 pairs of
6-neighbours (at ``dilation`` voxels from the centre) that lie sqrt(2) x ``dilation`` apart, the patch distance
SSD_k = box mean over a (2r+1)^3 window of (I(x + a_k) - I(x + b_k))^2, then
``MIND_k = exp(-(SSD_k - min_k SSD_k) / V)`` with ``V`` the mean over k of ``SSD_k - min_k SSD_k`` (clamped to
[0.001, 1000] x its global mean). Two scans of one patient with another contrast phase, another noise level or
another reconstruction kernel have close MIND descriptors where their intensities differ; ConvexAdam's lead over
LNCC-driven methods on CT comes from these. Tensors are [N, C, D, H, W]; features are [N, 12, D, H, W] in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .similarity import box_mean

# the six neighbours of the centre voxel (z, y, x offsets in units of ``dilation``) and the 12 pairs of them that
# lie sqrt(2) apart (neighbours on two different axes)
_SIX = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))
_PAIRS = tuple((a, b) for a in range(6) for b in range(a + 1, 6)
               if sum((p - q) ** 2 for p, q in zip(_SIX[a], _SIX[b])) == 2)
assert len(_PAIRS) == 12


def _shift(xp: torch.Tensor, off, d: int, shape) -> torch.Tensor:
    """View of the replicate-padded ``xp`` (pad ``d``) shifted by ``off`` x ``d`` voxels, cropped to ``shape``."""
    z, y, x = (d + o * d for o in off)
    return xp[:, :, z:z + shape[0], y:y + shape[1], x:x + shape[2]]


def mind_ssc(img: torch.Tensor, radius: int = 1, dilation: int = 2, var_floor: float = 0.001) -> torch.Tensor:
    """MIND-SSC of ``img`` [N, 1, D, H, W] (any intensity scale): [N, 12, D, H, W] float, same device.

    radius: patch radius in voxels (window 2r+1); dilation: distance of the six neighbours in voxels.
    var_floor: the local variance estimate (the mean of the 12 patch distances) is clamped from below at
    ``var_floor`` x its mean over the image. MIND divides by it, so in flat tissue (fat, muscle, liver
    parenchyma) the scan's noise alone would be scaled up to full-scale descriptors that differ between two scans
    and pull the field; with a floor such voxels get near-constant descriptors and the field there follows the
    regulariser. 0.001 was MIND's usual clamp (no floor in practice).
    """
    shape = img.shape[-3:]
    xp = F.pad(img, [dilation] * 6, mode="replicate")
    ssd = torch.cat([(_shift(xp, _SIX[a], dilation, shape) - _shift(xp, _SIX[b], dilation, shape)).pow(2)
                     for a, b in _PAIRS], 1)
    del xp
    ssd = box_mean(ssd, radius)
    ssd = ssd - ssd.min(1, keepdim=True)[0]
    var = ssd.mean(1, keepdim=True)
    mv = float(var.mean())
    var = var.clamp(mv * var_floor + 1e-12, mv * 1000 + 1e-12)
    return torch.exp(-ssd / var)


def mind_ssd(fm: torch.Tensor, mm: torch.Tensor) -> torch.Tensor:
    """Per-voxel mean squared difference of two MIND descriptors [N, 12, ...] -> [N, 1, ...] (0 = same structure)."""
    return (fm - mm).pow(2).mean(1, keepdim=True)
