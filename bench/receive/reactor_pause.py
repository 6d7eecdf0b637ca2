"""pynetdicom's reactor pause under a busy process: C-ECHO round trips lost with and without node.net.reactor_pause.

    python3 bench/receive/reactor_pause.py [--echoes 300] [--burners 3] [--modes poll,wake,fix]

One in-process C-ECHO SCP and one SCU association; ``--burners`` Python threads spin to compete for the GIL (as
a registration, the console and the listener do in the node's process). Per mode, a fresh process:

- ``poll``: pynetdicom 3.0 as shipped;
- ``wake``: with the listener's event-driven reactors (``node.receive.reactor_wakeup``);
- ``fix``: ``wake`` plus ``node.net.reactor_pause`` (what the node runs).

A lost round trip is one whose response the SCU's own reactor took ("Received unexpected C-ECHO service
message"): the SCU waits out the DIMSE timeout (2 s here) and aborts; the next echo re-associates. Prints a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _one(mode: str, echoes: int, burners: int) -> dict:
    """Run ``echoes`` C-ECHOs in this process under ``mode``; returns the counts."""
    sys.path.insert(0, str(ROOT))
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from node.net import reactor_pause
    from node.receive import reactor_wakeup
    if mode in ("wake", "fix"):
        reactor_wakeup.install()
    if mode == "fix":
        reactor_pause.install()
    unexpected = []

    class _Count(logging.Handler):
        def emit(self, record):
            if "unexpected" in record.getMessage():
                unexpected.append(record.getMessage())
    logging.getLogger("pynetdicom").addHandler(_Count())
    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    stop = threading.Event()

    def burn():
        x = 0
        while not stop.is_set():
            x += 1
    for _ in range(burners):
        threading.Thread(target=burn, daemon=True).start()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.dimse_timeout = 2
    failed, t0 = 0, time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    for _ in range(echoes):
        if not assoc.is_established:
            failed += 1
            assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
            continue
        status = assoc.send_c_echo()
        if not status or status.Status != 0:
            failed += 1
    assoc.release()
    stop.set()
    server.shutdown()
    return {"mode": mode, "echoes": echoes, "failed": failed, "unexpected": len(unexpected),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--echoes", type=int, default=300)
    ap.add_argument("--burners", type=int, default=3)
    ap.add_argument("--modes", default="poll,wake,fix")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one, args.echoes, args.burners)))
        return 0
    rows = []
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--echoes", str(args.echoes),
                              "--burners", str(args.burners)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"C-ECHO round trips on one association, {args.burners} GIL-competing threads, DIMSE timeout 2 s\n")
    print("| mode | echoes | failed (incl. re-associations) | responses taken by the SCU's reactor | wall s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['echoes']} | {r['failed']} | {r['unexpected']} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
