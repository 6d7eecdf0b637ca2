"""Engine settings against the validation split: totalreg alone, one or more config variants, one table.

    python3 bench/accuracy/tune.py --cases val_abd_1,val_chest_1 \
        --variant base= --variant fine='{"control_factor": 1.5}'

Each variant is ``name=JSON`` (keyword overrides of :class:`registration_core.RegistrationConfig`; lists become
tuples). Every (case, variant) runs in this process one after the other; rows are appended to
``bench/out/tune/rows.jsonl`` (so a long sweep can be read while it runs) and a table of TRE mean / p90, Dice,
folding %, SDlogJ and seconds per row plus each variant's mean over the cases is printed at the end.
Use it on the validation cases only: the test split (``test_*``) and the lung pair are for bench/accuracy/run.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from cases import CASES  # noqa: E402
from run import evaluate  # noqa: E402

OUT = ROOT / "bench" / "out" / "tune"


def _overrides(text: str) -> dict:
    """JSON object of config overrides; lists (also nested) become tuples."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v
    return {k: tup(v) for k, v in (json.loads(text) if text.strip() else {}).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", required=True, help="comma list of validation cases, e.g. val_abd_1,val_chest_2")
    ap.add_argument("--variant", action="append", required=True, help="name=JSON overrides (repeatable)")
    args = ap.parse_args(argv)
    from registration_core import RegistrationConfig, register

    variants = []
    for v in args.variant:
        name, _, text = v.partition("=")
        variants.append((name, _overrides(text)))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}")
        if c.startswith("test_") or c == "lung":
            print(f"[tune] warning: {c} is not a validation case", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in cases:
        case = CASES[c]()
        for name, ov in variants:
            t0 = time.perf_counter()
            res = register(case.fixed, case.moving, RegistrationConfig(**ov))
            secs = time.perf_counter() - t0
            row = {"case": c, "variant": name, "overrides": {k: v for k, v in ov.items()}, "time_s": secs,
                   **evaluate(case, res.displacement)}
            rows.append(row)
            with open(OUT / "rows.jsonl", "a") as fh:
                fh.write(json.dumps(row, default=list) + "\n")
            print(f"[tune] {c:14s} {name:12s} TRE {row.get('tre_mean', float('nan')):.3f} "
                  f"p90 {row.get('tre_p90', float('nan')):.2f} Dice {row.get('dice_mean', float('nan')):.3f} "
                  f"fold {row['folding_percent']:.3f} % {secs:.0f} s", flush=True)
    print("\n| variant | case | TRE mean | TRE p90 | Dice | folding % | SDlogJ | s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['case']} | {r.get('tre_mean', float('nan')):.3f} | {r.get('tre_p90', float('nan')):.2f} "
              f"| {r.get('dice_mean', float('nan')):.3f} | {r['folding_percent']:.3f} | {r['sdlogj']:.3f} | {r['time_s']:.0f} |")
    print("\n| variant | mean TRE over cases | mean Dice | max folding % | total s |\n|---|---:|---:|---:|---:|")
    for name, _ in variants:
        rs = [r for r in rows if r["variant"] == name]
        print(f"| {name} | {sum(r.get('tre_mean', 0) for r in rs) / len(rs):.3f} "
              f"| {sum(r.get('dice_mean', 0) for r in rs) / len(rs):.3f} "
              f"| {max(r['folding_percent'] for r in rs):.3f} | {sum(r['time_s'] for r in rs):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
