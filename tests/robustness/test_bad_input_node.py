"""Inconsistent studies through the whole node: each ends as a failed job whose error names the problem, and
nothing is written or sent (never a wrong-patient result).

* one series whose slices carry two PatientIDs (mixed patients in one series);
* one StudyInstanceUID whose two series belong to two PatientIDs;
* one series with two Frames of Reference.
The patient (PatientID ``BADIN-A``) has a prior on the node, so every job gets as far as reading the series.
"""
from __future__ import annotations

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
    from node.db import JOB_TERMINAL, Job, Send
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
        for files in (mixed, two_a + two_b, two_for):
            r = nodefx.storescu(node.port, files)
            assert r.returncode == 0, r.stderr[-1000:]

        def jobs_terminal():
            with db.session() as s:
                rows = s.scalars(select(Job).where(Job.study_uid.in_([mixed_uid, two_uid, for_uid]))).all()
                if len({j.study_uid for j in rows}) == 3 and all(j.state in JOB_TERMINAL for j in rows):
                    s.expunge_all()
                    return rows
            return None
        rows = wait_for(jobs_terminal, 300, "the three jobs to end", node)
        by_study: dict[str, list] = {}
        for j in rows:
            by_study.setdefault(j.study_uid, []).append(j)
        expect = {mixed_uid: "patient", two_uid: "patient", for_uid: "Frame of Reference"}
        report = {}
        for study, word in expect.items():
            for j in by_study[study]:
                said = j.error or j.outcome_reason
                report[study] = (j.state, j.outcome, said)
                assert j.state == "failed", (f"study {study}: job {j.id} ended {j.state}/{j.outcome} ({said}); "
                                             f"expected a failed job naming the {word} problem")
                assert word.lower() in said.lower() and "\n" not in said, said
        with db.session() as s:
            sends = s.scalars(select(Send).where(Send.job_id.in_([j.id for j in rows]))).all()
            assert sends == [], "results of an inconsistent study were queued for sending"
        assert not list((tmp_path / "out").rglob("*.dcm")), "results of an inconsistent study were delivered"
        assert nodefx.echo_ok(node.port)
        write_figures("bad_input_node", {"jobs": {k: list(v) for k, v in report.items()}})
    finally:
        node.kill()
        db.dispose()
