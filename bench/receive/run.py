"""Receive benchmark: how fast does a DICOM listener take in a CT study? node vs dcmtk storescp vs Orthanc.

For each instance count (default 500 and 5,000 CT images of 512x512 int16, Explicit VR Little Endian, generated
once with pydicom into ``bench/out/receive_cache``) and each concurrency (1, 4, 8 simultaneous associations, one
dcmtk ``storescu`` process each, files split evenly), every server is started fresh on a free loopback port with
an empty storage folder on local disk, the files are sent, and the run records:

- instances/s and MB/s (file bytes sent / wall seconds from the first storescu start to the last exit),
- CPU seconds (user+sys) of the server's process tree, read from /proc (children that exited included),
- peak RSS of the server's process tree (sampled from /proc every 50 ms),
- that every instance arrived (files on disk / Orthanc's instance count / node spool files) — a run where the
  server lost or refused instances is marked, not counted as a pass.

Servers:
- ``node``: ``totalreg serve --config <tmp>/node.yaml`` (fsync on, quiet period one hour so no job starts,
  no workers, web console on a free port) — the node's receiver writing to its spool and indexing in SQLite.
- ``storescp``: ``/usr/bin/storescp --fork -od DIR`` (one process per association; no fsync; dcmtk sets
  TCP_NODELAY by default).
- ``orthanc``: ``/usr/sbin/Orthanc`` with a temporary storage and index folder (SQLite, default settings:
  SyncStorageArea true, 4 DICOM threads).

Usage::

    python3 bench/receive/run.py                       # 500 and 5000 instances, 1/4/8 associations, all servers
    python3 bench/receive/run.py --counts 500 --servers storescp orthanc
    python3 bench/receive/run.py --no-write            # print the table only, do not rewrite RESULTS.md

The markdown table is printed and written to ``bench/receive/RESULTS.md`` together with the machine (nproc,
free -g) and the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out"
CACHE = OUT / "receive_cache"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's app of the same name
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
INSTANCES_PER_SERIES = 250


# ------------------------------------------------------------------------------------------------ test data

def generate(n: int, cache: Path = CACHE) -> list[Path]:
    """Make (once) ``n`` CT Image Storage files, 512x512 int16, in series of 250 slices; return their paths.

    Files are ``cache/<i:05d>.dcm``; existing files are kept, so a later larger run only adds the missing ones.
    Geometry: 0.7 mm pixels, 1 mm slices, LPS identity orientation; pixel values are random HU in [-1024, 1500].
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"{i:05d}.dcm" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    rng = np.random.default_rng(7)
    pixels = (rng.integers(-1024, 1500, size=(512, 512), dtype=np.int16) + 1024).astype(np.int16)
    study_uids: dict[int, str] = {}
    series_uids: dict[int, str] = {}
    root = "1.2.826.0.1.3680043.10.1561.7."  # a fixed prefix keeps the cache reproducible in shape
    for i in missing:
        s = i // INSTANCES_PER_SERIES
        study_uids.setdefault(s, f"{root}1.{s}")
        series_uids.setdefault(s, f"{root}2.{s}")
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = f"{root}3.{s}.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.PatientName = f"BENCH^RECEIVE{s:03d}"
        ds.PatientID = f"BENCH{s:03d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uids[s]
        ds.SeriesInstanceUID = series_uids[s]
        ds.FrameOfReferenceUID = f"{root}4.{s}"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = f"ACC{s:05d}"
        ds.StudyID = str(s)
        ds.Modality = "CT"
        ds.Manufacturer = "bench"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i % INSTANCES_PER_SERIES + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "1"
        ds.KVP = "120"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-179.2", "-179.2", str(-float(i % INSTANCES_PER_SERIES))]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = pixels.tobytes()
        tmp = paths[i].with_suffix(".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.rename(paths[i])
    return paths


# ------------------------------------------------------------------------------------------------ /proc sampling

def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children: no scan of all of /proc)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime+cutime+cstime of one process in seconds (cutime/cstime: its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of one process in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree: the root incl. reaped children, plus living descendants."""
    tree = process_tree(pid)
    return sum(cpu_seconds(p) for p in tree)


# ------------------------------------------------------------------------------------------------ servers

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until 127.0.0.1:port accepts connections; raise if the process dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f} s")


@dataclass
class Server:
    """A running listener: its process, DICOM port and AE title, and how to count what it stored."""

    name: str
    proc: subprocess.Popen
    port: int
    ae: str
    workdir: Path
    count: callable = field(repr=False, default=None)
    log: Path | None = None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 20 s) and its process group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _count_files(folder: Path, suffix: str | None = None) -> int:
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(1 for f in files if suffix is None or f.endswith(suffix))
    return n


def start_storescp(work: Path, nodelay: bool = False) -> Server:
    """dcmtk storescp, one forked process per association, writing files under work/store.

    dcmtk 3.6.7 as built by Debian leaves Nagle's algorithm on unless the environment has TCP_NODELAY=1.
    """
    store = work / "store"
    store.mkdir()
    port = free_port()
    log = work / "storescp.log"
    env = _env(nodelay)
    proc = subprocess.Popen([STORESCP, "--fork", "-aet", "STORESCP", "-od", str(store), str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    wait_port(port, proc)
    return Server("storescp+nodelay" if nodelay else "storescp", proc, port, "STORESCP", work,
                  count=lambda: _count_files(store), log=log)


def _env(nodelay: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def start_orthanc(work: Path, nodelay: bool = False) -> Server:
    """Orthanc 1.10 with temp storage and SQLite index; counts instances through its REST API."""
    port, http = free_port(), free_port()
    cfg = {
        "Name": "bench", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
        "StorageCompression": False, "Plugins": [],
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    log = work / "orthanc.log"
    proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=_env(nodelay))
    wait_port(port, proc)
    wait_port(http, proc)

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=30) as r:
            return int(json.load(r)["CountInstances"])

    return Server("orthanc+nodelay" if nodelay else "orthanc", proc, port, "ORTHANC", work, count=count, log=log)


def start_node(work: Path) -> Server:
    """`totalreg serve` with fsync on, data dir in work/, quiet period 1 h (no job runs), no workers."""
    port, web = free_port(), free_port()
    data = work / "var"
    cfg = f"""\
node:
  ae_title: TOTALREG
  host: 127.0.0.1
  port: {port}
  data_dir: {data}
  fsync: true
  max_associations: 16
  min_free_disk_mb: 64
completion:
  quiet_seconds: 3600
  max_wait_seconds: 7200
jobs:
  workers: 0
destinations:
  - name: local
    kind: folder
    path: {work / 'results'}
rules:
  - name: ct-followup
    send_to: [local]
    prior:
      search_pacs: false
web:
  host: 127.0.0.1
  port: {web}
  admin_password: bench-only-password
logging:
  level: WARNING
"""
    (work / "node.yaml").write_text(cfg)
    log = work / "node.log"
    exe = shutil.which("totalreg") or sys.executable
    cmd = [exe, "serve", "--config", str(work / "node.yaml")] if exe != sys.executable else \
        [sys.executable, "-m", "node.cli", "serve", "--config", str(work / "node.yaml")]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=work)
    wait_port(port, proc, timeout=120)
    # the port accepts connections as soon as it is bound (the backlog queues them); the node is ready (receiver
    # processes started, console up) when `totalreg serve` prints its "listening" line
    end = time.monotonic() + 120
    while "listening on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"the node did not become ready: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return Server("node", proc, port, "TOTALREG", work, count=lambda: _count_files(data / "spool", ".dcm"), log=log)


STARTERS = {"node": start_node, "storescp": start_storescp,
            "storescp+nodelay": lambda w: start_storescp(w, nodelay=True),
            "orthanc": start_orthanc, "orthanc+nodelay": lambda w: start_orthanc(w, nodelay=True)}


# ------------------------------------------------------------------------------------------------ one run

@dataclass
class Result:
    """One (server, instance count, concurrency) measurement."""

    server: str
    n: int
    conc: int
    wall_s: float
    inst_per_s: float
    mb_per_s: float
    cpu_s: float
    peak_rss_mb: float
    received: int
    failed_sends: int
    note: str = ""
    load1: float = float("nan")  # 1-minute load average at the end of the run (other work on the machine)

    @property
    def ok(self) -> bool:
        """All instances stored and every storescu exited 0."""
        return self.received == self.n and self.failed_sends == 0


def send(server: Server, files: list[Path], conc: int, work: Path) -> tuple[float, int, float]:
    """Send ``files`` over ``conc`` parallel storescu associations; return (wall s, failed procs, peak RSS).

    The clients run with TCP_NODELAY=1 (as a PACS sending bulk data would); without it dcmtk's storescu waits
    ~40 ms per instance for delayed ACKs, which would measure the client, not the server.
    """
    env = _env(True)
    chunks = [files[i::conc] for i in range(conc)]
    procs = []
    peak = 0
    t0 = time.monotonic()
    for k, chunk in enumerate(chunks):
        log = (work / f"storescu{k}.log").open("w")
        procs.append(subprocess.Popen(
            [STORESCU, "-aet", "BENCHSCU", "-aec", server.ae, "-xs", "-nh", "127.0.0.1", str(server.port),
             *map(str, chunk)], stdout=log, stderr=subprocess.STDOUT, env=env))
    while any(p.poll() is None for p in procs):
        peak = max(peak, sum(rss_bytes(p) for p in process_tree(server.proc.pid)))
        time.sleep(0.2)  # light sampling: the monitor shares the 2 cores with the server and the clients
    wall = time.monotonic() - t0
    failed = sum(1 for p in procs if p.returncode != 0)
    return wall, failed, peak


def measure(name: str, files: list[Path], conc: int, tmp_root: Path) -> Result:
    """Start a fresh server, send, count, stop; one Result."""
    work = Path(tempfile.mkdtemp(prefix=f"recv-{name}-{len(files)}-{conc}-", dir=tmp_root))
    server = STARTERS[name](work)
    try:
        time.sleep(0.5)  # let start-up work settle before the CPU baseline
        cpu0 = tree_cpu(server.proc.pid)
        wall, failed, peak = send(server, files, conc, work)
        cpu1 = tree_cpu(server.proc.pid)
        received = -1
        for _ in range(20):  # storescp's forked children and Orthanc's index may lag a moment
            received = server.count()
            if received >= len(files):
                break
            time.sleep(0.5)
        nbytes = sum(f.stat().st_size for f in files)
        note = "" if received == len(files) and failed == 0 else \
            f"{len(files) - received} missing, {failed} storescu failed (logs in {work})"
        return Result(name, len(files), conc, wall, len(files) / wall, nbytes / wall / 1e6, cpu1 - cpu0,
                      peak / 2**20, received, failed, note, os.getloadavg()[0])
    finally:
        server.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ report

def table(results: list[Result]) -> str:
    """Markdown table: one row per (server, instances, associations); with several runs, the run with the median
    rate and the range of all runs."""
    lines = ["| server | instances | associations | runs | instances/s (median) | range | MB/s | server CPU s "
             "| CPU s / 1000 inst | peak RSS MB | load avg | all stored |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.n, r.conc), []).append(r)
    for (server, n, conc), rs in groups.items():
        rs_sorted = sorted(rs, key=lambda r: r.inst_per_s)
        r = rs_sorted[(len(rs_sorted) - 1) // 2]
        rng = f"{rs_sorted[0].inst_per_s:.0f}–{rs_sorted[-1].inst_per_s:.0f}" if len(rs) > 1 else ""
        bad = [x.note for x in rs if not x.ok]
        lines.append(f"| {server} | {n} | {conc} | {len(rs)} | {r.inst_per_s:.0f} | {rng} | {r.mb_per_s:.0f} | "
                     f"{r.cpu_s:.1f} | {1000 * r.cpu_s / r.n:.1f} | {r.peak_rss_mb:.0f} | {r.load1:.1f} | "
                     f"{'yes' if not bad else 'NO: ' + '; '.join(bad)} |")
    return "\n".join(lines)


def machine() -> str:
    """nproc, memory and versions, as text for RESULTS.md."""
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.rstrip()
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ver = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout.splitlines()[0:1]
    orth = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.splitlines()[0:1]
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "node"], capture_output=True,
                           text=True).stdout.strip()
    return (f"- nproc: {os.cpu_count()} ({cpu})\n- Python {platform.python_version()}, {platform.platform()}\n"
            f"- dcmtk: {' '.join(ver)}; Orthanc: {' '.join(orth)}\n"
            f"- node code: commit {rev or '?'}{' + uncommitted changes under node/' if dirty else ''}\n\n"
            f"```\n$ free -g\n{free}\n```")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and (unless --no-write) write RESULTS.md. Returns 0 when every run stored all."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--servers", nargs="+", choices=list(STARTERS),
                    default=["node", "storescp", "storescp+nodelay", "orthanc", "orthanc+nodelay"])
    ap.add_argument("--tmp", type=Path, default=OUT / "receive_tmp", help="server storage root (local disk)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each case for --repeat-servers (median kept)")
    ap.add_argument("--repeat-servers", nargs="+", default=["node"], help="servers that get --repeat runs")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    files = generate(max(args.counts))
    print(f"test data: {len(files)} files in {CACHE} ({time.monotonic() - t0:.0f} s)", flush=True)
    args.tmp.mkdir(parents=True, exist_ok=True)
    results = []
    cases = [(rep, n, conc, name) for rep in range(max(1, args.repeat)) for n in args.counts
             for conc in args.concurrency for name in args.servers if rep == 0 or name in args.repeat_servers]
    for rep, n, conc, name in cases:  # repeats run after the first round, so slow phases of the machine spread out
        try:
            r = measure(name, files[:n], conc, args.tmp)
        except Exception as exc:  # a server that cannot start is reported, the others still run
            print(f"{name} n={n} c={conc}: could not run: {exc}", flush=True)
            r = Result(name, n, conc, float("nan"), 0, 0, 0, 0, 0, conc, f"could not run: {exc}")
        results.append(r)
        print(f"{r.server:9s} n={r.n:5d} c={r.conc}: {r.inst_per_s:7.0f} inst/s {r.mb_per_s:5.0f} MB/s "
              f"cpu {r.cpu_s:6.1f} s rss {r.peak_rss_mb:5.0f} MB {'ok' if r.ok else r.note}", flush=True)
    md = table(results)
    print(md)
    if not args.no_write:
        cmd = "python3 bench/receive/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        RESULTS.write_text(
            "# Receive benchmark (node vs dcmtk storescp vs Orthanc)\n\n"
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, command: `{cmd.strip()}`\n\n"
            f"{machine()}\n\n{md}\n\n"
            "Instances are 512x512 int16 CT images (Explicit VR Little Endian, ~0.5 MB each), sent by dcmtk "
            "storescu (-xs) processes running on the same machine, so client CPU competes with the server for "
            "the same cores. CPU s is user+sys of the server's process tree from /proc (for storescp --fork, the "
            "reaped per-association children included). Peak RSS is the sum over the server's process tree, "
            "sampled every 200 ms. With several runs of a case the row shows the run with the median rate and "
            "the range of all runs. The node runs with fsync on (file + folder per instance) and SQLite indexing; "
            "storescp does not fsync; Orthanc 1.10 syncs its storage area (default). `+nodelay`: the server ran "
            "with TCP_NODELAY=1 in its environment (dcmtk 3.6.7 and Orthanc 1.10 leave Nagle's algorithm on "
            "otherwise, which costs ~40 ms per instance on one association). The clients always ran with "
            "TCP_NODELAY=1. Load avg is the machine's 1-minute load average at the end of each run: the machine "
            "is shared, and a load above its 2 cores slows every server.\n")
        print(f"wrote {RESULTS}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
