"""Issue 16's ablation: network weights side by side, per anatomical region, on the accuracy benchmark's cases.

    python3 bench/ablation/run.py --weights k4=var/abl_k4/cand.safetensors,k1=var/abl_k1/cand.safetensors \
        --cases lung,test_abd_101,test_abd_102,test_abd_103,test_abdorg_101,test_abdorg_102,test_abdorg_103,\
test_chest_101,test_chest_102,test_chest_103 --out bench/ablation/RESULTS.md [--iterations 0]

Each named weights file runs through the engine (``register(iterations=N)``, default 0 = the affine stage and the
network alone) on every case, in one process, one after another. Scores per case and weights: landmark TRE (mm),
the mean field error |d - d_GT| (mm) over the fixed scan where the ground truth is defined (cases with an exact
field), and both again per region of :mod:`registration_core.regions`:

- **lungs** (the thorax region): air inside the body in components of at least 50 ml
  (``training.data.hu_region_labels``; the lung pair: its own lung mask), holes filled slice by slice so the
  vessels inside count;
- **bones**: HU >= 250 inside the body;
- **abdomen**: the TotalSegmentator abdominal organs where the case has those labels (``abdorg``), otherwise the
  body's soft tissue (-150..250 HU) caudal of the lungs' lowest slice.

A landmark belongs to the region of the fixed voxel it lies in. Fields follow docs/CONTRACTS.md (fixed grid, LPS
mm, fixed p <-> moving p + d(p)). Prints a markdown table and writes it to ``--out`` with ``results.json`` beside.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(ROOT / "bench" / "accuracy")):
    if p not in sys.path:
        sys.path.insert(0, p)

from cases import CASES, SHARED_CT, Case  # noqa: E402
from registration_core.regions import BONES, THORAX, lut_from_names  # noqa: E402
from registration_core.metrics import tre  # noqa: E402
from registration_core.training.data import BONE_HU, body_and_lungs_hu  # noqa: E402
from registration_core.training.regions import load_classmap  # noqa: E402

ABDOMEN_ID = 2
REGION_COLUMNS = (("lungs", THORAX.id), ("abdomen", ABDOMEN_ID), ("bones", BONES.id))


def region_map(case: Case) -> np.ndarray:
    """Region ids (0 none, 1 lungs, 2 abdomen, 3 bones) of the case's fixed voxels, [z, y, x] (module docstring)."""
    body, hu_lungs = body_and_lungs_hu(case.fixed)          # computed once: lungs, and body for the soft tissue
    hu = sitk.GetArrayFromImage(case.fixed)
    lungs = hu_lungs
    if "lung pair" in case.name and case.fixed_labels is not None:
        lungs = sitk.GetArrayFromImage(case.fixed_labels) > 0          # the pair's own lung mask
    lungs = np.stack([ndimage.binary_fill_holes(sl) for sl in lungs])  # vessels inside the lungs count
    bones = body & (hu >= BONE_HU)                                     # as training.data.hu_region_labels
    out = np.where(lungs, THORAX.id, np.where(bones, BONES.id, 0)).astype(np.uint8)
    if "abdorg" in case.name and case.fixed_labels is not None:
        lut = lut_from_names(load_classmap(SHARED_CT / "abdomen_totalseg" / "classmap_total.json"))
        organs = lut[sitk.GetArrayFromImage(case.fixed_labels).astype(np.int64)] == ABDOMEN_ID
        out[organs & (out == 0)] = ABDOMEN_ID
        return out
    nz = hu.shape[0]
    zs = np.array([case.fixed.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(nz)])
    rows = np.flatnonzero(hu_lungs.any((1, 2)))
    # lung bases: the lowest (most caudal, smallest LPS z) slice with lungs; no lungs: the whole scan
    below = np.ones(nz, bool) if len(rows) == 0 else zs < zs[rows].min()
    soft = body & (hu > -150) & (hu < BONE_HU) & below[:, None, None]
    out[soft & (out == 0)] = ABDOMEN_ID
    return out


def _voxel_of(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    idx = np.array([image.TransformPhysicalPointToIndex([float(v) for v in p]) for p in pts])
    size = np.array(image.GetSize())
    ok = np.all((idx >= 0) & (idx < size), axis=1)
    return idx, ok


def score(case: Case, disp: sitk.Image, regions: np.ndarray) -> dict:
    """TRE and field error (mm), overall and per region (see the module docstring)."""
    out: dict = {}
    if case.landmarks is not None:
        e = tre(disp, *case.landmarks)
        out["tre"] = float(e.mean())
        idx, ok = _voxel_of(case.fixed, case.landmarks[0])
        lab = np.zeros(len(e), np.uint8)
        lab[ok] = regions[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        for name, rid in REGION_COLUMNS:
            sel = lab == rid
            out[f"tre_{name}"] = float(e[sel].mean()) if sel.sum() >= 3 else None
            out[f"n_lm_{name}"] = int(sel.sum())
    if case.gt_displacement is not None:
        err = np.linalg.norm(sitk.GetArrayFromImage(disp) - sitk.GetArrayFromImage(case.gt_displacement), axis=-1)
        valid = sitk.GetArrayFromImage(case.mask).astype(bool) if case.mask is not None else np.ones_like(err, bool)
        body = regions > 0
        out["field"] = float(err[valid & body].mean())
        for name, rid in REGION_COLUMNS:
            sel = valid & (regions == rid)
            out[f"field_{name}"] = float(err[sel].mean()) if sel.sum() >= 100 else None
    return out


def _f(v):
    return "–" if v is None else f"{v:.2f}"


def table(rows: list[dict], names: list[str]) -> str:
    """Markdown: per case and weights, TRE and field error overall and per region; then the per-name means."""
    head = ("| case | weights | TRE | TRE lungs / abdomen / bones | field error | field error lungs / abdomen / "
            "bones | time (s) |\n|---|---|---:|---|---:|---|---:|\n")
    lines = []
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['case']} | {r['weights']} | {_f(s.get('tre'))} | "
                     + " / ".join(_f(s.get(f"tre_{n}")) for n, _ in REGION_COLUMNS)
                     + f" | {_f(s.get('field'))} | "
                     + " / ".join(_f(s.get(f"field_{n}")) for n, _ in REGION_COLUMNS) + f" | {r['time_s']:.1f} |")
    summary = ["", "Means over the cases that have the figure (field error: the test-split cases; TRE: all):", "",
               "| weights | TRE | field error | field error lungs | field error abdomen | field error bones |",
               "|---|---:|---:|---:|---:|---:|"]
    for n in names:
        sel = [r["scores"] for r in rows if r["weights"] == n]

        def mean(key):
            v = [s[key] for s in sel if s.get(key) is not None]
            return float(np.mean(v)) if v else None
        summary.append(f"| {n} | {_f(mean('tre'))} | {_f(mean('field'))} | " + " | ".join(
            _f(mean(f"field_{c}")) for c, _ in REGION_COLUMNS) + " |")
    return head + "\n".join(lines) + "\n" + "\n".join(summary) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="comma list of name=path.safetensors (or name=none)")
    ap.add_argument("--cases", required=True, help="comma list of bench/accuracy case names")
    ap.add_argument("--iterations", type=int, default=0, help="instance-optimisation steps (0 = network alone)")
    ap.add_argument("--config", default="{}", help="other RegistrationConfig settings, JSON (e.g. "
                    "'{\"network_passes\": 2}')")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args(argv)
    from registration_core import RegistrationConfig, register

    weights = [w.split("=", 1) for w in args.weights.split(",")]
    rows = []
    t_start = time.time()
    for cname in args.cases.split(","):
        case = CASES[cname]()
        regions = region_map(case)
        for name, path in weights:
            t0 = time.perf_counter()
            kw = {**json.loads(args.config), "iterations": args.iterations}
            res = register(case.fixed, case.moving, RegistrationConfig(weights=path, **kw))
            rows.append({"case": case.name, "weights": name, "time_s": time.perf_counter() - t0,
                         "scores": score(case, res.displacement, regions)})
            print(json.dumps(rows[-1]), flush=True)
    md = table(rows, [n for n, _ in weights])
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python3 bench/ablation/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(f"# Ablation: network weights per region\n\nRun {stamp} on {platform.machine()}, "
                   f"{time.time() - t_start:.0f} s. Command: `{cmd}`\n\nWeights: "
                   + ", ".join(f"`{n}` = {p}" for n, p in weights)
                   + f"; instance-optimisation steps: {args.iterations} (0 = network alone).\n\n" + md)
    (out.parent / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
