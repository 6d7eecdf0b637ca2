"""Test data for the console: a node database filled through node.db's models, and a QC picture.

Jobs made (ids in creation order):
  1 done/registered, QC within thresholds, a QC png in its result folder, two sends (done), stage times, events
  2 failed (prior belongs to another patient), retry-able by an admin
  3 queued (cancel-able)
  4 done/registered but suspicious (folding 2.4 % > 0.5 %)
  5 dead (retries exhausted) for a second patient
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from node.store.db import Event, Job, JobRun, Send, Series, Study, utcnow

PATIENT = {"patient_id": "PAT-0042", "patient_name": "DOE^JANE"}
OTHER = {"patient_id": "PAT-0777", "patient_name": "ROE^RICHARD"}
LUNG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct" / "lung_pair_elastix"


def _slices() -> tuple[np.ndarray, np.ndarray]:
    """A coronal slice of the small shared lung pair (HU), or a synthetic pair when the data is absent."""
    try:
        import SimpleITK as sitk
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(LUNG / "baseline_small.mha")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(LUNG / "followup_reconstructed_small.nii.gz")))
        ya, yb = a.shape[1] // 2, b.shape[1] // 2
        fa, fb = a[:, ya, :][::-1], b[:, yb, :][::-1]
        h, w = min(fa.shape[0], fb.shape[0]), min(fa.shape[1], fb.shape[1])
        return fa[:h, :w].astype(np.float32), fb[:h, :w].astype(np.float32)
    except Exception:
        yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
        body = np.where(xx ** 2 / 0.8 + yy ** 2 / 0.6 < 1, 40.0, -1000.0)
        lung = ((np.abs(xx) - 0.4) ** 2 / 0.08 + yy ** 2 / 0.3) < 1
        a = np.where(lung, -850.0, body)
        return a.astype(np.float32), np.roll(a, 4, axis=0).astype(np.float32)


_PNG_CACHE: dict[str, bytes] = {}


def write_qc_png(path: Path) -> Path:
    """A 3-panel QC picture (current, prior, checkerboard) with matplotlib; 5 mm slices shown at 1:1 aspect.
    Drawn once per test session, then copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if "png" in _PNG_CACHE:
        path.write_bytes(_PNG_CACHE["png"])
        return path
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cur, pri = _slices()
    tiles = (np.add.outer(np.arange(cur.shape[0]) // 8, np.arange(cur.shape[1]) // 8) % 2).astype(bool)
    check = np.where(tiles, cur, pri)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100, facecolor="black")
    for ax, img, title in zip(axes, (cur, pri, check), ("current", "prior (registered)", "checkerboard")):
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=400, aspect=5.0 / 2.732, interpolation="bilinear")
        ax.set_title(title, color="white", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="black")
    plt.close(fig)
    _PNG_CACHE["png"] = path.read_bytes()
    return path


def populate(db, results_root: Path, *, qc_png: bool = True) -> dict[str, int]:
    """Fill ``db`` (node.store.db.Database) with two patients' studies and five jobs; return {'done': id, ...}."""
    now = utcnow()
    ids: dict[str, int] = {}
    with db.session() as s:
        for i, (pat, date, desc, acc) in enumerate([
                (PATIENT, dt.date(2024, 3, 10), "CT CHEST W/O CONTRAST", "ACC1001"),
                (PATIENT, dt.date(2023, 1, 5), "CT CHEST W/O CONTRAST", "ACC0901"),
                (OTHER, dt.date(2024, 3, 11), "CT ABDOMEN PELVIS", "ACC1002")]):
            st = Study(study_uid=f"1.2.826.0.1.3680043.8.498.{100 + i}", study_date=date, description=desc,
                       accession_number=acc, calling_ae="PACS", n_instances=120, size_bytes=63_000_000,
                       state="complete", first_received_at=now - dt.timedelta(hours=3 - i), **pat)
            st.series.append(Series(series_uid=f"{st.study_uid}.1", study_uid=st.study_uid, modality="CT",
                                    description="AXIAL 1.25", number=2, n_instances=120, slice_thickness_mm=1.25))
            s.add(st)
        cur, prior, other = (f"1.2.826.0.1.3680043.8.498.{100 + i}" for i in range(3))

        report = {"similarity": {"measure": "NCC", "identity": 0.412, "affine": 0.655, "final": 0.803},
                  "folding_percent": 0.012, "sdlogj": 0.071, "device": "cpu"}
        res = results_root / "job-1"
        png = write_qc_png(res / "qc.png") if qc_png else None
        done = Job(study_uid=cur, current_series_uid=f"{cur}.1", prior_series_uid=f"{prior}.1",
                   prior_study_uid=prior, rule_name="ct-followup", state="done", outcome="registered",
                   attempts=1, created_at=now - dt.timedelta(hours=2), started_at=now - dt.timedelta(hours=2),
                   finished_at=now - dt.timedelta(hours=1, minutes=58),
                   timings={"load": 4.2, "prior": 1.1, "register": 48.6, "write": 6.3, "send": 2.0, "total": 62.4},
                   qc=report, suspicious=False, result_dir=str(res), qc_png=str(png) if png else "")
        done.sends = [Send(destination="local", state="done", attempts=1, n_files=122, n_acknowledged=122,
                           finished_at=now - dt.timedelta(hours=1, minutes=57)),
                      Send(destination="pacs-out", state="done", attempts=2, n_files=122, n_acknowledged=122,
                           finished_at=now - dt.timedelta(hours=1, minutes=56))]
        done.runs = [JobRun(worker="node-1/worker-0", attempt=1, started_at=done.started_at,
                            ended_at=done.finished_at, result="done")]
        failed = Job(study_uid=cur, current_series_uid=f"{cur}.1", prior_series_uid=f"{other}.1",
                     prior_study_uid=other, rule_name="ct-followup-all", state="failed", attempts=1,
                     error="the current and the prior study belong to different patients (PatientID differ); "
                           "nothing was registered", created_at=now - dt.timedelta(hours=1),
                     finished_at=now - dt.timedelta(minutes=59))
        queued = Job(study_uid=other, current_series_uid=f"{other}.1", rule_name="ct-followup", state="queued",
                     created_at=now - dt.timedelta(minutes=5))
        bad_qc = {"similarity": {"identity": 0.30, "final": 0.52}, "folding_percent": 2.4, "sdlogj": 0.41}
        suspicious = Job(study_uid=cur, current_series_uid=f"{cur}.1", prior_series_uid=f"{prior}.2",
                         prior_study_uid=prior, rule_name="ct-followup", round=1, state="done",
                         outcome="registered", attempts=1, qc=bad_qc, suspicious=True,
                         created_at=now - dt.timedelta(minutes=50), finished_at=now - dt.timedelta(minutes=45),
                         timings={"register": 51.0})
        dead = Job(study_uid=other, current_series_uid=f"{other}.1", prior_series_uid="x", rule_name="ct-followup",
                   state="dead", attempts=3, error="prior retrieval from 'main-pacs' timed out after 600 s",
                   created_at=now - dt.timedelta(minutes=30), finished_at=now - dt.timedelta(minutes=20))
        s.add_all([done, failed, queued, suspicious, dead])
        s.flush()
        ids.update(done=done.id, failed=failed.id, queued=queued.id, suspicious=suspicious.id, dead=dead.id)
        ago = lambda **kw: now - dt.timedelta(**kw)  # noqa: E731
        s.add_all([
            Event(at=ago(hours=2, minutes=1), kind="assembly", study_uid=cur,
                  message="study complete: 2 series, 120 instances; routed to rule ct-followup"),
            Event(at=ago(hours=1, minutes=59), kind="job", study_uid=cur, job_id=done.id,
                  message=f"job {done.id}: prior found locally (study of 2023-01-05)"),
            Event(at=ago(hours=1, minutes=58), kind="job", study_uid=cur, job_id=done.id,
                  message=f"job {done.id}: registered prior 2023-01-05 to current 2024-03-10 in 62 s"),
            Event(at=ago(hours=1, minutes=56), kind="send", study_uid=cur, job_id=done.id,
                  message=f"job {done.id}: results delivered to local and pacs-out (122 instances each)"),
            Event(at=ago(minutes=59), level="ERROR", kind="job", study_uid=cur, job_id=failed.id,
                  message=f"job {failed.id}: the current and the prior study belong to different patients"),
            Event(at=ago(minutes=20), level="WARNING", kind="job", study_uid=other, job_id=dead.id,
                  message=f"job {dead.id}: gave up after 3 attempts: prior retrieval from 'main-pacs' timed out"),
        ])
    return ids
