"""Accuracy/speed cases for the engine (used by bench/accuracy; see bench/accuracy/README.md).

    python3 -m registration_core.evaluate lung [--device cpu]        # shared lung pair, TRE on 51 landmarks
    python3 -m registration_core.evaluate abdomen                    # abdomen CT under a known synthetic warp
    python3 -m registration_core.evaluate phantom [--seed N]         # synthetic longitudinal pairs (TRE, Dice)
    python3 -m registration_core.evaluate make-wholebody OUTDIR      # 510x510x498 @ 0.8x0.8x1 mm pair on disk

Each case prints one JSON line: TRE (mm, |p + d(p) - q|) mean/median/p90/max, affine-only TRE, Dice where
labels exist, folding %, SDlogJ, stage times (s), CPU seconds and peak RSS (bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import RegistrationConfig, register
from .metrics import dice
from .synthetic import make_longitudinal_pair
from .warp import warp_labels

SHARED = Path(os.environ.get("TOTALREG_SHARED_CT", Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"))


def _tre(transform, fixed_pts, moving_pts) -> dict:
    q = np.array([transform.TransformPoint([float(v) for v in p]) for p in fixed_pts])
    e = np.linalg.norm(q - moving_pts, axis=1)
    return {"mean": float(e.mean()), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)),
            "max": float(e.max()), "n": int(len(e))}


def _run(fixed, moving, cfg, fixed_pts=None, moving_pts=None, fixed_labels=None, moving_labels=None) -> dict:
    t, c = time.perf_counter(), time.process_time()
    res = register(fixed, moving, cfg)
    out = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "times_s": res.report["times_s"], "folding_percent": res.report["folding_percent"],
           "sdlogj": res.report["sdlogj"], "similarity": res.report["similarity"],
           "working_spacing_mm": res.report["working_spacing_mm"], "threads": res.report.get("torch_threads")}
    if fixed_pts is not None:
        out["tre_identity"] = {"mean": float(np.linalg.norm(fixed_pts - moving_pts, axis=1).mean())}
        out["tre_affine"] = _tre(res.affine, fixed_pts, moving_pts)
        out["tre"] = _tre(sitk.DisplacementFieldTransform(sitk.Image(res.displacement)), fixed_pts, moving_pts)
    if fixed_labels is not None:
        warped = warp_labels(moving_labels, res.displacement)
        aff = sitk.Resample(moving_labels, fixed_labels, res.affine, sitk.sitkNearestNeighbor, 0)
        out["dice"] = float(dice(fixed_labels, warped)["mean"])
        out["dice_affine"] = float(dice(fixed_labels, aff)["mean"])
    return out


def lung(cfg) -> dict:
    """Shared lung pair: fixed baseline_small.mha, moving followup_reconstructed.nii.gz, 51 landmarks."""
    d = SHARED / "lung_pair_elastix"
    lm = np.loadtxt(d / "landmarks" / "landmarks_51.csv", delimiter=",", skiprows=1)
    return _run(sitk.ReadImage(str(d / "baseline_small.mha")), sitk.ReadImage(str(d / "followup_reconstructed.nii.gz")),
                cfg, lm[:, :3], lm[:, 3:])


def abdomen(cfg, seed: int = 0) -> dict:
    """Abdomen CT (3 mm) as fixed; moving = the same CT through a known smooth deformation + 8 deg + shift."""
    fixed = sitk.Cast(sitk.ReadImage(str(SHARED / "abdomen_totalseg" / "example_ct.nii.gz")), sitk.sitkFloat32)
    rng = np.random.default_rng(seed)
    # ground truth: moving point q = phi(p) = R(p - c) + c + t + b(p), b a smooth random bump field (B-spline)
    c = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    rigid = sitk.Euler3DTransform(c.tolist(), 0.0, 0.0, np.radians(8.0), [12.0, -8.0, 20.0])
    bs = sitk.BSplineTransformInitializer(fixed, [4, 4, 4])
    params = rng.normal(0, 4.0, len(bs.GetParameters()))
    bs.SetParameters(params.tolist())
    phi = sitk.CompositeTransform([rigid, bs])  # applies bs first, then rigid (fixed -> moving)
    # render moving on its own grid: moving(q) = fixed(phi^-1(q)); invert phi numerically on a field
    ref = sitk.Image(fixed.GetSize(), sitk.sitkFloat32)
    ref.CopyInformation(fixed)
    fwd = sitk.TransformToDisplacementField(phi, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                            fixed.GetSpacing(), fixed.GetDirection())
    inv = sitk.InvertDisplacementField(fwd, maximumNumberOfIterations=50, meanErrorToleranceThreshold=1e-4,
                                       maxErrorToleranceThreshold=0.05, enforceBoundaryCondition=False)
    moving = sitk.Resample(fixed, ref, sitk.DisplacementFieldTransform(inv), sitk.sitkLinear, -1024.0)
    arr = sitk.GetArrayViewFromImage(fixed)
    idx = np.argwhere(arr > -200)[::97][:, ::-1]
    pts = np.array([fixed.TransformContinuousIndexToPhysicalPoint(i.astype(float).tolist()) for i in idx])
    q = np.array([phi.TransformPoint(p.tolist()) for p in pts])
    return _run(fixed, moving, cfg, pts, q)


def phantom(cfg, seed: int = 0) -> dict:
    """Colleague's synthetic longitudinal pair (breathing, organ shifts, table shift, rotation): TRE + Dice."""
    s = make_longitudinal_pair(seed, spacing=3.0)
    return _run(s.fixed, s.moving, cfg, s.landmarks[0], s.landmarks[1], s.fixed_labels, s.moving_labels)


def make_wholebody(out: Path, seed: int = 0) -> None:
    """Write a whole-body-sized pair: fixed 510x510x498 @ 0.8x0.8x1.0 mm, moving 480x480x339 @ 0.85x0.85x1.25 mm
    (synthetic longitudinal pair rendered at 2.5 mm, then upsampled linearly; the prior's 422 mm field of view is
    that of the rendered prior, not padded with air), int16 NIfTI, plus landmarks.csv (100 exact pairs)."""
    out.mkdir(parents=True, exist_ok=True)
    s = make_longitudinal_pair(seed, spacing=2.5, fov_mm=(410.0, 410.0, 500.0), moving_spacing=(2.5, 2.5, 2.5))
    for img, size, sp, name in ((s.fixed, (512, 512, 500), (0.8, 0.8, 1.0), "fixed.nii.gz"),
                                (s.moving, (480, 480, 400), (0.85, 0.85, 1.25), "moving.nii.gz")):
        ext = np.asarray(img.GetSpacing()) * (np.asarray(img.GetSize()) - 1)
        d = np.asarray(img.GetDirection()).reshape(3, 3)
        centre = np.asarray(img.GetOrigin()) + d @ (ext / 2)
        # never beyond the rendered scan: padding with air would put an 'end of the body' inside the image,
        # which no real scan has (its anatomy is cut at the image border)
        size = tuple(int(min(n, np.floor(e / s + 1e-6) + 1)) for n, e, s in zip(size, ext, sp))
        new_ext = np.asarray(sp) * (np.asarray(size) - 1)
        origin = centre - d @ (new_ext / 2)
        big = sitk.Resample(img, list(size), sitk.Transform(), sitk.sitkLinear, origin.tolist(), list(sp),
                            img.GetDirection(), -1024.0, sitk.sitkInt16)
        sitk.WriteImage(big, str(out / name), True, 1)
        del big
    np.savetxt(out / "landmarks.csv", np.hstack(s.landmarks), delimiter=",",
               header="fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z (LPS mm)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m registration_core.evaluate")
    ap.add_argument("case", choices=["lung", "abdomen", "phantom", "make-wholebody"])
    ap.add_argument("out", nargs="?", help="output folder (make-wholebody)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=None)
    a = ap.parse_args(argv)
    if a.case == "make-wholebody":
        make_wholebody(Path(a.out or "wholebody"), a.seed)
        return 0
    cfg = RegistrationConfig(device=a.device, iterations=a.iterations)
    res = {"lung": lambda: lung(cfg), "abdomen": lambda: abdomen(cfg, a.seed),
           "phantom": lambda: phantom(cfg, a.seed)}[a.case]()
    print(json.dumps({"case": a.case, "seed": a.seed, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
