"""End-to-end benchmark: from the current study's last instance to the results acknowledged by the destination.

A whole-body-sized synthetic patient (``python3 -m registration_core.evaluate make-wholebody``: current
510x510x498 at 0.8x0.8x1.0 mm, prior 480x480x339 at 0.85x0.85x1.25 mm) is written as two DICOM CT studies. The
prior is stored in a real Orthanc (the PACS) only; the node (``totalreg serve``, one worker, SQLite, quiet period
``--quiet`` s) is configured with that Orthanc as PACS (C-FIND + C-MOVE) and as destination (C-STORE). The current
study is sent to the node with dcmtk ``storescu``; the clock starts when storescu has the last acknowledgement
and stops when the node has every result instance acknowledged by Orthanc. Printed and written to
``bench/e2e/RESULTS.md``: sending, the quiet period, the job's stages (prior lookup + retrieval, DICOM read,
registration, DICOM write, sending), and the total.

Usage::

    python3 bench/e2e/run.py [--device cpu|cuda|auto] [--quiet 10] [--pair DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "e2e"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
STORESCU = "/usr/bin/storescu"


def write_studies(pair: Path, folder: Path):
    """The pair's NIfTI files as DICOM: prior (2023) and current (2024) study of one patient."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    from dicom_io.synthetic_series import write_ct_series

    common = dict(patient_id="E2E-0001", patient_name="Bench^Wholebody", birth_date="19580214")
    uids = generate_uid(), generate_uid()
    out = []
    for name, uid, date, acc in (("moving", uids[0], "20230105", "E2E-A1"), ("fixed", uids[1], "20240310", "E2E-A2")):
        img = sitk.ReadImage(str(pair / f"{name}.nii.gz"))
        files = write_ct_series(img, folder / name, study_uid=uid, study_date=date, accession_number=acc,
                                series_description="CT whole body", **common)
        out.append((uid, files))
    return out  # [(prior uid, files), (current uid, files)]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once; print and write the table. 0 when the results were delivered."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", type=float, default=10.0, help="the node's completion.quiet_seconds")
    ap.add_argument("--pair", type=Path, default=OUT / "pair")
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)

    import yaml

    from node.net import dimse
    from node.commands.demo import EmbeddedOrthanc, NodeProcess, free_port, node_yaml, wait_for_delivery
    from node.config import load_config

    if not (args.pair / "landmarks.csv").is_file():
        subprocess.run([sys.executable, "-m", "registration_core.evaluate", "make-wholebody", str(args.pair)],
                       check=True)
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=OUT.parent if OUT.parent.exists() else None))
    t0 = time.monotonic()
    (prior_uid, prior_files), (current_uid, current_files) = write_studies(args.pair, work / "input")
    print(f"e2e: DICOM written: prior {len(prior_files)}, current {len(current_files)} instances "
          f"({time.monotonic() - t0:.0f} s)", flush=True)
    node_port = free_port()
    orthanc = EmbeddedOrthanc(work / "orthanc", "TOTALREG", node_port).start()
    node = None
    try:
        dimse.store(dimse.Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port, name="orthanc"), "E2ESCU", prior_files)
        cfg = yaml.safe_load(node_yaml(work, node_port=node_port, orthanc=orthanc, iterations=None,
                                       device=args.device, quiet_s=args.quiet))
        cfg["destinations"] = [d for d in cfg["destinations"] if d["name"] == "orthanc"]
        cfg["rules"][0]["send_to"] = ["orthanc"]
        cfg_path = work / "node.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        node = NodeProcess(cfg_path, "TOTALREG", node_port, work / "node.log").start()
        t_send = time.monotonic()
        env = dict(os.environ, TCP_NODELAY="1")
        proc = subprocess.run([STORESCU, "-aet", "MODALITY", "-aec", "TOTALREG", "-xs", "-nh", "127.0.0.1",
                               str(node_port), *map(str, current_files)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {proc.stderr[-1000:]}")
        t_last = time.monotonic()
        last_wall = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        print(f"e2e: current study sent in {t_last - t_send:.1f} s; waiting ...", flush=True)
        db_url = load_config(cfg_path).node.database_url()
        res = wait_for_delivery(db_url, current_uid, args.timeout, proc=node.proc, log_path=node.log_path)
        sends_done = [s["finished_at"] for s in res["sends"] if s["finished_at"] is not None]
        t_done = max(sends_done) if sends_done else None
        total = (t_done - last_wall).total_seconds() if t_done else float("nan")
        job_start = (res["created_at"] - last_wall).total_seconds() if res["created_at"] else float("nan")
        send_s = (t_done - res["finished_at"]).total_seconds() if t_done and res["finished_at"] else float("nan")
        ok = res["state"] == "done" and all(s["state"] == "done" for s in res["sends"])
        timings = res["timings"]
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()
    rows = [("send the current study (storescu, 1 association)", t_last - t_send,
             f"{len(current_files)} instances"),
            ("last instance → job queued (quiet period)", job_start, f"quiet_seconds {args.quiet:g}")]
    for key, what in (("prior", "prior lookup: C-FIND + C-MOVE from Orthanc"), ("read", "DICOM read (both series)"),
                      ("register", "registration"), ("write", "DICOM write (DSR, rigid REG, registered series)")):
        if key in timings:
            rows.append((what, timings[key], ""))
    rows.append(("job done → every result acknowledged (dispatcher, C-STORE to Orthanc)", send_s, ""))
    rows.append(("**last instance → every result acknowledged by Orthanc**", total,
                 "delivered" if ok else f"NOT delivered: {res['reason']}"))
    md = "| step | seconds | note |\n|---|---:|---|\n" + "\n".join(f"| {a} | {b:.1f} | {c} |" for a, b, c in rows)
    print(md)
    print("job timings:", json.dumps(timings))
    RESULTS.write_text(
        "# End-to-end benchmark (bench/e2e/run.py)\n\n"
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `python3 bench/e2e/run.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`; {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), device {args.device}, Orthanc 1.10 as PACS and "
        f"destination on the same machine.\n\n{md}\n\njob stage timings (s): `{json.dumps(timings)}`\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
