"""Accuracy benchmark: TotalRegistrator engine vs itk-elastix on real and synthetic CT pairs.

    python3 bench/accuracy/run.py                                   # all cases, identity + elastix + totalreg
    python3 bench/accuracy/run.py --methods elastix --cases lung,synth0
    python3 bench/accuracy/run.py --synth-spacing 3 --out bench/accuracy/RESULTS.md
    python3 bench/accuracy/run.py --methods elastix_affine,totalreg_network --cases lung,test_abd_101 \
        --out bench/out/network/RESULTS.md                         # issue 16: the network alone vs elastix's affine

Per case and method: TRE (mean, median; mm) on landmarks, Dice of the moving labels warped with the estimated
field (nearest neighbour) against the fixed labels, folding % (J <= 0, whole field) and SDlogJ (Learn2Reg
definition) of the field, and the registration wall time. Prints a markdown table and writes it (with the case
notes) to RESULTS.md, plus the details to results.json beside it.
All fields follow docs/CONTRACTS.md (fixed grid, LPS mm, fixed p <-> moving p + d(p)).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from cases import CASES, Case  # noqa: E402
from registration_core.metrics import dice, folding_percent, sdlogj, tre  # noqa: E402


# ------------------------------------------------------------------------------------------------- methods
def method_identity(fixed, moving, threads):
    d = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    d.CopyInformation(fixed)
    return d, {"time_s": 0.0}


def method_elastix(fixed, moving, threads):
    from elastix_baseline import elastix_register

    return elastix_register(fixed, moving, threads=threads)


def method_elastix_affine(fixed, moving, threads):
    from elastix_baseline import elastix_register

    return elastix_register(fixed, moving, threads=threads, bspline=False)


def _totalreg(fixed, moving, **overrides):
    """The engine (registration_core/engine) with its default config but ``overrides``: (field, info)."""
    from registration_core import RegistrationConfig, register

    t0 = time.perf_counter()
    res = register(fixed, moving, RegistrationConfig(**overrides))
    t = time.perf_counter() - t0
    rep = dict(res.report) if isinstance(res.report, dict) else {}
    return res.displacement, {"time_s": t, "report": rep}


def method_totalreg_network(fixed, moving, threads):
    """The engine's affine stage + the network alone (``iterations=0``: no instance optimisation)."""
    return _totalreg(fixed, moving, iterations=0)


def method_totalreg(fixed, moving, threads):
    return _totalreg(fixed, moving)


def method_convexadam(fixed, moving, threads):
    from convexadam_baseline import convexadam_register

    return convexadam_register(fixed, moving, threads=threads)


METHODS = {"identity": method_identity, "elastix_affine": method_elastix_affine, "elastix": method_elastix,
           "convexadam": method_convexadam, "totalreg_network": method_totalreg_network, "totalreg": method_totalreg}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_isolated(method, fixed, moving, threads):
    """Run one method in a forked child process and return (displacement, info); info gains ``peak_rss_bytes``:
    the child's peak resident memory above the bench process's memory at the fork (the method's own working
    memory, whatever library it uses). Where fork is unavailable, the method runs in this process (no memory)."""
    import pickle
    import resource

    if not hasattr(os, "fork"):
        return method(fixed, moving, threads)
    base = _rss_bytes()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run, send (field array, geometry, info) or the error, exit without cleanup
        code = 0
        try:
            disp, info = method(fixed, moving, threads)
            arr = sitk.GetArrayFromImage(disp)
            geo = (disp.GetOrigin(), disp.GetSpacing(), disp.GetDirection())
            payload = pickle.dumps(("ok", arr, geo, info, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            code = 1
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    msg = pickle.loads(data) if data else ("error", "the method's process died", "")
    if msg[0] != "ok":
        print(msg[2], file=sys.stderr)
        raise RuntimeError(msg[1])
    _, arr, geo, info, maxrss_kb = msg
    disp = sitk.GetImageFromArray(arr, isVector=True)
    disp.SetOrigin(geo[0])
    disp.SetSpacing(geo[1])
    disp.SetDirection(geo[2])
    info = dict(info)
    info["peak_rss_bytes"] = max(0, int(maxrss_kb) * 1024 - base)
    return disp, info


# ------------------------------------------------------------------------------------------------- scoring
def _warp_labels(labels: sitk.Image, disp: sitk.Image, ref: sitk.Image) -> sitk.Image:
    tx = sitk.DisplacementFieldTransform(sitk.Cast(disp, sitk.sitkVectorFloat64))
    return sitk.Resample(labels, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def evaluate(case: Case, disp: sitk.Image) -> dict:
    """Scores of one displacement field on one case (see module docstring)."""
    if disp.GetSize() != case.fixed.GetSize():
        raise ValueError(f"field size {disp.GetSize()} is not the fixed grid {case.fixed.GetSize()}")
    out: dict = {}
    if case.landmarks is not None:
        e = tre(disp, *case.landmarks)
        out.update(tre_mean=float(e.mean()), tre_median=float(np.median(e)), tre_p90=float(np.percentile(e, 90)),
                   tre_max=float(e.max()), n_landmarks=int(len(e)))
    if case.fixed_labels is not None and case.moving_labels is not None:
        warped = sitk.GetArrayFromImage(_warp_labels(case.moving_labels, disp, case.fixed))
        fl = sitk.GetArrayFromImage(case.fixed_labels)
        if case.mask is not None:
            m = sitk.GetArrayFromImage(case.mask).astype(bool)
            warped = np.where(m, warped, 0)
            fl = np.where(m, fl, 0)
        labels = case.dice_labels or [int(v) for v in np.unique(fl) if v != 0]
        d = dice(fl, warped, labels=labels)
        out["dice_mean"] = d.pop("mean")
        out["dice"] = {str(k): float(v) for k, v in d.items()}
    if case.gt_displacement is not None:
        err = np.linalg.norm(sitk.GetArrayFromImage(disp) - sitk.GetArrayFromImage(case.gt_displacement), axis=-1)
        m = sitk.GetArrayFromImage(case.fixed_labels).astype(bool) if case.fixed_labels is not None else None
        if case.mask is not None:
            mm = sitk.GetArrayFromImage(case.mask).astype(bool)
            m = mm if m is None else (m & mm)
        out["field_error_mean"] = float(err[m].mean() if m is not None and m.any() else err.mean())
    out["folding_percent"] = folding_percent(disp)
    out["sdlogj"] = sdlogj(disp)
    return out


def _fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float) and not np.isfinite(v):
        return "nan"
    return f"{v:.{nd}f}"


def table(rows: list[dict]) -> str:
    head = ("| case | method | TRE mean (mm) | TRE median (mm) | TRE p90 (mm) | Dice | field error (mm) | folding % "
            "| SDlogJ | time (s) | peak memory (GB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['method']} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        mem = r.get("peak_rss_bytes")
        lines.append(f"| {r['case']} | {r['method']} | {_fmt(r.get('tre_mean'))} | {_fmt(r.get('tre_median'))} | "
                     f"{_fmt(r.get('tre_p90'))} | {_fmt(r.get('dice_mean'), 3)} | {_fmt(r.get('field_error_mean'))} | "
                     f"{_fmt(r.get('folding_percent'), 3)} | {_fmt(r.get('sdlogj'), 3)} | {_fmt(r.get('time_s'), 1)} | "
                     f"{_fmt(mem / 1e9 if mem is not None else None)} |")
    return "\n".join(lines)


def network_bar_summary(rows: list[dict]) -> str:
    """Issue 16's first bar per case where both ran: the network alone (``totalreg_network``: the engine's affine +
    the network, no instance optimisation) at least 25 % below itk-elastix's affine stage (``elastix_affine``) in
    mean TRE; a table and a count line ('' if no case has both)."""
    by = {}
    for r in rows:
        if "error" not in r:
            by.setdefault(r["case_key"], {})[r["method"]] = r
    lines = ["| case | elastix affine TRE / Dice | network alone TRE / Dice / fold % | change | ≥ 25 % below |",
             "|---|---|---|---:|:-:|"]
    n = met = 0
    for key, m in by.items():
        a, t = m.get("elastix_affine"), m.get("totalreg_network")
        if not (a and t) or t.get("tre_mean") is None or a.get("tre_mean") is None:
            continue
        ok = t["tre_mean"] <= 0.75 * a["tre_mean"]
        n += 1
        met += ok
        lines.append(f"| {t['case']} | {_fmt(a['tre_mean'])} / {_fmt(a.get('dice_mean'), 3)} | "
                     f"{_fmt(t['tre_mean'])} / {_fmt(t.get('dice_mean'), 3)} / {_fmt(t['folding_percent'], 3)} | "
                     f"{100 * (t['tre_mean'] / a['tre_mean'] - 1):+.0f} % | {'yes' if ok else '**no**'} |")
    if not n:
        return ""
    lines += ["", f"Network alone at least 25 % below elastix's affine stage on {met} of {n} rows."]
    return "\n".join(lines)


def bar_summary(rows: list[dict]) -> str:
    """Issue 14's bar per case where totalreg, ConvexAdam and elastix all ran: TRE below ConvexAdam's, TRE at
    least 30 % below elastix's, Dice not below either's, folding < 0.1 %; a table and a count line ('' if none)."""
    by = {}
    for r in rows:
        if "error" not in r:
            by.setdefault(r["case_key"], {})[r["method"]] = r
    lines = ["| case | totalreg TRE / Dice / fold % / SDlogJ | ConvexAdam TRE / Dice / fold % | elastix TRE / Dice "
             "| TRE below ConvexAdam | TRE ≥ 30 % below elastix | Dice not below either | folding < 0.1 % |",
             "|---|---|---|---|:-:|:-:|:-:|:-:|"]
    counts = [0, 0, 0, 0]
    n = met = 0
    for key, m in by.items():
        t, c, e = m.get("totalreg"), m.get("convexadam"), m.get("elastix")
        if not (t and c and e) or t.get("tre_mean") is None:
            continue
        d_t, d_c, d_e = (x.get("dice_mean") for x in (t, c, e))
        checks = [t["tre_mean"] < c["tre_mean"], t["tre_mean"] <= 0.7 * e["tre_mean"],
                  d_t is None or (d_t >= (d_c if d_c is not None else -1) and d_t >= (d_e if d_e is not None else -1)),
                  t["folding_percent"] < 0.1]
        n += 1
        met += all(checks)
        counts = [k + bool(v) for k, v in zip(counts, checks)]
        lines.append(f"| {t['case']} | {_fmt(t['tre_mean'])} / {_fmt(d_t, 3)} / {_fmt(t['folding_percent'], 3)} / "
                     f"{_fmt(t.get('sdlogj'), 3)} | {_fmt(c['tre_mean'])} / {_fmt(d_c, 3)} / "
                     f"{_fmt(c['folding_percent'], 3)} | {_fmt(e['tre_mean'])} / {_fmt(d_e, 3)} | "
                     + " | ".join("yes" if v else "**no**" for v in checks) + " |")
    if not n:
        return ""
    lines.append("")
    lines.append(f"All four on {met} of {n} rows; TRE below ConvexAdam on {counts[0]}, ≥ 30 % below elastix on "
                 f"{counts[1]}, Dice not below either on {counts[2]}, folding < 0.1 % on {counts[3]}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="identity,elastix,convexadam,totalreg",
                    help="comma list of: " + ", ".join(METHODS))
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--synth-spacing", type=float, default=4.0, help="synthetic pair voxel size, mm")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for elastix (default: all)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--no-check", action="store_true", help="skip elastix's pure-translation convention check")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of results.json (beside --out) for (case, method) pairs not re-run now")
    ap.add_argument("--merge-json", action="append", default=[],
                    help="also merge the rows of this results.json (e.g. from a run elsewhere); repeatable")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip() and c.strip() != "none"]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    if "totalreg" in methods:
        try:
            from registration_core import register  # noqa: F401
        except ImportError as exc:
            print(f"[bench] engine not available ({exc}); running without totalreg", file=sys.stderr)
            methods.remove("totalreg")
    check = None
    if "elastix" in methods and not args.no_check and cases:
        from elastix_baseline import check_convention

        check = check_convention()
        print(f"[bench] elastix convention check (pure translation): mean |d - t| = {check:.3f} mm", flush=True)

    rows, notes = [], {}
    out = Path(args.out)
    json_path = out.parent / "results.json"
    base_rows = []   # rows merged from earlier runs (read once, before this run writes anything)
    if args.merge or args.merge_json:
        seen = set()
        for src in [Path(p) for p in args.merge_json] + ([json_path] if args.merge and json_path.exists() else []):
            for r in json.loads(src.read_text()):
                key = (r.get("case_key"), r.get("method"))
                if key not in seen:
                    seen.add(key)
                    base_rows.append(r)

    def write(rows, final):
        """Merge with earlier rows, render RESULTS.md and results.json (after every row, so nothing is lost)."""
        nonlocal check
        done = {(r["case_key"], r["method"]) for r in rows}
        old_rows = [r for r in base_rows if (r.get("case_key"), r.get("method")) not in done]
        order = list(CASES)
        meth_order = list(METHODS)
        rows = sorted(old_rows + rows, key=lambda r: (order.index(r["case_key"]) if r["case_key"] in order else 99,
                                                      meth_order.index(r["method"]) if r["method"] in meth_order
                                                      else 99))
        for r in old_rows:
            notes.setdefault(r["case"], r.get("note", ""))
        if check is None:
            check = next((r.get("elastix_check_mm") for r in old_rows if r.get("elastix_check_mm") is not None), None)
        md = table(rows)
        if final:
            print("\n" + md)
        header = [
            "# Accuracy benchmark (bench/accuracy/run.py)",
            "",
            (f"Run {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
             f"{os.cpu_count()} CPU cores (shared), no GPU unless stated in the engine report; "
             f"total {time.perf_counter() - t_start:.0f} s." if cases else
             f"Assembled {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from earlier runs' "
             f"results.json (--merge) on {platform.machine()}, {os.cpu_count()} shared CPU cores, no GPU."),
            "Times are registration wall times and depend on machine load (CPU runs shared with other jobs).",
            f"Command: `python3 bench/accuracy/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
            "",
            "Methods: `identity` = no registration (d = 0); `elastix` = itk-elastix affine + B-spline, default "
            "parameter maps, final grid 10 mm, all cores; `convexadam` = PyPI convexadam 0.2 defaults on a 1.5 mm "
            "isotropic grid over the fixed scan (convexadam_baseline.py); `totalreg` = this engine, "
            "`registration_core.register` with its default config; `elastix_affine` = elastix's default affine map "
            "alone; `totalreg_network` = the engine's affine stage + the network alone (`iterations=0`).",
            "Metrics: TRE = |p + d(p) − q| over the case's landmarks (mm); Dice = moving labels warped with the field "
            "(nearest neighbour) vs fixed labels, mean over the labels listed per case, scored where the moving scan "
            "is defined; field error = mean |d − d_GT| (mm) inside the labelled body where the ground truth field is "
            "known; folding % = voxels with J ≤ 0 over the whole field; SDlogJ = Learn2Reg definition "
            "(std log(clip(J + 3)), 2-voxel border cropped); time = registration wall time (s); peak memory = "
            "resident memory of the method's forked process above the bench process's at the fork (GB)."
            + (f" elastix displacement convention checked on a pure translation: mean error {check:.3f} mm."
               if check is not None else ""),
            "",
            md,
            "",
            *(["## Issue 14's bar: totalreg against both peers, per case", "", summ, ""] if (summ := bar_summary(rows))
              else []),
            *(["## Issue 16's first bar: the network alone against elastix's affine stage, per case", "", summ16, ""]
              if (summ16 := network_bar_summary(rows)) else []),
            "Cases:",
            *[f"- **{k}**: {v}" for k, v in notes.items()],
            "",
        ]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(header))
        json_path.write_text(json.dumps(rows, indent=1, default=str))
        if final:
            print(f"[bench] wrote {out}")
        return rows

    t_start = time.perf_counter()
    for cname in cases:
        t0 = time.perf_counter()
        factory = CASES[cname]
        case = factory(args.synth_spacing) if cname.startswith("synth") else factory()
        notes[case.name] = case.note
        print(f"[bench] case {case.name}: fixed {case.fixed.GetSize()} moving {case.moving.GetSize()} "
              f"(prepared in {time.perf_counter() - t0:.1f} s)", flush=True)
        for mname in methods:
            row = {"case": case.name, "case_key": cname, "method": mname, "note": case.note}
            if mname == "elastix" and check is not None:
                row["elastix_check_mm"] = check
            try:
                disp, info = run_isolated(METHODS[mname], case.fixed, case.moving, args.threads)
                row.update(evaluate(case, disp))
                row["time_s"] = float(info.get("time_s", float("nan")))
                row["peak_rss_bytes"] = info.get("peak_rss_bytes")
                if "report" in info:
                    row["report"] = info["report"]
            except Exception as exc:  # a failing method must not hide the others' numbers
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            write(rows, final=False)
    rows = write(rows, final=True)
    return 0 if not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
