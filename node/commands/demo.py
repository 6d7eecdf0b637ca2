"""`totalreg demo`: the whole node on one machine in a few minutes, with synthetic data.

What it does:

1. makes a working folder (``--workdir``, default a new temporary folder) and picks free loopback ports;
2. starts a real Orthanc (``/usr/sbin/Orthanc``) as the hospital PACS and result destination when it is installed
   (else results go to a folder only);
3. writes ``node.yaml`` and starts an embedded node (``totalreg serve`` in a child process);
4. renders a synthetic whole-body CT of one patient twice (prior 2023-01-05, current 2024-03-10, the current one
   moved and deformed), writes them as DICOM series and sends both to the node over DICOM (C-STORE);
5. waits for the node to register the prior to the current study and deliver the results, showing the stage (from
   the node's database), the elapsed time and a progress bar; then prints where the registered prior, the DSR, the
   rigid REG and the QC picture landed, the mean landmark error against the phantom's exact ground truth before and
   after registration (through the delivered DSR), and the URL of the job's page with the viewer in the console.

The embedded node and Orthanc are stopped at the end unless ``--keep-running`` (then Ctrl-C stops them).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_io.synthetic_series import write_ct_series
from dicom_io.writers.dsr import DSR_SOP_CLASS
from node.config import load_config
from node.net import dimse
from node.store.db import JOB_RUNNING, JOB_TERMINAL, SEND_DEAD, SEND_DONE, Database, Job, Send, Study
from node.web.viewer import field_from_dsr
from registration_core.synthetic import make_longitudinal_pair, make_phantom

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def add_parser(subparsers) -> None:
    """Register `totalreg demo`."""
    p = subparsers.add_parser("demo", help="run the whole node on synthetic data (a few minutes on a laptop)")
    p.add_argument("--workdir", type=Path, default=None, help="working folder (default: a new temporary folder)")
    p.add_argument("--spacing", type=float, default=4.0, help="voxel size of the synthetic CTs in mm (default 4)")
    p.add_argument("--iterations", type=int, default=None, help="instance-optimisation iterations (default: engine's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--no-orthanc", action="store_true", help="do not start Orthanc even if it is installed")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    p.add_argument("--keep-running", action="store_true", help="keep the node (and Orthanc) running until Ctrl-C")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.2, proc: subprocess.Popen | None = None,
          log_path: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what}: the process exited with status {proc.returncode}\n{tail}")
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s")


class EmbeddedOrthanc:
    """A throw-away Orthanc on free loopback ports (storage under ``workdir``), knowing the node for C-MOVE."""

    def __init__(self, workdir: Path, node_ae: str, node_port: int, aet: str = "ORTHANC") -> None:
        self.workdir, self.aet = Path(workdir), aet
        self.node_ae, self.node_port = node_ae, node_port
        self.dicom_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    @property
    def http_url(self) -> str:
        """REST base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> "EmbeddedOrthanc":
        """Start Orthanc and wait until its REST API answers."""
        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "totalreg-demo-pacs", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"), "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "DicomCheckCalledAet": False,
            "DicomModalities": {"totalreg": {"AET": self.node_ae, "Host": "127.0.0.1", "Port": self.node_port}},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 2, "SaveJobs": False,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(cfg, indent=1))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(ORTHANC_BIN), str(self.workdir / "orthanc.json")], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)

        def up():
            try:
                return httpx.get(f"{self.http_url}/system", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, timeout_s, "Orthanc", proc=self.proc, log_path=self.log_path)
        return self

    def stop(self) -> None:
        """SIGTERM and wait."""
        _terminate(self.proc)


def _terminate(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class NodeProcess:
    """`totalreg serve --config FILE` in a child process; ``start()`` waits until it answers C-ECHO."""

    def __init__(self, config_path: Path, ae_title: str, port: int, log_path: Path) -> None:
        self.config_path, self.ae_title, self.port, self.log_path = Path(config_path), ae_title, port, Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "NodeProcess":
        """Start the node and wait for its DICOM listener."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-P", "-m", "node.cli", "serve", "--config",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.config_path.parent, start_new_session=True)
        peer = dimse.Peer(self.ae_title, "127.0.0.1", self.port, name="node")

        def answers():
            try:
                return dimse.echo(peer, "DEMO", timeout_s=2.0) == 0
            except dimse.DimseError:
                return False

        _wait(answers, timeout_s, "the node", poll_s=0.3, proc=self.proc, log_path=self.log_path)
        return self

    def stop(self) -> None:
        """SIGTERM and wait (the node finishes its current step)."""
        _terminate(self.proc, timeout_s=60.0)


# -------------------------------------------------------------------------------------------- synthetic data

@dataclass
class DemoStudies:
    """The synthetic studies written for the demo (files per study) and their UIDs."""

    prior_files: list[Path]
    current_files: list[Path]
    prior_study_uid: str
    current_study_uid: str
    patient_id: str
    #: exact ground truth: (points in the current scan, the same anatomy in the prior), (N, 3) LPS mm each
    landmarks: tuple[np.ndarray, np.ndarray] | None = None


def synthetic_pair(spacing_mm: float = 4.0, seed: int = 7, realistic: bool = True,
                   fov_mm: tuple[float, float, float] = (360.0, 270.0, 360.0)):
    """(current, prior) SimpleITK CT images in HU of one synthetic patient (LPS, mm). The prior is the current
    anatomy displaced: breathing, organ shift, table shift (registration_core.synthetic.make_longitudinal_pair) when
    ``realistic`` and available, else the same phantom under a small rigid motion (fast). ``fov_mm``: field of view
    (x, y, z mm) of the current scan; smaller is faster to register."""
    current, prior, _ = synthetic_pair_with_truth(spacing_mm, seed, realistic, fov_mm)
    return current, prior


def synthetic_pair_with_truth(spacing_mm: float = 4.0, seed: int = 7, realistic: bool = True,
                              fov_mm: tuple[float, float, float] = (360.0, 270.0, 360.0)):
    """Like :func:`synthetic_pair`, plus the exact ground truth as landmarks ``(current_points, prior_points)``,
    (N, 3) arrays in LPS mm: the generator's landmarks, or (rigid fallback) up to 100 body voxels of the current
    scan and where the rigid motion puts them in the prior."""
    fov = tuple(float(v) for v in fov_mm)  # x, y, z extent in mm (chest to pelvis at the default)
    if realistic:
        # a follow-up as a demo should show it: breathing and organ shift, a modest table shift and rotation
        pair = make_longitudinal_pair(phantom=seed, spacing=spacing_mm, fov_mm=fov, max_shift_mm=25.0,
                                      max_rot_deg=5.0, moving_fov_scale=0.95)
        lm = pair.landmarks
        return pair.fixed, pair.moving, (np.asarray(lm[0], float), np.asarray(lm[1], float)) if lm else None
    current, _, _ = make_phantom(spacing=spacing_mm, seed=seed, fov_mm=fov)
    t = sitk.Euler3DTransform()
    t.SetCenter((0.0, 0.0, 0.0))
    t.SetRotation(0.0, 0.0, 0.05)
    t.SetTranslation((6.0, -4.0, 8.0))
    prior = sitk.Resample(current, current, t, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    # prior(x) = current(t(x)): the anatomy at current point p lies at t^-1(p) in the prior
    body = np.argwhere(sitk.GetArrayViewFromImage(current) > -300)  # (z, y, x) indices inside the body
    picked = body[np.random.default_rng(seed).choice(len(body), size=min(100, len(body)), replace=False)]
    pts = np.array([current.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in picked], float)
    inverse = t.GetInverse()
    return current, prior, (pts, np.array([inverse.TransformPoint(tuple(p)) for p in pts], float))


def write_demo_studies(folder: Path, spacing_mm: float = 4.0, patient_id: str = "DEMO-0001",
                       patient_name: str = "Demo^Patient", seed: int = 7, realistic: bool = True,
                       fov_mm: tuple[float, float, float] = (360.0, 270.0, 360.0)) -> DemoStudies:
    """Write the prior (2023-01-05) and current (2024-03-10) studies as DICOM CT series under ``folder``."""
    from pydicom.uid import generate_uid


    current, prior, landmarks = synthetic_pair_with_truth(spacing_mm, seed, realistic=realistic, fov_mm=fov_mm)
    prior_uid, current_uid = generate_uid(), generate_uid()
    common = dict(patient_id=patient_id, patient_name=patient_name, birth_date="19580214")
    prior_files = write_ct_series(prior, folder / "prior", study_uid=prior_uid, study_date="20230105",
                                  series_description=f"CT WB {spacing_mm:g} mm", accession_number="DEMO-A1",
                                  study_time="091500", **common)
    current_files = write_ct_series(current, folder / "current", study_uid=current_uid, study_date="20240310",
                                    series_description=f"CT WB {spacing_mm:g} mm", accession_number="DEMO-A2",
                                    study_time="101500", **common)
    return DemoStudies(prior_files, current_files, prior_uid, current_uid, patient_id, landmarks)


def landmark_errors(result_dir: Path, landmarks: tuple[np.ndarray, np.ndarray]) -> tuple[int, float, float] | None:
    """(number of landmarks, mean error before, mean error after registration) in mm, against the exact ground truth.

    Before: |p - q| (the scans as they are; p in the current scan, q the same anatomy in the prior, LPS mm). After:
    |p + d(p) - q| with d the delivered DSR's field (current point -> prior point, LPS mm, linear between its grid
    points). None when the job wrote no DSR."""
    from pydicom import dcmread


    for f in sorted((Path(result_dir) / "dicom").glob("*.dcm")):
        if str(dcmread(f, stop_before_pixels=True).get("SOPClassUID", "")) == DSR_SOP_CLASS:
            break
    else:
        return None
    transform = sitk.DisplacementFieldTransform(field_from_dsr(f))
    p, q = (np.asarray(a, float) for a in landmarks)
    mapped = np.array([transform.TransformPoint(tuple(x)) for x in p])
    return len(p), float(np.linalg.norm(p - q, axis=1).mean()), float(np.linalg.norm(mapped - q, axis=1).mean())


# ------------------------------------------------------------------------------------------------ the job

def node_yaml(workdir: Path, *, node_port: int, orthanc: EmbeddedOrthanc | None, iterations: int | None,
              device: str, quiet_s: float = 3.0, web_port: int | None = None,
              admin_password: str | None = None) -> str:
    """The demo's node.yaml: embedded SQLite, quiet period ``quiet_s``, folder (+ Orthanc) destinations; the web
    console on 127.0.0.1:``web_port`` (user admin, ``admin_password``) when ``web_port`` is given."""
    import yaml

    dests = [{"name": "folder", "kind": "folder", "path": str(workdir / "results")}]
    pacs = []
    if orthanc is not None:
        dests.insert(0, {"name": "orthanc", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                         "port": orthanc.dicom_port})
        pacs = [{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                 "retrieve": "move", "timeout_s": 120}]
    reg = {"device": device}
    if iterations is not None:
        reg["iterations"] = iterations
    cfg = {
        "node": {"ae_title": "TOTALREG", "host": "127.0.0.1", "port": node_port, "data_dir": str(workdir / "node"),
                 "min_free_disk_mb": 0},
        "completion": {"quiet_seconds": quiet_s},
        "pacs": pacs,
        "destinations": dests,
        "send_retry": {"max_attempts": 3, "backoff_s": 2},
        "jobs": {"workers": 1, "retry": {"max_attempts": 2, "backoff_s": 5}},
        "rules": [{"name": "ct-followup", "match": {"Modality": "CT"}, "prior": {"max_age_days": 3650},
                   "send_to": [d["name"] for d in dests], "registration": reg}],
        "web": {"enabled": True, "host": "127.0.0.1", "port": web_port, "admin_user": "admin",
                "admin_password": admin_password} if web_port else {"enabled": False},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


#: the stages the demo waits through, in order (the progress bar counts them)
STAGES = ("receiving the current study (quiet period)", "queued for a worker", "registering",
          "delivering the results")


def progress_of(session, study_uid: str) -> dict:
    """Where the node is with ``study_uid``, from its database: ``{"step": 0..4, "stage": text, "fraction": 0..1,
    "detail": text}``; step = number of :data:`STAGES` finished (4: all results delivered or given up)."""
    from sqlalchemy import select


    def at(step: int, detail: str = "", within: float = 0.0) -> dict:
        stage = STAGES[step] if step < len(STAGES) else "finished"
        return {"step": step, "stage": stage, "detail": detail,
                "fraction": min(1.0, (step + max(0.0, min(1.0, within))) / len(STAGES))}

    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    jobs = session.scalars(select(Job).where(Job.study_uid == study_uid).order_by(Job.id)).all()
    if not jobs:
        n = f"{study.n_instances} instances received" if study is not None else "nothing received yet"
        return at(0, n)
    job = jobs[0]
    if job.state not in JOB_TERMINAL and job.state != JOB_RUNNING:
        return at(1, f"job {job.id}")
    if job.state == JOB_RUNNING:
        return at(2, f"job {job.id}, attempt {job.attempts}")
    sends = session.scalars(select(Send).where(Send.job_id == job.id)).all()
    total = sum(x.n_files for x in sends)
    acked = sum(x.n_acknowledged for x in sends)
    if any(x.state not in (SEND_DONE, SEND_DEAD) for x in sends):
        return at(3, f"job {job.id}: {acked} of {total} files acknowledged", acked / total if total else 0.0)
    return at(len(STAGES), f"job {job.id} {job.state}")


class ProgressLine:
    """Shows the demo's progress: on a terminal one line redrawn in place (bar, stage, elapsed seconds); otherwise
    (a log, a pipe) one line per stage change and one every ``every_s`` seconds within a stage. ``stream``: where
    to write (default stdout)."""

    WIDTH = 24

    def __init__(self, stream=None, tty: bool | None = None, every_s: float = 30.0) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last_key: tuple | None = None
        self.stage_t0 = self.printed_t = self.t0

    def line(self, p: dict, now: float | None = None) -> str:
        """The text for progress ``p`` (see :func:`progress_of`)."""
        now = time.monotonic() if now is None else now
        filled = round(self.WIDTH * p["fraction"])
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        detail = f" ({p['detail']})" if p.get("detail") else ""
        return (f"demo: [{bar}] {p['step']}/{len(STAGES)} {p['stage']}{detail}, "
                f"{now - self.t0:.0f} s elapsed, {now - self.stage_t0:.0f} s in this stage")

    def update(self, p: dict) -> None:
        """Show progress ``p``."""
        key = (p["step"], p["stage"])
        now = time.monotonic()
        if key != self.last_key:
            self.stage_t0 = now
        if self.tty:
            self.stream.write("\r" + self.line(p, now).ljust(110))
            self.stream.flush()
        elif key != self.last_key or now - self.printed_t >= self.every_s:
            print(self.line(p, now), file=self.stream, flush=True)
            self.printed_t = now
        self.last_key = key

    def close(self) -> None:
        """End the redrawn line (terminal only)."""
        if self.tty and self.last_key is not None:
            self.stream.write("\n")
            self.stream.flush()


def wait_for_delivery(db_url: str, study_uid: str, timeout_s: float, proc: subprocess.Popen | None = None,
                      log_path: Path | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Wait until the node's job(s) for ``study_uid`` are finished and every send is done or dead; ``progress`` is
    called with :func:`progress_of`'s dict at every poll (0.5 s) while waiting.

    Returns a dict with the first job's id, state, outcome, reason, result_dir, qc_png, timings and the sends."""
    from sqlalchemy import select


    db = Database(db_url, create=False)
    try:
        def finished():
            try:
                with db.session() as s:
                    if progress is not None:
                        progress(progress_of(s, study_uid))
                    jobs = s.scalars(select(Job).where(Job.study_uid == study_uid).order_by(Job.id)).all()
                    if not jobs or any(j.state not in JOB_TERMINAL for j in jobs):
                        return None
                    job = jobs[0]
                    sends = s.scalars(select(Send).where(Send.job_id == job.id)).all()
                    if any(x.state not in (SEND_DONE, SEND_DEAD) for x in sends):
                        return None
                    return {"job_id": job.id, "state": job.state, "outcome": job.outcome,
                            "reason": job.outcome_reason or job.error, "result_dir": job.result_dir,
                            "qc_png": job.qc_png, "timings": dict(job.timings or {}),
                            "finished_at": job.finished_at, "created_at": job.created_at,
                            "sends": [{"destination": x.destination, "state": x.state, "acked": x.n_acknowledged,
                                       "error": x.error, "finished_at": x.finished_at} for x in sends]}
            except Exception:  # noqa: BLE001 - tables may not exist yet while the node starts
                return None

        return _wait(finished, timeout_s, f"the job for study {study_uid}", poll_s=0.5, proc=proc,
                     log_path=log_path)
    finally:
        db.dispose()


def run(args) -> int:
    """Run the demo; returns 0 when the results were delivered."""
    import logging

    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # 'connection refused' while the node starts
    t_start = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="totalreg-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    node_port, web_port = free_port(), free_port()
    admin_password = secrets.token_urlsafe(12)
    use_orthanc = ORTHANC_BIN.exists() and not args.no_orthanc
    orthanc = EmbeddedOrthanc(workdir / "orthanc", "TOTALREG", node_port) if use_orthanc else None
    node = None
    try:
        print(f"demo: working folder {workdir}")
        if orthanc is not None:
            orthanc.start()
            print(f"demo: Orthanc (PACS and destination) at {orthanc.http_url}, DICOM {orthanc.aet}@127.0.0.1:"
                  f"{orthanc.dicom_port}")
        else:
            print("demo: Orthanc not installed; results go to a folder only")
        cfg_path = workdir / "node.yaml"
        cfg_path.write_text(node_yaml(workdir, node_port=node_port, orthanc=orthanc, iterations=args.iterations,
                                      device=args.device, web_port=web_port, admin_password=admin_password))
        node = NodeProcess(cfg_path, "TOTALREG", node_port, workdir / "node.log").start()
        print(f"demo: node TOTALREG listening on 127.0.0.1:{node_port} (log {workdir / 'node.log'})")
        studies = write_demo_studies(workdir / "input", spacing_mm=args.spacing)
        print(f"demo: synthetic patient {studies.patient_id}: prior {len(studies.prior_files)} slices (2023-01-05), "
              f"current {len(studies.current_files)} slices (2024-03-10)")
        if orthanc is not None:  # the PACS holds both studies too, as in a hospital
            pacs_peer = dimse.Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port, name="orthanc")
            dimse.store(pacs_peer, "DEMOSCU", studies.prior_files + studies.current_files)
        peer = dimse.Peer("TOTALREG", "127.0.0.1", node_port, name="node")
        dimse.store(peer, "DEMOSCU", studies.prior_files)
        dimse.store(peer, "DEMOSCU", studies.current_files)
        t_sent = time.monotonic()
        print("demo: both studies sent over DICOM; waiting for the quiet period, registration and delivery ...")
        db_url = load_config(cfg_path).node.database_url()
        bar = ProgressLine()
        try:
            result = wait_for_delivery(db_url, studies.current_study_uid, args.timeout, proc=node.proc,
                                       log_path=node.log_path, progress=bar.update)
            bar.update({"step": len(STAGES), "stage": "finished", "fraction": 1.0, "detail": ""})
        finally:
            bar.close()
        print(f"demo: job {result['job_id']} {result['state']} ({result['outcome'] or '-'}): {result['reason']}")
        for snd in result["sends"]:
            line = f"demo: send to '{snd['destination']}': {snd['state']} ({snd['acked']} instances acknowledged)"
            print(line + (f" - {snd['error']}" if snd["error"] else ""))
        ok = result["state"] == "done" and result["outcome"] == "registered" and \
            all(s["state"] == "done" for s in result["sends"])
        _print_locations(result, workdir, orthanc, studies.current_study_uid)
        if studies.landmarks is not None and result.get("result_dir") and result["outcome"] == "registered":
            errs = landmark_errors(Path(result["result_dir"]), studies.landmarks)
            if errs is not None:
                print(f"demo: landmark error against the phantom's exact ground truth ({errs[0]} landmarks): "
                      f"mean {errs[1]:.2f} mm before, {errs[2]:.2f} mm after registration")
        hint = "" if args.keep_running else "; the node stops when the demo ends: add --keep-running to browse it"
        print(f"demo: viewer: http://127.0.0.1:{web_port}/jobs/{result['job_id']} "
              f"(sign in as admin, password {admin_password}{hint})")
        print(f"demo: {'finished' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f} s "
              f"({time.monotonic() - t_sent:.0f} s from sending to delivery)")
        if args.keep_running and ok:
            print("demo: node and Orthanc keep running; press Ctrl-C (or send SIGTERM) to stop")
            stop = {"now": False}
            previous = {sig: signal.signal(sig, lambda *_: stop.update(now=True))
                        for sig in (signal.SIGINT, signal.SIGTERM)}  # both stop the node and Orthanc cleanly
            try:
                while not stop["now"]:
                    time.sleep(0.5)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return 0 if ok else 1
    finally:
        if node is not None:
            node.stop()
        if orthanc is not None:
            orthanc.stop()


def _print_locations(result: dict, workdir: Path, orthanc: EmbeddedOrthanc | None, study_uid: str) -> None:
    from pydicom import dcmread

    result_dir = Path(result["result_dir"]) if result.get("result_dir") else None
    if result_dir and result_dir.exists():
        kinds: dict[str, list[Path]] = {}
        for f in sorted((result_dir / "dicom").glob("*.dcm")):
            ds = dcmread(f, stop_before_pixels=True)
            kinds.setdefault(f"{ds.Modality} {ds.get('SeriesDescription', '')}".strip(), []).append(f)
        for label, files in kinds.items():
            print(f"demo: {label}: {len(files)} file(s), e.g. {files[0]}")
    if result.get("qc_png"):
        print(f"demo: QC picture: {result['qc_png']}")
    folder = workdir / "results" / study_uid
    if folder.exists():
        print(f"demo: folder destination: {folder}")
    if orthanc is not None and orthanc.proc is not None and orthanc.proc.poll() is None:
        import httpx

        r = httpx.post(f"{orthanc.http_url}/tools/lookup", content=study_uid, timeout=10.0)
        ids = [h["ID"] for h in r.json() if h["Type"] == "Study"]
        if ids:
            series = httpx.get(f"{orthanc.http_url}/studies/{ids[0]}/series", timeout=10.0).json()
            for s in series:
                tags = s["MainDicomTags"]
                print(f"demo: in Orthanc, current study: {tags.get('Modality', '?')} "
                      f"'{tags.get('SeriesDescription', '')}' ({len(s['Instances'])} instances) "
                      f"{orthanc.http_url}/series/{s['ID']}")
