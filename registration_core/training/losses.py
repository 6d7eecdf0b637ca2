"""Training losses of TotalRegNet (torch). All fields are in VOXELS of the input grid, channels (x, y, z).

``total = w_sim (1 - LNCC) + w_field EPE + w_sub EPE_regions + w_smooth diffusion + w_dice (1 - Dice_regions)
+ w_region CE(weights, region map)`` -- each term only where its target exists (see
:mod:`registration_core.training.loop` for the design).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..blocks import integrate_velocity
from ..regions import N_REGIONS
from ..similarity import masked_lncc


@dataclass
class LossWeights:
    """Weights of the loss terms (dimensionless; EPE terms are in mm so 1 mm of error costs ``field``)."""

    sim: float = 1.0
    field: float = 0.2
    sub: float = 0.05
    smooth: float = 1.0
    dice: float = 0.5
    region: float = 0.1
    lncc_radius: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def identity(shape_zyx, device, dtype=torch.float32) -> torch.Tensor:
    """grid_sample identity grid [1, D, H, W, 3] (x, y, z), align_corners=True."""
    theta = torch.eye(3, 4, device=device, dtype=dtype)[None]
    return F.affine_grid(theta, (1, 1, *shape_zyx), align_corners=True)


def warp_voxels(img: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """img(v + disp(v)) for img [B, C, D, H, W] and disp [B, 3, D, H, W] in voxels (x, y, z); border padding."""
    d, h, w = img.shape[-3:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)], device=img.device,
                         dtype=disp.dtype)
    g = identity((d, h, w), img.device, disp.dtype) + disp.permute(0, 2, 3, 4, 1) * scale
    return F.grid_sample(img, g.to(img.dtype), mode=mode, padding_mode="border", align_corners=True)


def epe_mm(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, spacing: float) -> torch.Tensor:
    """Mean end-point error (mm) of two voxel fields [B, 3, ...] inside ``mask`` [B, 1, ...] (Charbonnier)."""
    e = ((pred - target) * spacing).pow(2).sum(1, keepdim=True).add(1e-3).sqrt()
    return (e * mask).sum() / mask.sum().clamp_min(1.0)


def diffusion_voxels(u: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a voxel field (dimensionless)."""
    return ((u[:, :, 1:] - u[:, :, :-1]).pow(2).mean() + (u[:, :, :, 1:] - u[:, :, :, :-1]).pow(2).mean()
            + (u[..., 1:] - u[..., :-1]).pow(2).mean())


def soft_dice(a: torch.Tensor, b: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice over channels of one-hot-like maps [B, K, ...], over channels where ``present`` [K]."""
    dims = tuple(range(2, a.dim()))
    inter = (a * b).sum(dims)
    den = a.sum(dims) + b.sum(dims)
    d = (2 * inter + 1e-3) / (den + 1e-3)
    return (d[:, present]).mean() if present.any() else a.new_tensor(1.0)


def training_loss(net_out, batch: dict, w: LossWeights, spacing: float, int_steps: int = 7):
    """Loss of one forward pass. ``batch``: f, m, body [B,1,...]; optional u [B,3,...], valid [B,1,...],
    rf, rm [B,1,...] (long region ids 0..K). Returns (total, {term: float})."""
    disp, weights, sub = net_out
    disp, weights, sub = disp.float(), weights.float(), sub.float()
    f, m, body = batch["f"], batch["m"], batch["body"]
    k = weights.shape[1]
    parts = {}
    warped = warp_voxels(m, disp)
    sim = 1.0 - masked_lncc(f, warped, body, w.lncc_radius)
    parts["sim"] = sim
    total = w.sim * sim
    smooth = diffusion_voxels(disp)
    parts["smooth"] = smooth
    total = total + w.smooth * smooth
    if "u" in batch:
        mask = batch["valid"] * body
        fe = epe_mm(disp, batch["u"], mask, spacing)
        parts["epe_mm"] = fe
        total = total + w.field * fe
        if "rf" in batch and w.sub > 0:
            terms = []
            for r in range(k):
                # K = 1 (the plain-UNet ablation): its one field is every region's
                mr = mask * ((batch["rf"] == r + 1) if k > 1 else (batch["rf"] > 0)).float()
                if mr.sum() > 10:
                    # first-order: exp(v) ~ v for smooth fields (integrating each of the K sub-fields
                    # separately costs K extra scaling-and-squaring passes; too slow on CPU)
                    v = sub[:, r]
                    terms.append(epe_mm(v, batch["u"], mr, spacing))
            if terms:
                se = torch.stack(terms).mean()
                parts["sub_epe_mm"] = se
                total = total + w.sub * se
    if "rf" in batch:
        rf = batch["rf"]
        known = (rf > 0).float()
        if known.sum() > 0 and k > 1:                 # one region: nothing to choose between
            target = (rf - 1).clamp_min(0)[:, 0]
            ce = (F.nll_loss(torch.log(weights.clamp_min(1e-6)), target, reduction="none") * known[:, 0]).sum() \
                / known.sum()
            parts["region_ce"] = ce
            total = total + w.region * ce
        if "rm" in batch:
            n_cls = N_REGIONS + 1                       # the label-derived region maps, whatever K is
            oh_m = F.one_hot(batch["rm"][:, 0], n_cls).permute(0, 4, 1, 2, 3).float()[:, 1:]
            oh_f = F.one_hot(rf[:, 0], n_cls).permute(0, 4, 1, 2, 3).float()[:, 1:]
            warped_oh = warp_voxels(oh_m, disp)
            present = (oh_f.sum((0, 2, 3, 4)) > 20) & (oh_m.sum((0, 2, 3, 4)) > 20)
            dsc = soft_dice(warped_oh * body, oh_f * body, present)
            parts["dice"] = dsc
            total = total + w.dice * (1.0 - dsc)
    parts["total"] = total
    return total, {n: float(v.detach()) for n, v in parts.items()}
