"""Whole-body-sized pair, end to end: `totalreg register` vs the itk-elastix baseline run beside it.

The pair comes from ``python3 -m registration_core.evaluate make-wholebody DIR`` (fixed 510x510x498 at
0.8x0.8x1.0 mm, moving 480x480x339 at 0.85x0.85x1.25 mm, 100 landmark pairs with exact ground truth). Each method
runs in its own process, one after the other on an otherwise idle machine, and does the same job end to end: read
both NIfTI files, register, write ``displacement.nii.gz`` (float32, fixed grid) and ``warped.nii.gz``. Recorded:
wall seconds, CPU seconds (user+sys of the process and its children), peak RSS, TRE on the landmarks (from the
written field, |p + d(p) - q|), and folding % of the written field.

Usage::

    python3 bench/accuracy/wholebody.py [--pair DIR] [--methods totalreg elastix] [--out bench/accuracy/WHOLEBODY.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out" / "wholebody"
RECORD = Path(__file__).resolve().parent / "wholebody.json"


def _elastix_job(pair: Path, out: Path) -> None:
    """The elastix baseline end to end (run in a child process by :func:`run_method`)."""
    import SimpleITK as sitk

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from elastix_baseline import elastix_register
    from registration_core.io import write_image
    from registration_core.warp import warp_image

    fixed = sitk.ReadImage(str(pair / "fixed.nii.gz"))
    moving = sitk.ReadImage(str(pair / "moving.nii.gz"))
    disp, info = elastix_register(fixed, moving)
    warped = warp_image(moving, disp)
    out.mkdir(parents=True, exist_ok=True)
    write_image(sitk.Cast(sitk.Round(warped), sitk.sitkInt16), out / "warped.nii.gz")
    write_image(sitk.Cast(disp, sitk.sitkVectorFloat32), out / "displacement.nii.gz")
    (out / "report.json").write_text(json.dumps({"elastix_registration_s": info["time_s"]}))


def run_method(method: str, pair: Path, out: Path) -> dict:
    """Run one method end to end in a child process; wall/CPU seconds and peak RSS of that child."""
    if method == "totalreg":
        cmd = [sys.executable, "-m", "node.cli", "register", str(pair / "fixed.nii.gz"), str(pair / "moving.nii.gz"),
               "-o", str(out), "--device", "cpu"]
    else:
        cmd = [sys.executable, __file__, "--_elastix-child", str(pair), str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed: {proc.stderr[-2000:]}")
    return {"method": method, "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_gb": after.ru_maxrss / 1024 ** 2}


def _hu_at(image, points: np.ndarray) -> np.ndarray:
    """Linear HU of ``image`` at world points (mm, LPS); -1024 outside."""
    import SimpleITK as sitk
    from scipy import ndimage

    idx = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]) for p in points])
    arr = sitk.GetArrayViewFromImage(image)
    return ndimage.map_coordinates(arr, idx[:, ::-1].T, order=1, cval=-1024.0)


def accuracy(pair: Path, out: Path) -> dict:
    """TRE (mm) on the pair's landmarks and folding % of the written field."""
    import SimpleITK as sitk

    from registration_core.metrics import folding_percent, tre

    disp = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    pts = np.loadtxt(pair / "landmarks.csv", delimiter=",")
    err = tre(disp, pts[:, :3], pts[:, 3:])
    # landmarks whose true moving point shows anatomy in the moving scan (not its -1024 fill beyond the anatomy
    # that the synthetic prior covers): only there can any method know where the point went
    imaged = _hu_at(sitk.ReadImage(str(pair / "moving.nii.gz")), pts[:, 3:]) > -990.0
    return {"tre_mean": float(err.mean()), "tre_p90": float(np.percentile(err, 90)), "tre_max": float(err.max()),
            "n_imaged": int(imaged.sum()), "n": int(len(pts)),
            "tre_imaged_mean": float(err[imaged].mean()), "tre_imaged_p90": float(np.percentile(err[imaged], 90)),
            "tre_identity": float(np.linalg.norm(pts[:, :3] - pts[:, 3:], axis=1).mean()),
            "folding_percent": float(folding_percent(disp))}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (and write) a markdown table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_elastix-child":
        _elastix_job(Path(argv[1]), Path(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", type=Path, default=OUT / "pair")
    ap.add_argument("--methods", nargs="+", default=["totalreg", "elastix"], choices=["totalreg", "elastix"])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "WHOLEBODY.md")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the accuracy of the recorded runs' outputs (no registration)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the recorded rows (wholebody.json) of the methods not run this time")
    args = ap.parse_args(argv)
    if not (args.pair / "landmarks.csv").is_file():
        subprocess.run([sys.executable, "-m", "registration_core.evaluate", "make-wholebody", str(args.pair)],
                       check=True)
    rows = []
    if args.merge and RECORD.is_file():
        rows = [r for r in json.loads(RECORD.read_text())["rows"] if r["method"] not in args.methods]
    recorded = {r["method"]: r for r in json.loads(RECORD.read_text())["rows"]} if RECORD.is_file() else {}
    for m in args.methods:
        out = OUT / m
        if args.evaluate_only:
            r = {k: v for k, v in recorded[m].items() if k in ("method", "wall_s", "cpu_s", "peak_rss_gb", "stages")}
        else:
            r = run_method(m, args.pair, out)
        r.update(accuracy(args.pair, out))
        if m == "totalreg" and not args.evaluate_only:
            rep = json.loads((out / "report.json").read_text())
            r["stages"] = rep["times_s"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    head = ("| method | wall s | CPU s | peak RSS GB | TRE mean / p90 / max mm, all landmarks (identity) | "
            "TRE mean / p90 mm, landmarks the prior images | folding % |\n|---|---:|---:|---:|---|---|---:|")
    lines = [head] + [f"| {r['method']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | "
                      f"{r['tre_mean']:.2f} / {r['tre_p90']:.2f} / {r['tre_max']:.2f} ({r['tre_identity']:.1f}) | "
                      f"{r['tre_imaged_mean']:.2f} / {r['tre_imaged_p90']:.2f} ({r['n_imaged']} of {r['n']}) | "
                      f"{r['folding_percent']:.3f} |" for r in rows]
    md = "\n".join(lines)
    record = {"run": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), "rows": rows}
    RECORD.write_text(json.dumps(record, indent=1))
    print(md)
    stages = [r for r in rows if "stages" in r]
    text = (f"# Whole-body-sized pair, end to end\n\nRun {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            f"`python3 bench/accuracy/wholebody.py {' '.join(argv)}`\n\n"
            f"- nproc {os.cpu_count()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}\n"
            f"- pair: {args.pair} (make-wholebody, seed 0)\n\n{md}\n")
    if stages:
        text += "\ntotalreg stage times (s): `" + json.dumps(stages[0]["stages"]) + "`\n"
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
