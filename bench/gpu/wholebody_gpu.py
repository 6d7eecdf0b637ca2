"""Whole-body pair on a CUDA GPU: network alone, network + instance optimisation, peak GPU memory.

    python3 -m registration_core.evaluate make-wholebody bench/out/wholebody/pair   # once (CPU, ~1 min)
    python3 bench/gpu/wholebody_gpu.py [--pair bench/out/wholebody/pair] [--repeats 3]

Loads the pair once, warms the GPU up with one full run, then times ``register`` (``device="cuda"``) ``--repeats``
times each with ``iterations=0`` (affine + network + full-resolution field) and with the default settings
(affine + network + discrete search + Adam refinement), and reports the stage times of the engine's report
(``times_s``: the network stage alone, the deformable stage alone), wall time, TRE on the landmarks and
``torch.cuda.max_memory_allocated``. Prints a markdown table; writes it to ``bench/gpu/RESULTS.md``.
Exits with a message (code 2) where no CUDA device is present: nothing here runs on a CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    """Run the GPU timings and print/write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", type=Path, default=ROOT / "bench" / "out" / "wholebody" / "pair")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    import torch

    from registration_core import register
    from registration_core.config import RegistrationConfig
    from registration_core.metrics import tre

    if not torch.cuda.is_available():
        print("wholebody_gpu: no CUDA device here; run it where the device tool lends a GPU", file=sys.stderr)
        return 2
    fixed = sitk.ReadImage(str(args.pair / "fixed.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(args.pair / "moving.nii.gz"), sitk.sitkFloat32)
    pts = np.loadtxt(args.pair / "landmarks.csv", delimiter=",")
    rows = []
    register(fixed, moving, RegistrationConfig(device="cuda"))  # warm-up: kernels, allocator, weights
    for label, iters in (("network alone (iterations=0)", 0), ("network + optimisation (defaults)", None)):
        runs = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = register(fixed, moving, RegistrationConfig(device="cuda", iterations=iters))
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            t = res.report["times_s"]
            runs.append({"wall": wall, "network": t.get("network", 0.0),
                         "deformable": t.get("instance_optimisation", 0.0),
                         "gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
                         "tre": float(tre(res.displacement, pts[:, :3], pts[:, 3:]).mean())})
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((label, med))
    name = torch.cuda.get_device_name(0)
    lines = [f"# Whole-body pair on {name}", "",
             f"`python3 bench/gpu/wholebody_gpu.py --repeats {args.repeats}` (medians of {args.repeats} runs after a "
             "warm-up; pair: fixed 510x510x498 @ 0.8x0.8x1 mm, moving 480x480x339 @ 0.85x0.85x1.25 mm)", "",
             "| run | network stage s | deformable stage s | register() wall s | peak GPU memory GB | TRE mm |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, m in rows:
        lines.append(f"| {label} | {m['network']:.3f} | {m['deformable']:.3f} | {m['wall']:.2f} | {m['gpu_gb']:.2f} "
                     f"| {m['tre']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
