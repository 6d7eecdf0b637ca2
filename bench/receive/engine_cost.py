"""One registration on CPU at clinical size, for the sizing figures: wall s, CPU s (user+sys), peak RSS.

Synthetic whole-body pair (registration_core.synthetic.make_longitudinal_pair), fixed grid 1.5 mm over
480 x 360 x 600 mm (about 30 M voxels), engine defaults (device cpu). Prints one JSON line. Not part of the test run.

    python3 bench/receive/engine_cost.py [--spacing 1.5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time


def main() -> int:
    """Run one pair and print {"wall_s", "cpu_s", "peak_rss_gb", "voxels", "report"}."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--spacing", type=float, default=1.5)
    args = ap.parse_args()
    from registration_core import RegistrationConfig, register
    from registration_core.synthetic import make_longitudinal_pair

    pair = make_longitudinal_pair(0, spacing=args.spacing)
    fixed, moving = pair.fixed, pair.moving
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = register(fixed, moving, RegistrationConfig(device="cpu"))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {"wall_s": round(wall, 1), "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1),
           "peak_rss_gb": round(r1.ru_maxrss / 2**20, 2), "fixed_size": list(fixed.GetSize()),
           "moving_size": list(moving.GetSize()), "load1": os.getloadavg()[0],
           "report": {k: v for k, v in res.report.items() if k in ("times", "device", "torch_threads",
                                                                     "working_spacing", "peak_memory")}}
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
