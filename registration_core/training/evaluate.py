"""Evaluation of network weights through the engine (``registration_core.register``), in millimetres.

- the real lung pair (fixed ``baseline_small.mha``, moving ``followup_reconstructed.nii.gz``; TRE on the 51
  landmarks of ``landmarks/landmarks_51.csv``) -- held out from training (its images were used only one at a time,
  as self-supervised sources, never as a pair);
- held-out synthetic longitudinal pairs (phantom seeds never trained on): landmark TRE and mean label Dice.

``register(..., iterations=0)`` is affine + network alone; ``weights="none"`` is affine only; other iteration
counts compare network-initialised with zero-initialised instance optimisation (used by ``bench/steps``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..config import RegistrationConfig
from ..engine import register
from ..metrics import dice, tre
from ..network import DEFAULT_WEIGHTS
from ..synthetic import make_longitudinal_pair
from ..warp import warp_labels

LUNG = Path("/work/shared/data/ct/lung_pair_elastix")


def lung_pair(root: Path = LUNG):
    """(fixed, moving, fixed_points_mm [51, 3], moving_points_mm [51, 3]) of the real lung pair (LPS mm)."""
    fixed = sitk.ReadImage(str(root / "baseline_small.mha"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(root / "followup_reconstructed.nii.gz"), sitk.sitkFloat32)
    lm = np.loadtxt(root / "landmarks" / "landmarks_51.csv", delimiter=",", skiprows=1)
    return fixed, moving, lm[:, :3], lm[:, 3:]


def lung_masks(root: Path = LUNG):
    """(fixed, moving) lung masks of the real lung pair (uint8 0/1), each on its image's grid (nearest neighbour)."""
    out = []
    for img_name, mask_name in (("baseline_small.mha", "baseline_mask.mha"),
                                ("followup_reconstructed.nii.gz", "followup_mask.mha")):
        ref = sitk.ReadImage(str(root / img_name))
        mask = sitk.Resample(sitk.ReadImage(str(root / mask_name)), ref, sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out.append(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return tuple(out)


def synthetic_pair(seed: int, spacing: float = 4.0):
    """Held-out synthetic longitudinal pair (phantom ``seed``, deformation seed ``seed + 1000``)."""
    return make_longitudinal_pair(seed, seed + 1000, spacing=spacing, n_landmarks=100)


def run_case(fixed, moving, p, q, weights, iterations: int, fixed_labels=None, moving_labels=None,
             start=None) -> dict:
    """One engine run: TRE (mean/median/p90 mm), Dice (if labels), time (s), folding %. ``start``: a total field
    (fixed grid convention, mm) that instance optimisation starts from instead of the network's (see ``register``)."""
    t = time.perf_counter()
    res = register(fixed, moving, RegistrationConfig(device="cpu", iterations=int(iterations),
                                                     weights=weights), start=start)
    wall = time.perf_counter() - t
    return {**field_scores(res.displacement, p, q, fixed_labels, moving_labels), "time_s": round(wall, 2),
            "network_s": res.report["times_s"].get("network"), "network": res.report.get("network"),
            "folding_percent": res.report.get("folding_percent")}


def field_scores(displacement, p, q, fixed_labels=None, moving_labels=None) -> dict:
    """TRE (mean/median/p90, mm) of a displacement field (fixed grid, LPS mm, fixed p <-> moving p + d(p)) on
    landmarks p (fixed) / q (moving), and the mean Dice of the warped moving labels when both label maps are given."""
    e = tre(displacement, p, q)
    out = {"tre_mean_mm": float(e.mean()), "tre_median_mm": float(np.median(e)),
           "tre_p90_mm": float(np.percentile(e, 90))}
    if fixed_labels is not None and moving_labels is not None:
        out["dice_mean"] = float(dice(warp_labels(moving_labels, displacement), fixed_labels)["mean"])
    return out


def evaluate_weights(weights: str | None, synthetic_seeds=(900, 901), log=print) -> dict:
    """Network alone (iterations 0) vs affine only on the lung pair and held-out synthetic pairs.

    ``weights``: safetensors file (None = the shipped default). Returns {case: {"affine": ..., "network": ...}}.
    """
    w = str(weights or DEFAULT_WEIGHTS)
    res: dict = {"weights": w}
    fixed, moving, p, q = lung_pair()
    res["lung_pair"] = {"identity_tre_mean_mm": float(tre(None, p, q).mean()),
                        "affine": run_case(fixed, moving, p, q, "none", 0),
                        "network": run_case(fixed, moving, p, q, w, 0)}
    log(f"lung pair: affine TRE {res['lung_pair']['affine']['tre_mean_mm']:.2f} mm, network alone "
        f"{res['lung_pair']['network']['tre_mean_mm']:.2f} mm")
    for s in synthetic_seeds:
        pair = synthetic_pair(int(s))
        fp, fq = pair.landmarks
        case = {"identity_tre_mean_mm": float(tre(None, fp, fq).mean())}
        for name, ww in (("affine", "none"), ("network", w)):
            case[name] = run_case(pair.fixed, pair.moving, fp, fq, ww, 0, pair.fixed_labels, pair.moving_labels)
        res[f"synthetic_{s}"] = case
        log(f"synthetic {s}: affine TRE {case['affine']['tre_mean_mm']:.2f} mm Dice "
            f"{case['affine']['dice_mean']:.3f}; network alone {case['network']['tre_mean_mm']:.2f} mm Dice "
            f"{case['network']['dice_mean']:.3f}")
    return res
