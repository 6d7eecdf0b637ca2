"""The network's named building blocks (voxelmorph's ``SpatialTransformer`` / ``VecInt`` are the model).

:class:`~registration_core.network.TotalRegNet` is composed of these:

- :func:`conv_block` -- 3^3 convolution, instance norm, leaky ReLU (the UNet's encoder/decoder unit);
- :func:`cost_volume` -- local correlation of the two images over integer voxel offsets (a parameter-free input);
- :class:`SpatialTransformer` -- warps a tensor by a displacement in voxels (bilinear, border-replicated);
- :class:`VecInt` -- integrates a stationary velocity field by scaling and squaring (diffeomorphic displacement);
- :class:`RegionFieldComposer` -- the region decomposition: K region weights (softmax of K logits) and K velocity
  sub-fields -> one velocity ``v = sum_k w_k v_k`` -> one displacement ``exp(v)`` through :class:`VecInt`.

Tensor conventions (all blocks): images [B, C, D, H, W] with D, H, W the z, y, x axes of the grid; displacement
and velocity fields [B, 3, D, H, W] in VOXELS of that grid, channels ordered (x, y, z) = along W, H, D (= L, P, S
on the engine's LPS grids); voxel v corresponds to v + disp(v). Region channel k is region id k + 1 of
:mod:`registration_core.regions`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3^3 convolution (padding 1, ``stride``), affine instance norm and LeakyReLU(0.2): [B, cin, ...] ->
    [B, cout, ...] (spatial size divided by ``stride``). A ``Sequential`` so checkpoints keep their keys
    (``<name>.0.weight`` convolution, ``<name>.1.weight`` norm)."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
                         nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.2, inplace=True))


def cost_volume(f: torch.Tensor, m: torch.Tensor, radius: int) -> torch.Tensor:
    """Local correlation of ``f`` with ``m`` shifted by every integer voxel offset in [-radius, radius]^3.

    f, m: [B, 1, D, H, W] on the same grid. Each image is first normalised locally (3^3-voxel mean and standard
    deviation), then for each offset (dz, dy, dx) -- z slowest, x fastest -- the 3^3 box mean of
    f_n(v) * m_n(v + offset) is one output channel: [B, (2 radius + 1)^3, D, H, W], about +1 where the offset
    matches the local structure. ``m`` is edge-replicated outside its grid. No parameters, no gradient needed.
    """
    def box(x):
        return F.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)

    def norm(x):
        mu = box(x)
        sd = (box(x * x) - mu * mu).clamp_min(0).sqrt()
        return (x - mu) / (sd + 0.02)

    fn, mn = norm(f), norm(m)
    r = int(radius)
    d, h, w = f.shape[-3:]
    mp = F.pad(mn, [r] * 6, mode="replicate")
    out = [box(fn * mp[..., r + dz:r + dz + d, r + dy:r + dy + h, r + dx:r + dx + w])
           for dz in range(-r, r + 1) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    return torch.cat(out, 1)


class SpatialTransformer(nn.Module):
    """Warp ``src`` [B, C, D, H, W] by ``disp`` [B, 3, D, H, W] (voxels, channels x/y/z): output voxel v takes
    ``src`` at v + disp(v), trilinear, values beyond the grid edge-replicated (``padding_mode="border"``).
    No parameters; the identity grid is built per call for the input's size, device and dtype."""

    def forward(self, src: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Warped ``src`` (same shape as ``src``), sampled at voxel v + disp(v)."""
        b = disp.shape[0]
        size = disp.shape[-3:]
        theta = torch.eye(3, 4, device=disp.device, dtype=disp.dtype)[None].expand(b, 3, 4)
        ident = F.affine_grid(theta, (b, 1, *size), align_corners=True)
        # voxels -> grid_sample's normalised [-1, 1] coordinates, per axis x, y, z
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in (size[2], size[1], size[0])], device=disp.device,
                             dtype=disp.dtype)
        return F.grid_sample(src, ident + disp.permute(0, 2, 3, 4, 1) * scale, mode="bilinear",
                             padding_mode="border", align_corners=True)


class VecInt(nn.Module):
    """Scaling and squaring: the displacement (voxels, channels x/y/z) of exp(v) for a stationary velocity
    ``v`` [B, 3, D, H, W] (voxels): ``d = v / 2^steps``, then ``steps`` times ``d <- d + d o (id + d)``.
    ``steps <= 0`` returns ``v`` itself (a plain displacement)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self.transformer = SpatialTransformer()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Displacement [B, 3, D, H, W] (voxels) of exp(v)."""
        if self.steps <= 0:
            return v
        d = v / (2 ** self.steps)
        for _ in range(self.steps):
            d = d + self.transformer(d, d)
        return d


def integrate_velocity(v: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring: displacement (voxels, channels x/y/z) of exp(v) for a velocity v [B, 3, D, H, W]
    (:class:`VecInt` as a function)."""
    return VecInt(steps)(v)


class RegionFieldComposer(nn.Module):
    """The region decomposition: K soft region weights and K velocity sub-fields -> one displacement.

    ``forward(subfields, logits)``: subfields [B, K, 3, D, H, W] (velocities in voxels, channels x/y/z), logits
    [B, K, D, H, W]. Weights ``w = softmax_k(logits)`` (sum to 1 per voxel); velocity ``v = sum_k w_k v_k``
    (log-domain fusion, as log-Euclidean polyaffine fusion); displacement ``exp(v)`` by :class:`VecInt` with
    ``int_steps``. Returns (disp [B, 3, D, H, W] voxels, weights [B, K, D, H, W]). No parameters."""

    def __init__(self, int_steps: int):
        super().__init__()
        self.integrate = VecInt(int_steps)

    def forward(self, subfields: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(displacement in voxels [B, 3, D, H, W], region weights [B, K, D, H, W])."""
        weights = torch.softmax(logits, 1)
        v = (subfields * weights[:, :, None]).sum(1)
        return self.integrate(v), weights
