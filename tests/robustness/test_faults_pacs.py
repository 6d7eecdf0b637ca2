"""The hospital PACS (a real Orthanc) goes down and comes back.

* During the send of results: the attempt fails with a plain reason ("cannot reach ..."), the dispatcher retries
  with back-off, and once Orthanc is back every result instance is in Orthanc and the send is 'done'.
* During the prior search/retrieval: the job records the plain reason, is retried with back-off (not closed as
  'no prior': the prior exists, the PACS was only unreachable), and is registered once Orthanc is back.
"""
from __future__ import annotations

import time

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from orthanc_server import OrthancServer, orthanc_available

from .conftest import nodefx
from .support import db_of, make_result_files, wait_for, write_figures

pytestmark = [pytest.mark.orthanc, pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]


def _orthanc_sop_uids(orthanc: OrthancServer) -> set[str]:
    import httpx
    out = set()
    for iid in orthanc.get("/instances"):
        tags = httpx.get(f"{orthanc.http_url}/instances/{iid}/simplified-tags", timeout=30).json()
        out.add(tags["SOPInstanceUID"])
    return out


def test_pacs_down_during_send_retries_then_delivers(tmp_path):
    from node.store.db import JOB_DONE, SEND_DONE, Job, Send, utcnow
    orthanc = OrthancServer(tmp_path / "orthanc")  # ports chosen, not started: the PACS is down
    cfg, path = nodefx.write_node_config(
        tmp_path,
        destinations=[{"name": "pacs", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
        rules=[{"name": "ct-followup", "send_to": ["pacs"]}],
        send_retry={"max_attempts": 30, "backoff_s": 0.5, "backoff_factor": 1.5, "max_backoff_s": 2.0})
    res_dir = tmp_path / "results-1"
    files = make_result_files(res_dir / "dicom", 6, seed=7)
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    db = db_of(cfg)
    node = nodefx.start_node(path)
    try:
        with db.session() as s:
            job = Job(kind="register", study_uid=generate_uid(), current_series_uid=generate_uid(),
                      rule_name="ct-followup", state=JOB_DONE, outcome="registered", result_dir=str(res_dir),
                      finished_at=utcnow())
            s.add(job)
            s.flush()
            snd = Send(job_id=job.id, destination="pacs", n_files=len(files), max_attempts=30)
            s.add(snd)
            s.flush()
            sid = snd.id

        def failed_twice():
            with db.session() as s:
                x = s.get(Send, sid)
                return (x.attempts, x.error, x.state) if x.attempts >= 2 and x.error else None
        attempts, error, state = wait_for(failed_twice, 60, "two failed send attempts", node)
        assert state != SEND_DONE
        assert "destination 'pacs'" in error and "cannot reach" in error, error
        assert "\n" not in error
        t_up = time.monotonic()
        with orthanc:
            def delivered():
                with db.session() as s:
                    x = s.get(Send, sid)
                    return x if x.state == SEND_DONE else None
            snd = wait_for(delivered, 60, "the send to succeed once Orthanc is up", node)
            recovery_s = time.monotonic() - t_up
            assert snd.n_acknowledged == len(files) and snd.error == ""
            assert _orthanc_sop_uids(orthanc) == uids
        write_figures("pacs_down_send", {"failed_attempts_while_down": attempts, "first_error": error,
                                         "total_attempts": snd.attempts, "recovery_s": round(recovery_s, 1)})
    finally:
        node.kill()
        orthanc.stop()
        db.dispose()


def test_pacs_down_during_prior_retrieval_retries_then_registers(tmp_path):
    from node.store.db import JOB_DONE, JOB_QUEUED, Job, JobRun
    orthanc = OrthancServer(tmp_path / "orthanc")
    cfg, path = nodefx.write_node_config(
        tmp_path,
        pacs=[{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
               "retrieve": "move", "timeout_s": 30}],
        rules=[{"name": "ct-followup", "send_to": ["local"], "registration": {"device": "cpu", "iterations": 1}}],
        jobs={"workers": 1, "lease_s": 60,
              "retry": {"max_attempts": 8, "backoff_s": 1.0, "backoff_factor": 1.5, "max_backoff_s": 4.0}})
    orthanc.modalities = {"totalreg": (cfg.node.ae_title, "127.0.0.1", cfg.node.port)}
    pid = "PACSDOWN1"
    prior_uid, cur_uid = generate_uid(), generate_uid()
    prior = nodefx.make_series(tmp_path / "prior", patient_id=pid, study_uid=prior_uid, study_date="20230101",
                               n_slices=8, size=16, seed=3)
    cur = nodefx.make_series(tmp_path / "cur", patient_id=pid, study_uid=cur_uid, study_date="20240101",
                             n_slices=8, size=16, seed=4)
    with orthanc:
        orthanc.upload(prior)  # the PACS holds the prior ...
    # ... and is down when the current study arrives
    db = db_of(cfg)
    node = nodefx.start_node(path)
    try:
        assert nodefx.storescu(node.port, cur).returncode == 0

        def first_attempt_over():
            with db.session() as s:
                job = s.scalar(select(Job).where(Job.study_uid == cur_uid))
                if job is None:
                    return None
                runs = s.scalars(select(JobRun).where(JobRun.job_id == job.id, JobRun.ended_at.is_not(None))).all()
                return (job.state, job.outcome, job.outcome_reason, job.error, job.id) if runs else None
        state, outcome, reason, error, job_id = wait_for(first_attempt_over, 120, "the first job attempt", node)
        said = error or reason
        assert "PACS 'orthanc' unreachable" in said, said
        assert (state, outcome) == (JOB_QUEUED, ""), (
            f"with the PACS unreachable the job ended as {state}/{outcome or '-'} ({said}) instead of being "
            "retried: the prior exists, the PACS was only down")
        with orthanc:
            def registered():
                with db.session() as s:
                    job = s.get(Job, job_id)
                    return job if job.state == JOB_DONE else None
            job = wait_for(registered, 300, "the job to be registered once Orthanc is up", node)
            assert job.outcome == "registered", (job.outcome, job.outcome_reason, job.error)
            assert job.prior_study_uid == prior_uid
            assert job.attempts >= 2
        out = list((tmp_path / "out").rglob("*.dcm"))
        assert len(out) >= 3
        write_figures("pacs_down_prior", {"first_reason": said, "attempts": job.attempts})
    finally:
        node.kill()
        orthanc.stop()
        db.dispose()
