"""Soak bench (issue 18): a node with a 2 GB spool limit receives and processes studies for ``--minutes`` (30) at
a rate that would fill the limit ``--fills`` (3) times over; retention keeps it under its high watermark.

What runs: ``totalreg serve`` (SQLite, fsync on, 1 receiver process, 2 workers (bulk jobs need not wait behind a registration), folder destination) with
``retention: {max_bytes: 2 GB, high_watermark: 90%, low_watermark: 70%, tick_s: 2}`` and two rules:

* ``bulk``: series described ``SOAK BULK`` — 40 slices of 512x512 int16 (~21 MB per study), one new patient per
  study, so the job ends ``no_prior`` at once (no registration: 2 shared CPU cores cannot register 6 GB in 30 min);
* ``small``: series described ``SOAK SMALL`` — a tiny synthetic prior + current pair of one patient (30x25x20 voxels
  at 8 mm) every ``--pair-every`` bulk studies, registered on the CPU (10 iterations) and sent to the folder
  destination: the path that has sends.

Sending: dcmtk ``storescu`` (one association per study), paced to ``fills x max_bytes / minutes``. Bulk studies are
one template whose UIDs are rewritten in place (same lengths) per study. A monitor samples every 5 s: the bytes of
the spool and the results folders on disk (walked; the node itself never walks), the node's status file.

At the end: sending stops, the queue drains, the node is stopped (SIGTERM), ``totalreg check`` walks index and
disk; the table: GB received, GB purged, peak spool bytes, jobs done/failed, sends failed, check result.

    nice -n 5 python3 bench/soak/run.py                 # 30 min, writes bench/soak/RESULTS.md
    python3 bench/soak/run.py --minutes 3 --no-write    # a quick look
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

STORESCU = "/usr/bin/storescu"
SLICES = 40
GB = 1e9


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ test data

UID_ROOT = "1.2.826.0.1.3680043.10.1561.9"
MARK = 1000000  # the 7-digit counter in every UID of the template (rewritten per study)


def bulk_template(folder: Path) -> list[bytes]:
    """The bulk study's files as bytes: 40 slices 512x512 int16, UIDs ``<root>.<kind>.1000000[.<slice>]`` and
    PatientID ``SOAK1000000``, so a study's counter can be replaced in place."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    out = []
    for i in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = f"{UID_ROOT}.3.{MARK}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName, ds.PatientID = "SOAK^BULK", f"SOAK{MARK}"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}.1.{MARK}", f"{UID_ROOT}.2.{MARK}"
        ds.FrameOfReferenceUID = f"{UID_ROOT}.4.{MARK}"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber, ds.StudyID = "SOAK", "1"
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "CT", "SOAK BULK", 1, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness, ds.PixelSpacing = "5", ["0.7", "0.7"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-179.2", "-179.2", str(-5.0 * i)]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = rng.integers(0, 2000, size=(512, 512), dtype=np.int16).tobytes()
        p = folder / f"t{i:02d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p.read_bytes())
    return out


def write_bulk(template: list[bytes], k: int, folder: Path) -> int:
    """Study number ``k`` (``MARK < k < 10 * MARK``) into ``folder``; returns its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    old, new = str(MARK).encode(), str(k).encode()
    n = 0
    for i, data in enumerate(template):
        b = data.replace(old, new)
        (folder / f"{i:02d}.dcm").write_bytes(b)
        n += len(b)
    return n


class PairMaker:
    """Tiny prior + current studies of one patient (synthetic, 8 mm), written with new UIDs per pair."""

    def __init__(self):
        from node.commands.demo import synthetic_pair
        self.current, self.prior = synthetic_pair(8.0, 3, realistic=False, fov_mm=(240.0, 200.0, 160.0))

    def write(self, k: int, folder: Path) -> tuple[list[Path], list[Path]]:
        """(prior files, current files) of pair ``k``."""
        from dicom_io.synthetic_series import write_ct_series
        pid = f"SOAKPAIR{k}"
        prior = write_ct_series(self.prior, folder / "prior", patient_id=pid, patient_name="SOAK^PAIR",
                                study_date="20250101", series_description="SOAK SMALL prior")
        cur = write_ct_series(self.current, folder / "current", patient_id=pid, patient_name="SOAK^PAIR",
                              study_date="20260101", series_description="SOAK SMALL current")
        return prior, cur


# ------------------------------------------------------------------------------------------------ the node

def node_yaml(work: Path, port: int, max_bytes: str) -> Path:
    """The soak node's configuration."""
    data = work / "var"
    cfg = f"""\
node:
  ae_title: TOTALREG
  host: 127.0.0.1
  port: {port}
  data_dir: {data}
  fsync: true
  receiver_processes: 1
  min_free_disk_mb: 64
completion: {{quiet_seconds: 3, max_wait_seconds: 600}}
jobs: {{workers: 2, lease_s: 300}}
destinations:
  - {{name: out, kind: folder, path: {work / 'out'}}}
rules:
  - name: small
    match: {{SeriesDescription: "SOAK SMALL"}}
    prior: {{search_pacs: false}}
    registration: {{device: cpu, iterations: 10}}
    outputs: [dsr, rigid_reg, registered_series]
    send_to: [out]
  - name: bulk
    match: {{SeriesDescription: "SOAK BULK"}}
    prior: {{search_pacs: false}}
    send_to: [out]
retention:
  max_bytes: {max_bytes}
  high_watermark: "90%"
  low_watermark: "70%"
  tick_s: 2
web: {{enabled: false}}
logging: {{level: WARNING}}
"""
    path = work / "node.yaml"
    path.write_text(cfg)
    return path


def start_node(config: Path, work: Path) -> subprocess.Popen:
    """`totalreg serve` in the background; returns once it listens."""
    log = (work / "node.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
    end = time.monotonic() + 180
    while "listening on" not in (work / "node.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError((work / "node.log").read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return proc


def storescu(port: int, files: list[Path]) -> bool:
    """Send ``files`` in one association; True when storescu exits 0."""
    r = subprocess.run([STORESCU, "-aet", "SOAKSCU", "-aec", "TOTALREG", "-ta", "30", "-td", "120", "127.0.0.1",
                        str(port), *map(str, files)], capture_output=True, text=True, timeout=600)
    return r.returncode == 0


def disk_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (walked)."""
    from node.retention.usage import folder_bytes
    return folder_bytes(folder)


# ------------------------------------------------------------------------------------------------ the run

class Monitor(threading.Thread):
    """Every 5 s: spool and results bytes on disk (walked), the node's retention status."""

    def __init__(self, data: Path, out_csv: Path):
        super().__init__(daemon=True)
        self.data, self.csv = data, out_csv.open("w")
        self.csv.write("t_s,spool_bytes,results_bytes,node_bytes_index,headroom\n")
        self.stop = threading.Event()
        self.peak_spool = self.peak_total = 0
        self.t0 = time.monotonic()

    def sample(self) -> None:
        sp = disk_bytes(self.data / "spool")
        rs = disk_bytes(self.data / "results")
        self.peak_spool, self.peak_total = max(self.peak_spool, sp), max(self.peak_total, sp + rs)
        st = {}
        try:
            st = json.loads((self.data / "retention" / "status.json").read_text())
        except (OSError, ValueError):
            pass
        self.csv.write(f"{time.monotonic() - self.t0:.0f},{sp},{rs},{st.get('usage', {}).get('node_bytes', '')},"
                       f"{st.get('headroom', '')}\n")
        self.csv.flush()

    def run(self) -> None:
        while not self.stop.wait(5.0):
            self.sample()


def db_summary(config: Path) -> dict:
    """Jobs, sends and purges from the node's database after the run."""
    from sqlalchemy import func, select

    from node.config import load_config
    from node.store.db import Event, Job, Send, open_database
    cfg = load_config(config)
    db = open_database(cfg)
    try:
        with db.session() as s:
            jobs = {f"{st}/{oc}": n for st, oc, n in s.execute(
                select(Job.state, Job.outcome, func.count(Job.id)).group_by(Job.state, Job.outcome)).all()}
            sends = dict(s.execute(select(Send.state, func.count(Send.id)).group_by(Send.state)).all())
            errors = [e for (e,) in s.execute(select(Job.error).where(Job.state.in_(("failed", "dead"))))]
            msgs = list(s.scalars(select(Event.message).where(Event.kind == "retention",
                                                             Event.message.like("purge:%"))))
            send_errors = list(s.scalars(select(Send.error).where(Send.state == "dead")))
    finally:
        db.dispose()
    purged = inst = 0
    for m in msgs:
        g = re.search(r"deleted (\d+) bytes", m)
        purged += int(g.group(1)) if g else 0
        g = re.search(r"\((\d+) instances", m)
        inst += int(g.group(1)) if g else 0
    return dict(jobs=jobs, sends=sends, job_errors=errors[:10], send_errors=send_errors[:10], purges=len(msgs),
                purged_bytes=purged, purged_instances=inst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fills", type=float, default=3.6, help="bytes sent = fills x max_bytes")
    ap.add_argument("--max-bytes", default="2 GB")
    ap.add_argument("--pair-every", type=int, default=12, help="a registered pair every N bulk studies")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "soak"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from node.config import parse_size

    max_bytes = parse_size(args.max_bytes)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    config = node_yaml(work, port, args.max_bytes)
    template = bulk_template(work / "template")
    pairs = PairMaker()
    study_bytes = sum(map(len, template))
    rate = args.fills * max_bytes / (args.minutes * 60)  # bytes/s
    started = _dt.datetime.now(_dt.timezone.utc)
    print(f"soak: {args.minutes:g} min, {rate / 1e6:.2f} MB/s ({args.fills:g} x {max_bytes / GB:.1f} GB), "
          f"bulk study {study_bytes / 1e6:.1f} MB, a pair every {args.pair_every} studies; work {work}", flush=True)
    proc = start_node(config, work)
    mon = Monitor(work / "var", work / "samples.csv")
    mon.start()
    sent_bytes = sent_studies = failed_assoc = n_pairs = 0
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    k = MARK + 1
    try:
        while time.monotonic() < end:
            folder = work / "send" / str(k)
            n = write_bulk(template, k, folder)
            if storescu(port, sorted(folder.glob("*.dcm"))):
                sent_bytes += n
                sent_studies += 1
            else:
                failed_assoc += 1
            shutil.rmtree(folder, ignore_errors=True)
            if (k - MARK) % args.pair_every == 0:
                pf = work / "send" / f"pair{k}"
                prior, cur = pairs.write(k, pf)
                ok = storescu(port, prior) and storescu(port, cur)
                failed_assoc += 0 if ok else 1
                n_pairs += ok
                sent_bytes += sum(p.stat().st_size for p in prior + cur) if ok else 0
                shutil.rmtree(pf, ignore_errors=True)
            k += 1
            # pace: bytes sent so far should match the target rate
            ahead = sent_bytes / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, end - time.monotonic())))
            if (k - MARK) % 50 == 0:
                print(f"  {time.monotonic() - t0:6.0f} s: {sent_bytes / GB:.2f} GB sent ({sent_studies} studies, "
                      f"{n_pairs} pairs), peak spool on disk {mon.peak_spool / GB:.3f} GB", flush=True)
        send_s = time.monotonic() - t0
        # drain: every job and send finished
        from sqlalchemy import func, select

        from node.config import load_config
        from node.store.db import Job, Send, Study, open_database
        db = open_database(load_config(config))
        drain_end = time.monotonic() + 900
        while time.monotonic() < drain_end:
            with db.session() as s:
                busy = s.scalar(select(func.count(Job.id)).where(Job.state.in_(("queued", "running")))) + \
                    s.scalar(select(func.count(Send.id)).where(Send.state.in_(("queued", "sending"))))
                studies_receiving = s.scalar(select(func.count(Study.id)).where(Study.state == "receiving"))
            if not busy and not studies_receiving:
                break
            time.sleep(2)
        db.dispose()
        time.sleep(12)  # two more retention passes
        mon.sample()
    finally:
        mon.stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    chk = subprocess.run([sys.executable, "-m", "node.cli", "check", "--config", str(config)], capture_output=True,
                         text=True)
    summ = db_summary(config)
    jobs_done = sum(v for key, v in summ["jobs"].items() if key.startswith("done/"))
    jobs_failed = sum(v for key, v in summ["jobs"].items() if key.startswith(("failed/", "dead/")))
    sends_failed = summ["sends"].get("dead", 0)
    high = 0.9 * max_bytes
    rows = [("GB sent (received, acknowledged)", f"{sent_bytes / GB:.2f} in {send_s / 60:.1f} min "
             f"({sent_studies} bulk studies, {n_pairs} registered pairs; {failed_assoc} failed associations)"),
            ("GB purged (purge events)", f"{summ['purged_bytes'] / GB:.2f} ({summ['purges']} purges, "
                                         f"{summ['purged_instances']} instances)"),
            ("spool limit / high watermark", f"{max_bytes / GB:.2f} / {high / GB:.2f} GB"),
            ("peak spool bytes on disk (walked every 5 s)", f"{mon.peak_spool} ({mon.peak_spool / GB:.3f} GB); "
                                                            f"spool + results {mon.peak_total / GB:.3f} GB"),
            ("under the high watermark", "yes" if mon.peak_total < high else "NO"),
            ("jobs done / failed", f"{jobs_done} / {jobs_failed} ({', '.join(f'{k} {v}' for k, v in sorted(summ['jobs'].items()))})"),
            ("sends done / failed", f"{summ['sends'].get('done', 0)} / {sends_failed}"),
            ("index/disk check (totalreg check)", ("clean" if chk.returncode == 0 else "MISMATCH") + ": "
             + chk.stdout.strip().splitlines()[0] if chk.stdout.strip() else chk.stderr[-300:])]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if summ["job_errors"] or summ["send_errors"]:
        print("job errors:", summ["job_errors"], "send errors:", summ["send_errors"])
    print(chk.stdout)
    if not args.no_write:
        cmd = "nice -n 5 python3 bench/soak/run.py" + ("" if argv is None else " " + " ".join(argv))
        load = os.getloadavg()
        (ROOT / "bench" / "soak" / "RESULTS.md").write_text(f"""# Soak run (issue 18)

`{cmd}` — started {started:%Y-%m-%d %H:%M} UTC on the shared 2-core machine (load average at the end
{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), commit {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
cwd=ROOT, capture_output=True, text=True).stdout.strip()}.

Node: `totalreg serve`, SQLite, fsync on, 1 receiver process, 2 workers; `retention: {{max_bytes: {args.max_bytes},
high_watermark: 90%, low_watermark: 70%, tick_s: 2}}` (no age limits: the watermarks do all the work). Bulk studies
(40 x 512x512 int16, {study_bytes / 1e6:.1f} MB, a new patient each) route to a rule whose jobs end `no_prior` at once
— registering {sent_bytes / GB:.1f} GB on 2 shared cores in {args.minutes:g} min is not possible — and every
{args.pair_every}th study is followed by a tiny prior + current pair (30x25x20 voxels, 8 mm) that is registered on the
CPU and sent to a folder destination. Samples every 5 s in `bench/out/soak/samples.csv` (not committed).

{table}

```
{chk.stdout.strip()}
```
""")
    ok = chk.returncode == 0 and mon.peak_total < high and jobs_failed == 0 and sends_failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
