"""Accuracy versus instance-optimisation steps: network-initialised vs zero-initialised optimisation.

    python3 bench/steps/run.py [--weights W.safetensors] [--iterations 0 5 10 15 20 30 60] [--synthetic-seed 950 951]
                               [--elastix] [--exact-start] [--wholebody] [--out bench/steps/RESULTS.md]

For each case (the real lung pair, TRE on 51 landmarks + Dice of the lung masks; held-out synthetic whole-body
pairs -- phantoms never used in training or model selection -- TRE on 100 landmarks + mean Dice of the 23 phantom
labels) and each iteration count N (fine-level Adam steps; the coarse level runs 1.5 N), ``register`` runs twice:
with the trained network's field as the starting point, and from zero (affine only). N = 0 is the network alone vs
the affine alone. ``--exact-start`` adds a third start on the synthetic pairs: their exact field (``register``'s
``start``), i.e. what a perfect network would hand instance optimisation. ``--elastix`` adds itk-elastix (affine + B-spline, default maps; ``bench/accuracy``) per case.
``--wholebody`` also times affine + network alone on a 2 mm whole-body synthetic CT. Prints tables and writes
RESULTS.md (commands, machine, numbers) and RESULTS.png (TRE against N per case). Finished runs are cached in ``bench/out/steps_cache.json`` under keys
that include the engine settings and the weights file's hash, so a changed setting or checkpoint is re-run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from registration_core.config import RegistrationConfig  # noqa: E402
from registration_core.metrics import tre  # noqa: E402
from registration_core.network import DEFAULT_WEIGHTS  # noqa: E402
from registration_core.training.evaluate import (field_scores, lung_pair, lung_masks, run_case,  # noqa: E402
                                                synthetic_pair)


def run_elastix(fixed, moving, p, q, fixed_labels=None, moving_labels=None) -> dict:
    """itk-elastix affine + B-spline (bench/accuracy's baseline): TRE (mm), Dice, time (s)."""
    sys.path.insert(0, str(ROOT / "bench" / "accuracy"))
    from elastix_baseline import elastix_register

    t = time.perf_counter()
    disp, _ = elastix_register(fixed, moving)
    wall = time.perf_counter() - t
    return {**field_scores(disp, p, q, fixed_labels, moving_labels), "time_s": round(wall, 2)}


def _fingerprint(obj) -> str:
    """Short sha256 of bytes or of a JSON-serialisable object (cache keys)."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:12]


def _steps_to_match(rs) -> str:
    """For each zero-init N > 0: 'N -> N*' with N* the fewest network-init steps reaching zero-init's TRE at N."""
    out = []
    for n, r0, _ in rs:
        if n == 0:
            continue
        hit = next((m for m, _, r1 in rs if r1["tre_mean_mm"] <= r0["tre_mean_mm"]), None)
        out.append(f"{n}→{hit if hit is not None else '>' + str(rs[-1][0])}")
    return ", ".join(out)


def plot_curves(rows, elx: dict, path: Path, exact: dict | None = None) -> None:
    """TRE (mm) against optimisation steps N, one panel per case: zero-init and network-init lines, the exact-field
    start where measured (``exact``: {(case, N): result}), elastix as a horizontal reference. Written as PNG to
    ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rs = sorted((n, r0, r1) for nm, n, r0, r1, _ in rows if nm == name)
        ns = [n for n, _, _ in rs]
        ax.plot(ns, [r0["tre_mean_mm"] for _, r0, _ in rs], "o--", color="tab:gray", label="zero-init (affine start)")
        ax.plot(ns, [r1["tre_mean_mm"] for _, _, r1 in rs], "o-", color="tab:blue", label="network-init")
        ex = [(n, exact[(name, n)]) for n in ns if exact and (name, n) in exact]
        if ex:
            ax.plot([n for n, _ in ex], [r["tre_mean_mm"] for _, r in ex], "s-", color="tab:green",
                    label="exact-field start")
        if name in elx and elx[name]["tre_mean_mm"] < 3 * max(r0["tre_mean_mm"] for _, r0, _ in rs):
            ax.axhline(elx[name]["tre_mean_mm"], color="tab:red", ls=":", label="itk-elastix")
        elif name in elx:
            ax.text(0.97, 0.95, f"itk-elastix: {elx[name]['tre_mean_mm']:.1f} mm (off scale)", color="tab:red",
                    fontsize=8, ha="right", va="top", transform=ax.transAxes)
        ax.set_title(name.replace(" (", "\n("), fontsize=9)
        ax.set_xlabel("fine-level optimisation steps N")
        ax.set_ylabel("mean TRE (mm)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    seen = {}
    for ax in axes[0]:                       # one legend with every line drawn in any panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    axes[0][0].legend(list(seen.values()), list(seen.keys()), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _dice(r) -> str:
    return f"{r['dice_mean']:.3f}" if r and "dice_mean" in r else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 5, 10, 15, 20, 30, 60])
    ap.add_argument("--synthetic-seed", type=int, nargs="+", default=[950, 951],
                    help="held-out phantom seeds (training uses 0-31, model selection 900-901)")
    ap.add_argument("--elastix", action="store_true", help="also run itk-elastix once per case (cached)")
    ap.add_argument("--exact-start", action="store_true",
                    help="also start the synthetic pairs from their exact field (a perfect network's start)")
    ap.add_argument("--synthetic-spacing", type=float, default=4.0)
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--wholebody", action="store_true", help="also time the network alone on a 2 mm whole-body CT")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--cache", default=str(ROOT / "bench" / "out" / "steps_cache.json"),
                    help="JSON cache of finished runs, keyed by case, start, N, engine settings and weights file "
                         "hash (a changed setting or checkpoint is re-run); '' to disable")
    ap.add_argument("--zero-only", action="store_true", help="only fill the cache's zero-init runs")
    args = ap.parse_args(argv)
    if not args.zero_only and not Path(args.weights).is_file():
        print(f"weights not found: {args.weights}", file=sys.stderr)
        return 2
    cases = []
    f, m, p, q = lung_pair()
    fmask, mmask = lung_masks()
    cases.append(("lung pair (real, 51 landmarks)", f, m, p, q, fmask, mmask, float(tre(None, p, q).mean()), None))
    for seed in ([] if args.no_synthetic else args.synthetic_seed):
        s = synthetic_pair(seed, args.synthetic_spacing)
        fp, fq = s.landmarks
        cases.append((f"synthetic phantom {seed} ({args.synthetic_spacing:g} mm, held out)", s.fixed,
                      s.moving, fp, fq, s.fixed_labels, s.moving_labels, float(tre(None, fp, fq).mean()),
                      s.displacement))
    rows = []
    zc = Path(args.cache) if args.cache else None
    cache = json.loads(zc.read_text()) if zc and zc.is_file() else {}
    settings = _fingerprint(RegistrationConfig().to_dict())
    net_key = "" if args.zero_only else _fingerprint(Path(args.weights).read_bytes())

    def cached(key, run):
        if key not in cache:
            cache[key] = run()
            if zc:
                zc.parent.mkdir(parents=True, exist_ok=True)
                zc.write_text(json.dumps(cache, indent=1))
        return cache[key]

    elx, exact = {}, {}
    for name, fx, mv, p, q, fl, ml, ident, gt in cases:
        if args.elastix:
            elx[name] = cached(f"{name}|elastix", lambda: run_elastix(fx, mv, p, q, fl, ml))
            print(f"{name:45s} elastix TRE {elx[name]['tre_mean_mm']:6.2f} mm Dice {_dice(elx[name])} "
                  f"({elx[name]['time_s']:.0f} s)", flush=True)
        for n in args.iterations:
            r0 = cached(f"{name}|zero|{n}|{settings}", lambda: run_case(fx, mv, p, q, "none", n, fl, ml))
            if args.zero_only:
                print(f"{name:45s} N={n:3d}  zero-init TRE {r0['tre_mean_mm']:6.2f} mm", flush=True)
                continue
            r1 = cached(f"{name}|network|{n}|{settings}|{net_key}",
                        lambda: run_case(fx, mv, p, q, args.weights, n, fl, ml))
            rows.append((name, n, r0, r1, ident))
            print(f"{name:45s} N={n:3d}  zero-init TRE {r0['tre_mean_mm']:6.2f} mm ({r0['time_s']:5.1f} s)  "
                  f"network-init TRE {r1['tre_mean_mm']:6.2f} mm ({r1['time_s']:5.1f} s)"
                  + (f"  Dice {r0['dice_mean']:.3f} / {r1['dice_mean']:.3f}" if "dice_mean" in r0 else ""),
                  flush=True)
            if args.exact_start and gt is not None:
                exact[(name, n)] = cached(f"{name}|exact|{n}|{settings}",
                                          lambda: run_case(fx, mv, p, q, "none", n, fl, ml, start=gt))
                print(f"{name:45s} N={n:3d}  exact-field start TRE {exact[(name, n)]['tre_mean_mm']:6.2f} mm", flush=True)
    if args.zero_only:
        return 0
    wb = None
    if args.wholebody:
        import SimpleITK as sitk

        t = time.perf_counter()
        s = synthetic_pair(7, 4.0)   # whole-body FOV 480 x 360 x 600 mm, resampled to a 2 mm grid (linear)

        def to2(img):
            size = [int(round(n * sp / 2.0)) for n, sp in zip(img.GetSize(), img.GetSpacing())]
            return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (2.0, 2.0, 2.0),
                                 img.GetDirection(), -1024.0, sitk.sitkFloat32)

        s.fixed, s.moving = to2(s.fixed), to2(s.moving)
        gen = time.perf_counter() - t
        fp, fq = s.landmarks
        r = run_case(s.fixed, s.moving, fp, fq, args.weights, 0)
        wb = {"size": list(s.fixed.GetSize()), "generate_s": round(gen, 1), **r}
        print(f"whole-body 2 mm {wb['size']}: affine + network alone {r['time_s']:.1f} s "
              f"(network stage {r['network_s']:.2f} s); timing only (phantom 7 is a training pair)", flush=True)

    lines = ["# Accuracy versus optimisation steps: network-initialised vs zero-initialised", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `python3 bench/steps/run.py "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs while measured: "
             "times are indicative only), torch CPU. Weights: `" + os.path.relpath(args.weights, ROOT) + "`.", "",
             "N = fine-level instance-optimisation iterations (coarse level 1.5 N); N = 0 is the network alone "
             "(zero-init column = affine alone). TRE = mean target registration error, mm (median in brackets).",
             "", "| case | N | identity TRE | zero-init TRE | network-init TRE | zero-init Dice | network-init Dice "
             "| zero-init s | network-init s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, n, r0, r1, ident in rows:
        lines.append(f"| {name} | {n} | {ident:.2f} | {r0['tre_mean_mm']:.2f} ({r0['tre_median_mm']:.2f}) | "
                     f"{r1['tre_mean_mm']:.2f} ({r1['tre_median_mm']:.2f}) | {_dice(r0)} | {_dice(r1)} | "
                     f"{r0['time_s']:.1f} | {r1['time_s']:.1f} |")
    lines += ["", "## Summary per case", "",
              "TRE mean mm / Dice. *zero-init best*: zero-init's lowest TRE over the N run (instance optimisation can "
              "over-fit intensity, so more steps are not always better). *steps to reach it*: the smallest N at which "
              "each start reaches that TRE. *same TRE in fewer steps*: for each zero-init N, the fewest network-init steps "
              "with a TRE at least as low (N→N*).", "",
              "| case | affine only | network alone | elastix | zero-init, N max | network-init, N max | "
              "zero-init best | steps to reach it: zero-init vs network-init | same TRE in fewer steps |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, *_ in cases:
        rs = sorted((n, r0, r1) for nm, n, r0, r1, _ in rows if nm == name)
        if not rs:
            continue
        nmax, z_end, n_end = rs[-1]
        n_best, z_best = min(((n, r0) for n, r0, _ in rs), key=lambda x: (x[1]["tre_mean_mm"], x[0]))
        first = next((n for n, _, r1 in rs if r1["tre_mean_mm"] <= z_best["tre_mean_mm"]), None)
        zero0 = next((r0 for n, r0, _ in rs if n == 0), None)
        net0 = next((r1 for n, _, r1 in rs if n == 0), None)
        e = elx.get(name)

        def cell(r):
            return f"{r['tre_mean_mm']:.2f} / {_dice(r)}" if r else "-"
        lines.append(f"| {name} | {cell(zero0)} | {cell(net0)} | {cell(e)} | {cell(z_end)} (N={nmax}) | "
                     f"{cell(n_end)} | {z_best['tre_mean_mm']:.2f} (N={n_best}) | {n_best} vs "
                     f"{first if first is not None else '> ' + str(nmax)} | {_steps_to_match(rs)} |")
    if exact:
        lines += ["", "## Starting from the exact field (a perfect network)", "",
                  "The synthetic pairs' exact field handed to instance optimisation as its start (`register(..., "
                  "start=...)`), against the two starts above: TRE mean mm at each N. N = 0 is the exact field "
                  "itself (only the working grid's interpolation error).", "",
                  "| case | N | zero-init | network-init | exact-field start |", "|---|---|---|---|---|"]
        for name, n, r0, r1, _ in rows:
            if (name, n) in exact:
                lines.append(f"| {name} | {n} | {r0['tre_mean_mm']:.2f} | {r1['tre_mean_mm']:.2f} | "
                             f"{exact[(name, n)]['tre_mean_mm']:.2f} |")
    if wb:
        lines += ["", f"Whole-body synthetic CT resampled to 2 mm ({wb['size'][0]}x{wb['size'][1]}x{wb['size'][2]} voxels): "
                  f"affine + network alone (`iterations=0`) {wb['time_s']:.1f} s in total, network stage "
                  f"{wb['network_s']:.2f} s (target < 20 s)."]
    png = Path(args.out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, elx, png, exact)
    lines += ["", f"Curves: `{png.name}` (TRE against N; elastix as a line, or as a note where it is off scale)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
