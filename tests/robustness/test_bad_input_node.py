"""Inconsistent studies through the whole node: never a wrong-patient result.

* one series whose slices carry two PatientIDs (mixed patients in one series) and one StudyInstanceUID whose two
  series belong to two PatientIDs: the second patient's instances are refused at the door (0xC213, issue 15: two
  patients are never merged into one study), so the index holds one patient per study and per series;
* one series with two Frames of Reference: received, and its job fails with an error naming the problem; nothing
  is written or sent.
The patient (PatientID ``BADIN-A``) has a prior on the node, so the job gets as far as reading the series.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from .conftest import nodefx
from .support import db_of, wait_for, write_figures

PID = "BADIN-A"


def _restamp(files: list[Path], every_other: bool = False, **values) -> None:
    for i, f in enumerate(files):
        if every_other and i % 2 == 0:
            continue
        ds = dcmread(f)
        for k, v in values.items():
            setattr(ds, k, v)
        ds.save_as(f, enforce_file_format=True)


def test_inconsistent_studies_fail_with_plain_reasons_and_nothing_is_sent(tmp_path):
    from node.store.db import JOB_TERMINAL, Instance, Job, Send
    cfg, path = nodefx.write_node_config(
        tmp_path, rules=[{"name": "ct-followup", "send_to": ["local"],
                          "registration": {"device": "cpu", "iterations": 1}}],
        jobs={"workers": 1, "lease_s": 60, "retry": {"max_attempts": 1, "backoff_s": 0.2}},
        completion={"quiet_seconds": 1.0, "max_wait_seconds": 60})
    prior = nodefx.make_series(tmp_path / "prior", patient_id=PID, study_date="20230101", n_slices=6, size=12,
                               seed=1)
    # 1. one series, two PatientIDs
    mixed_uid = generate_uid()
    mixed = nodefx.make_series(tmp_path / "mixed", patient_id=PID, study_uid=mixed_uid, study_date="20240101",
                               n_slices=6, size=12, seed=2)
    _restamp(mixed, every_other=True, PatientID="BADIN-B")
    # 2. one StudyInstanceUID, a series of each of two patients
    two_uid = generate_uid()
    two_a = nodefx.make_series(tmp_path / "two_a", patient_id=PID, study_uid=two_uid, study_date="20240201",
                               n_slices=6, size=12, seed=3, series_number=2)
    two_b = nodefx.make_series(tmp_path / "two_b", patient_id="BADIN-C", patient_name="Other^Person",
                               study_uid=two_uid, study_date="20240201", n_slices=6, size=12, seed=4,
                               series_number=3, prefix="CB")
    # 3. one series, two Frames of Reference
    for_uid = generate_uid()
    two_for = nodefx.make_series(tmp_path / "for", patient_id=PID, study_uid=for_uid, study_date="20240301",
                                 n_slices=6, size=12, seed=5)
    _restamp(two_for[3:], FrameOfReferenceUID=generate_uid())

    db = db_of(cfg)
    node = nodefx.start_node(path)
    try:
        assert nodefx.storescu(node.port, prior).returncode == 0
        assert nodefx.storescu(node.port, two_for).returncode == 0

        def job_terminal():
            with db.session() as s:
                rows = s.scalars(select(Job).where(Job.study_uid == for_uid)).all()
                if rows and all(j.state in JOB_TERMINAL for j in rows):
                    s.expunge_all()
                    return rows
            return None
        rows = wait_for(job_terminal, 300, "the Frame of Reference study's job to end", node)
        report = {}
        for j in rows:
            said = j.error or j.outcome_reason
            report[for_uid] = (j.state, j.outcome, said)
            assert j.state == "failed", (f"study {for_uid}: job {j.id} ended {j.state}/{j.outcome} ({said}); "
                                         "expected a failed job naming the Frame of Reference problem")
            assert "frame of reference" in said.lower() and "\n" not in said, said
        with db.session() as s:
            sends = s.scalars(select(Send).where(Send.job_id.in_([j.id for j in rows]))).all()
            assert sends == [], "results of an inconsistent study were queued for sending"
        assert not list((tmp_path / "out").rglob("*.dcm")), "results of an inconsistent study were delivered"

        # a second patient in a study or series already holding the first: refused at the door, never merged
        for files, study_uid, n_first in ((mixed, mixed_uid, 3), (two_a + two_b, two_uid, 6)):
            r = subprocess.run([nodefx.dcmtk("storescu"), "-nh", "-aet", "STORESCU", "-aec", node.ae_title,
                                "127.0.0.1", str(node.port), *map(str, files)], capture_output=True, text=True,
                               timeout=120)  # -nh: go on after a refused instance (exit status 0 then)
            assert r.returncode == 0, r.stderr[-1000:]
            refused = [line for line in node.log().splitlines() if "not accepted (0xC213)" in line
                       and f"study {study_uid} already holds another patient's instances" in line]
            assert len(refused) == len(files) - n_first, refused
            with db.session() as s:
                held = s.scalars(select(Instance.path).where(Instance.study_uid == study_uid)).all()
            assert len(held) == n_first, (study_uid, len(held))
            assert {str(dcmread(p, stop_before_pixels=True).PatientID) for p in held} == {PID}
            report[study_uid] = ("refused at the door", len(files) - n_first, "instances of another patient")
        assert nodefx.echo_ok(node.port)
        write_figures("bad_input_node", {"jobs": {k: list(v) for k, v in report.items()}})
    finally:
        node.kill()
        db.dispose()
