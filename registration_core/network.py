"""TotalRegistrator network: a small 3D UNet whose deformation is decomposed into anatomical region sub-fields.

Forward signature (keep it stable; ``train.py`` codes against it)::

    disp, weights, subfields = net(fixed, moving)

- ``fixed``, ``moving``: float tensors [B, 1, D, H, W] on the SAME isotropic axis-aligned grid (the moving image
  already affinely resampled onto the fixed grid), intensities normalised to [0, 1] (HU window -1000..1000,
  :func:`registration_core.preprocess.normalise`). Any D, H, W (padded internally to a multiple of 8). The engine
  feeds 4 mm grids.
- ``disp``: [B, 3, D, H, W] displacement in VOXELS of the input grid, channels ordered (x, y, z) = along the
  W, H, D tensor axes (= L, P, S for the engine's LPS grids). Fixed voxel v corresponds to moving voxel v + disp(v)
  (multiply by the voxel spacing for mm).
- ``weights``: [B, K, D, H, W] soft region weights (softmax over K regions, sum to 1 per voxel); channel k is
  region id k + 1 of :mod:`registration_core.regions` (names, colours, which labels belong to each).
- ``subfields``: [B, K, 3, D, H, W] stationary velocity fields (voxels, channel order as disp), one per region.

Design and why:
- Regions (default K=4: lungs/thorax, abdominal organs, bones, remaining soft tissue) move differently: lungs
  slide along the chest wall, bones move rigidly, bowel moves freely. One smooth field must blur across these
  interfaces; K sub-fields each stay smooth inside their own region and the network decides per voxel which
  region's motion applies. Region logits go through a softmax, so no segmentation is needed at inference (the
  weights can be supervised with TotalSegmentator masks during training).
- Combination is in the log domain: v = sum_k w_k v_k, integrated by scaling and squaring (``int_steps``).
  The exponential of a smooth velocity is diffeomorphic (no folding) even where weights switch sharply,
  which summing displacements would not guarantee; it is also what log-Euclidean polyaffine fusion does.
- Correlation inputs (``cost_radius``, the shipped model uses (1, 2)): besides the two images the UNet receives
  local correlation volumes (:func:`cost_volume`) -- at the input resolution for every voxel offset within +-1
  voxel (27 channels, +-4 mm at 4 mm), and at half resolution within +-2 voxels (125 channels, +-16 mm) next to
  the first encoder level. They tell the network directly which displacement makes the images match locally, so
  it learns to pick and regularise matches instead of having to discover motion estimation from raw intensities.
  A plain UNet (``cost_radius=(0, 0)``) learned too slowly on the 2-core CPU (validation TRE 5.13 mm vs 5.25 mm
  for the affine after 750 steps); see MODEL_CARD.md.
- Small and fast: channels (16, 32, 64, 64), first convolution strided, so the heavy layers run at 8-32 mm when
  the engine feeds 4 mm inputs; ~0.7 M parameters (2.8 MB float32). The heads are zero-initialised: an untrained
  network outputs exactly zero displacement and uniform weights, so an untrained or missing checkpoint never
  harms the result (instance optimisation then registers alone).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import RegionFieldComposer, conv_block, cost_volume
from .errors import RegistrationInputError
from .regions import N_REGIONS

#: default checkpoint location (absent until a trained model is shipped)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "totalreg_v1.safetensors"


class TotalRegNet(nn.Module):
    """3D UNet with K region sub-fields; see the module docstring for inputs, outputs and design.

    Composed of the named blocks of :mod:`registration_core.blocks`: ``enc`` / ``dec`` / ``top``
    (:func:`~registration_core.blocks.conv_block`), :func:`~registration_core.blocks.cost_volume` inputs, the
    ``velocity`` (3 K channels) and ``logits`` (K channels) heads, and ``compose``
    (:class:`~registration_core.blocks.RegionFieldComposer`: softmax weights, weighted velocity, ``VecInt``)."""

    def __init__(self, n_regions: int = N_REGIONS, channels=(16, 32, 64, 64), int_steps: int = 7,
                 cost_radius: tuple | list = (0, 0)):
        super().__init__()
        self.config = {"n_regions": int(n_regions), "channels": [int(c) for c in channels],
                       "int_steps": int(int_steps)}
        r_full, r_half = (int(v) for v in cost_radius)
        if r_full or r_half:
            self.config["cost_radius"] = [r_full, r_half]
        self.cost_radius = (r_full, r_half)
        n_full = (2 * r_full + 1) ** 3 if r_full else 0
        n_half = (2 * r_half + 1) ** 3 if r_half else 0
        c = list(channels)
        # skip channels: input level (images + full-resolution cost volume), first encoder level (+ its cost
        # volume at half resolution), then the plain encoder levels
        skip_ch = [2 + n_full, c[0] + n_half] + c[1:-1]
        self.enc = nn.ModuleList([conv_block(skip_ch[0], c[0], 2), conv_block(skip_ch[1], c[1], 2)]
                                 + [conv_block(c[i - 1], c[i], 2) for i in range(2, len(c))])
        self.dec = nn.ModuleList([conv_block(c[i] + skip_ch[i], c[i - 1]) for i in range(len(c) - 1, 0, -1)])
        self.top = conv_block(c[0] + skip_ch[0], c[0])
        self.velocity = nn.Conv3d(c[0], 3 * n_regions, 3, padding=1)
        self.logits = nn.Conv3d(c[0], n_regions, 3, padding=1)
        for head in (self.velocity, self.logits):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.compose = RegionFieldComposer(int_steps)  # no parameters: checkpoint keys unchanged
        self.n_regions, self.int_steps = n_regions, int_steps
        self.multiple = 2 ** len(c)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        """(fixed, moving) [B,1,D,H,W] -> (disp [B,3,D,H,W] voxels, weights [B,K,D,H,W], subfields [B,K,3,D,H,W])."""
        b, _, d, h, w = fixed.shape
        m = self.multiple
        # pad to a multiple of 2^levels and to at least 2 of them, so the deepest level keeps more than one voxel
        # per axis (instance norm needs > 1 element; scans under 2^(levels+1) voxels along an axis are small)
        pad = [0, max((-w) % m, 2 * m - w), 0, max((-h) % m, 2 * m - h), 0, max((-d) % m, 2 * m - d)]
        fixed, moving = F.pad(fixed, pad), F.pad(moving, pad)
        r_full, r_half = self.cost_radius
        x = torch.cat([fixed, moving], 1)
        if r_full:
            with torch.no_grad():
                x = torch.cat([x, cost_volume(fixed.float(), moving.float(), r_full).to(x.dtype)], 1)
        skips = [x]
        for i, enc in enumerate(self.enc):
            x = enc(x)
            if i == 0 and r_half:
                with torch.no_grad():
                    cv = cost_volume(F.avg_pool3d(fixed.float(), 2), F.avg_pool3d(moving.float(), 2), r_half)
                x = torch.cat([x, cv.to(x.dtype)], 1)
            skips.append(x)
        skips.pop()
        for dec in self.dec:
            s = skips.pop()
            x = dec(torch.cat([F.interpolate(x, size=s.shape[-3:], mode="trilinear", align_corners=False), s], 1))
        s = skips.pop()
        x = self.top(torch.cat([F.interpolate(x, size=s.shape[-3:], mode="trilinear", align_corners=False), s], 1))
        x = x[:, :, :d, :h, :w]
        k = self.n_regions
        sub = self.velocity(x).view(b, k, 3, d, h, w)
        disp, weights = self.compose(sub, self.logits(x))
        return disp, weights, sub


def save_weights(net: TotalRegNet, path: str | Path) -> Path:
    """Save ``net`` as safetensors with its architecture in the metadata (key "config", JSON)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(p), metadata={"config": json.dumps(net.config), "format": "totalreg-net-v1"})
    return p


def load_network(path: str | Path, device="cpu") -> TotalRegNet:
    """Build a :class:`TotalRegNet` from a safetensors checkpoint (architecture from its metadata).

    Raises RegistrationInputError (one line) when the file is missing, unreadable, or does not fit the
    architecture."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise RegistrationInputError(f"network weights not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(p))
    except Exception:
        raise RegistrationInputError(f"cannot read network weights {p}: not a safetensors file") from None
    cfg = json.loads(meta.get("config", "{}")) if meta.get("config") else {}
    net = TotalRegNet(**cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise RegistrationInputError(f"network weights {p} do not match the TotalRegNet architecture ({first})") \
            from None
    return net.to(device).eval()
