"""Which start lets instance optimisation finish sooner? Start variants on validation cases, TRE after N steps.

    python3 bench/steps/starts.py CASE VARIANT N [N ...]      (appends one JSON line per run to --log)

CASE: ``phantNNN`` (bench/accuracy's ``synthetic(NNN)``, 4 mm; 900-905 are validation phantoms, never trained on)
or any ``bench/accuracy`` case name (``val_abdorg_1``, ...). VARIANT:

- ``zero``: the affine alone as start (weights "none"); ``net``: the shipped network's field (the engine's default);
- ``net:{JSON}`` / ``zero:{JSON}``: the same with RegistrationConfig overrides, e.g. ``net:{"search_half":0}``;
- ``smoothS``: the network's field smoothed by a Gaussian of S mm;
- ``fuse``: per voxel, the network's field or the coupled-convex search from zero, whichever has the lower local
  (12 mm box) MIND cost, box-blended;
- ``searchnet``: the search from zero first, then the network on the prior warped by it, composed;
- ``exact``: the case's exact field (``register(..., start=...)``: a perfect network's start);
- ``oracle``: zero-init's own N = 60 result as the start;
- ``towardA``: the network's total field moved a share A (0..1) of the way to the exact field,
  ``net + A (exact - net)``: a network whose error is (1 - A) x the shipped one's, pattern kept;
- ``flip``: test-time augmentation: each network pass averaged with the pass on both images mirrored left-right
  (its field mirrored back, x component negated; region weights likewise).

Exploratory: ``smoothS``, ``fuse`` and ``searchnet`` patch the engine's network stage, ``flip`` its network, in
this process only;
``exact``, ``oracle`` and ``towardA`` hand ``register`` a start field (the network is then not run). Results of the
2026-12-05 runs are in MODEL_CARD.md (*Measured accuracy*).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "accuracy"))

import registration_core.engine as E  # noqa: E402
from registration_core.config import RegistrationConfig  # noqa: E402
from registration_core.deformable import discrete_search  # noqa: E402
from registration_core.features import mind_ssc  # noqa: E402
from registration_core.instance_opt import warp_same_grid  # noqa: E402


def _gauss(u: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Gaussian (sigma in voxels, cut at 3 sigma) of a [1, C, D, H, W] field over its three spatial axes, edges
    replicated (scipy's ``gaussian_filter``, mode "nearest")."""
    out = ndimage.gaussian_filter(u.double().numpy(), sigma=(0, 0, sigma_vox, sigma_vox, sigma_vox), mode="nearest",
                                  truncate=3.0)
    return torch.from_numpy(out).to(u.dtype)


class _FlipAveraged(torch.nn.Module):
    """The network averaged with itself on left-right mirrored inputs (fields in voxels, channel 0 = x)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, f, m):
        d, w, sub = self.net(f, m)
        d2, w2, _ = self.net(f.flip(-1), m.flip(-1))
        d2 = d2.flip(-1).clone()
        d2[:, 0] = -d2[:, 0]
        return (d + d2) / 2, (w + w2.flip(-1)) / 2, sub


def _patch_network_flip():
    """Wrap the engine's loaded network in :class:`_FlipAveraged`."""
    orig = E._load_net

    def load(cfg, device):
        net, status, sha = orig(cfg, device)
        return (_FlipAveraged(net) if net is not None else None), status, sha
    E._load_net = load


def _patch_network_stage(variant: str):
    """Replace the engine's network stage by the variant's start (see module docstring)."""
    orig = E.network_stage

    @torch.no_grad()
    def stage(work, cfg, device):
        if variant.startswith("smooth"):
            ns = orig(work, cfg, device)
            ns.start = _gauss(ns.start, float(variant[6:]) / work.spacing)
            return ns
        ff = mind_ssc(work.f, cfg.mind_radius, cfg.mind_dilation, cfg.mind_var_floor)
        fm = mind_ssc(work.m, cfg.mind_radius, cfg.mind_dilation, cfg.mind_var_floor)
        u_z = discrete_search(ff, fm, torch.zeros(1, 3, *work.f.shape[-3:]), work.grid, cfg.search_spacing,
                              cfg.search_half, cfg.max_search_voxels)
        if variant == "searchnet":
            ns = orig(E.WorkingPair(**{**work.__dict__, "m": warp_same_grid(work.m, u_z, work.grid)}), cfg, device)
            ns.start = ns.start + warp_same_grid(u_z, ns.start, work.grid)
            return ns
        ns = orig(work, cfg, device)                                   # fuse
        k = max(3, int(round(24.0 / work.grid.spacing)) | 1)

        def local(u):
            c = (ff - warp_same_grid(fm, u, work.grid)).pow(2).mean(1, keepdim=True)
            return F.avg_pool3d(c, k, stride=1, padding=k // 2, count_include_pad=False)
        w = F.avg_pool3d((local(ns.start) < local(u_z)).float(), k, stride=1, padding=k // 2,
                         count_include_pad=False)
        ns.start = w * ns.start + (1 - w) * u_z
        return ns
    E.network_stage = stage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("variant")
    ap.add_argument("iterations", type=int, nargs="+")
    ap.add_argument("--log", default=str(ROOT / "bench" / "out" / "starts.jsonl"))
    args = ap.parse_args(argv)
    from cases import CASES, synthetic
    from run import evaluate

    case = synthetic(int(args.case[5:])) if args.case.startswith("phant") else CASES[args.case]()
    base, _, extra = args.variant.partition(":")
    overrides = json.loads(extra) if extra else {}
    start = None
    if base in ("fuse", "searchnet") or base.startswith("smooth"):
        _patch_network_stage(base)
    if base == "flip":
        _patch_network_flip()
    if base == "exact":
        start = case.gt_displacement
    elif base.startswith("toward"):
        share = float(base[6:])
        net = sitk.GetArrayFromImage(E.register(case.fixed, case.moving, RegistrationConfig(
            device="cpu", iterations=0, **overrides)).displacement)
        exact = sitk.GetArrayFromImage(case.gt_displacement)
        start = sitk.GetImageFromArray(net + share * (exact - net), isVector=True)
        start.CopyInformation(case.gt_displacement)
    elif base == "oracle":
        start = E.register(case.fixed, case.moving,
                           RegistrationConfig(device="cpu", iterations=60, weights="none")).displacement
    weights = "none" if base == "zero" else None        # with a start field the network is not run anyway
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    for n in args.iterations:
        t = time.perf_counter()
        r = E.register(case.fixed, case.moving, RegistrationConfig(device="cpu", iterations=n, weights=weights,
                                                                   **overrides), start=start)
        sc = evaluate(case, r.displacement)
        row = {"case": args.case, "variant": args.variant, "N": n,
               "tre_mean_mm": round(sc.get("tre_mean", float("nan")), 3),
               "field_error_mm": round(sc.get("field_error_mean", float("nan")), 3),
               "energy": [round(x["energy"], 5) for x in r.report["deformable"].get("schedules", [])],
               "time_s": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        with open(args.log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
