"""`totalreg demo`: the README's "run the main job" command, end to end (embedded node, synthetic patient)."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from node.commands.demo import (ORTHANC_BIN, ProgressLine, landmark_errors, node_yaml, progress_of,
                                write_demo_studies)


def test_demo_inputs_and_config_are_consistent(tmp_path):
    """Fast check of the demo's pieces: one patient, prior earlier than current, config valid and routable."""
    from pydicom import dcmread

    from node.config import parse_config
    from node.store.header import summary_from_files
    from node.route.rules import route_study

    studies = write_demo_studies(tmp_path / "in", spacing_mm=16.0, realistic=False)
    prior = summary_from_files(studies.prior_files)
    current = summary_from_files(studies.current_files)
    assert prior.patient == current.patient and prior.study_date < current.study_date
    assert dcmread(studies.current_files[0]).StudyInstanceUID == studies.current_study_uid
    cfg = parse_config(node_yaml(tmp_path, node_port=11112, orthanc=None, iterations=5, device="cpu"))
    assert [d.name for d in cfg.destinations] == ["folder"] and cfg.pacs == []
    (decision,) = route_study(cfg, current)
    assert decision.series_uid == current.series[0].series_uid


def test_landmark_errors_through_a_dsr(tmp_path):
    """The demo's accuracy line: identity DSR -> the error stays the rigid motion's; the exact field -> ~0 mm."""
    import SimpleITK as sitk

    from dicom_io import read_series
    from dicom_io.writers import save_objects, write_dsr

    studies = write_demo_studies(tmp_path / "in", spacing_mm=16.0, realistic=False)
    p, q = studies.landmarks
    assert p.shape == q.shape and p.shape[1] == 3 and len(p) >= 20
    cur, prior = read_series(studies.current_files), read_series(studies.prior_files)
    # the exact field on the current grid: the rigid fallback maps current p to prior t^-1(p) (an affine map)
    size = cur.image.GetSize()
    pts = np.array([[cur.image.TransformIndexToPhysicalPoint((i, j, k)) for i in range(size[0])]
                    for k in range(size[2]) for j in range(size[1])], float).reshape(size[2], size[1], size[0], 3)
    coef, *_ = np.linalg.lstsq(np.c_[p, np.ones(len(p))], q, rcond=None)  # recover t^-1 from the landmarks
    exact = np.c_[pts.reshape(-1, 3), np.ones(pts[..., 0].size)] @ coef - pts.reshape(-1, 3)
    for name, vec in (("identity", np.zeros_like(pts)), ("exact", exact.reshape(pts.shape))):
        field = sitk.GetImageFromArray(vec, isVector=True)
        field.CopyInformation(cur.image)
        save_objects([write_dsr(cur, prior, field, grid_spacing_mm=8.0)], tmp_path / name / "dicom")
        n, before, after = landmark_errors(tmp_path / name, studies.landmarks)
        assert n == len(p) and before == pytest.approx(np.linalg.norm(p - q, axis=1).mean())
        assert before > 5.0
        assert after == pytest.approx(before, abs=1e-6) if name == "identity" else after < 0.01
    assert landmark_errors(tmp_path / "in", studies.landmarks) is None  # no DSR there


def test_progress_reads_the_stage_from_the_database(tmp_path):
    import io

    from sqlalchemy import select

    from node.store.db import Database, Job, Send, Study

    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    uid = "1.2.3.4"
    seen = []
    with db.session() as s:
        seen.append(progress_of(s, uid))
        s.add(Study(study_uid=uid, n_instances=12))
    with db.session() as s:
        seen.append(progress_of(s, uid))
        s.add(Job(study_uid=uid, current_series_uid="1.2.3.4.1", rule_name="r"))
    with db.session() as s:
        seen.append(progress_of(s, uid))
        job = s.scalars(select(Job)).one()
        job.state, job.attempts = "running", 1
    with db.session() as s:
        seen.append(progress_of(s, uid))
        job = s.scalars(select(Job)).one()
        job.state, job.outcome = "done", "registered"
        s.add(Send(job_id=job.id, destination="folder", n_files=40, n_acknowledged=10, state="sending"))
    with db.session() as s:
        seen.append(progress_of(s, uid))
        s.scalars(select(Send)).one().state = "done"
    with db.session() as s:
        seen.append(progress_of(s, uid))
    db.dispose()
    assert [x["step"] for x in seen] == [0, 0, 1, 2, 3, 4]
    assert seen[1]["detail"] == "12 instances received" and seen[3]["stage"] == "registering"
    assert seen[4]["fraction"] == pytest.approx((3 + 10 / 40) / 4) and seen[5]["fraction"] == 1.0
    out = io.StringIO()
    bar = ProgressLine(out, tty=False)
    for x in seen:
        bar.update(x)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per stage change (the second 'receiving' poll prints nothing)
    assert lines[3].startswith("demo: [####################----] 3/4 delivering the results (job 1: 10 of 40 files")
    assert lines[-1].startswith("demo: [########################] 4/4 finished (job 1 done), ")


@pytest.mark.slow  # registers on CPU: a few minutes on a shared 2-core machine
def test_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "node.cli", "demo", "--workdir", str(tmp_path / "demo"),
                           "--spacing", "8", "--iterations", "10", "--timeout", "900"],
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "registered" in out and "QC picture:" in out and "finished in" in out
    assert "REG" in out  # DSR / rigid REG listed
    # progress while waiting: stage, elapsed time and a bar, one line per stage (stdout is not a terminal here)
    stages = re.findall(r"^demo: \[([#-]{24})\] (\d)/4 ([a-z ()]+?)(?: \(.*\))?, (\d+) s elapsed", out, re.MULTILINE)
    steps = [int(s[1]) for s in stages]
    assert 2 in steps and steps[-1] == 4 and steps == sorted(steps), out[-3000:]
    assert any(s[2] == "registering" for s in stages) and stages[-1][0] == "#" * 24
    assert int(stages[-1][3]) >= int(stages[0][3])
    # accuracy against the phantom's exact ground truth, through the delivered DSR
    m = re.search(r"landmark error against the phantom's exact ground truth \((\d+) landmarks\): "
                  r"mean ([\d.]+) mm before, ([\d.]+) mm after registration", out)
    assert m, out[-3000:]
    n, before, after = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert n >= 20 and before > 5.0 and after < 0.5 * before
    assert re.search(r"^demo: viewer: http://127\.0\.0\.1:\d+/jobs/\d+ \(sign in as admin, password [\w-]+; ", out,
                     re.MULTILINE)
    if ORTHANC_BIN.exists():
        assert "in Orthanc, current study: REG" in out
