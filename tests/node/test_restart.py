"""`totalreg serve` killed with SIGKILL mid-receive and mid-job: after a restart every acknowledged instance is in the
spool and the database, and the job completes exactly once (then is delivered)."""
from __future__ import annotations

import threading
import time
from collections import Counter

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

import pytest

from conftest import make_series, storescu
from node.store import queue as jobs
from node.store.db import JOB_DONE, JOB_RUNNING, SEND_DONE, Database, Instance, Job, JobRun, Send, Study

CUR_STUDY, PRIOR_STUDY = "1.2.826.0.1.3680043.66.1", "1.2.826.0.1.3680043.66.2"


def _wait(pred, timeout, what, node=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{node.log()[-3000:]}" if node else ""))


def _send_until_killed(port: int, files, acked: list[str], stop: threading.Event) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG")
    if not assoc.is_established:
        return
    try:
        for f in files:
            if stop.is_set():
                break
            ds = dcmread(f)
            st = assoc.send_c_store(ds)
            if not st or int(st.Status) != 0:
                break
            acked.append(str(ds.SOPInstanceUID))
    except Exception:  # noqa: BLE001 - the node died under us: that is the point
        pass
    finally:
        if assoc.is_established:
            assoc.abort()


def test_kill_mid_receive_keeps_every_acknowledged_instance(node_config, node_proc, tmp_path):
    cfg, path = node_config(rules=[])  # no processing: this test is about receiving
    cur = make_series(tmp_path / "cur", study_uid=CUR_STUDY, n_slices=40, size=16)
    db = Database(cfg.node.database_url())
    try:
        node = node_proc(path)
        acked: list[str] = []
        stop = threading.Event()
        t = threading.Thread(target=_send_until_killed, args=(node.port, cur, acked, stop))
        t.start()
        _wait(lambda: len(acked) >= 12, 60, "12 acknowledged instances", node)
        node.kill()  # SIGKILL while the modality is sending
        stop.set()
        t.join(timeout=30)
        assert 12 <= len(acked) < len(cur)
        node = node_proc(path)
        originals = {str(dcmread(f).SOPInstanceUID): f for f in cur}
        with db.session() as s:
            held = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
        for uid in acked:
            assert uid in held, f"acknowledged instance {uid} lost"
            assert dcmread(held[uid]).PixelData == dcmread(originals[uid]).PixelData
        assert not list((node.data_dir / "spool").rglob("*.part"))  # partial writes cleaned up at start
        # the modality re-sends the whole study: duplicates are harmless, nothing is missing or doubled
        assert storescu(node.port, cur).returncode == 0
        with db.session() as s:
            assert len(s.scalars(select(Instance).where(Instance.study_uid == CUR_STUDY)).all()) == len(cur)
            assert s.scalar(select(Study.n_instances).where(Study.study_uid == CUR_STUDY)) == len(cur)
        assert node.stop() == 0  # SIGTERM: graceful
    finally:
        db.dispose()


def test_kill_mid_job_completes_exactly_once(node_config, node_proc, tmp_path):
    cfg, path = node_config(rules=[], jobs={"workers": 2, "lease_s": 600})
    db = Database(cfg.node.database_url())
    try:
        node = node_proc(path)
        with db.session() as s:
            victim, _ = jobs.enqueue(s, kind="sleep", current_series_uid="1.2.3.1", rule_name="t",
                                     params={"seconds": 4})
            quick = [jobs.enqueue(s, kind="sleep", current_series_uid=f"1.2.3.{i}", rule_name="t",
                                  params={"seconds": 0.1})[0].id for i in range(2, 6)]

        def running():
            with db.session() as s:
                return s.get(Job, victim.id).state == JOB_RUNNING
        _wait(running, 60, "the job to start", node)
        node.kill()  # SIGKILL mid-job (the lease is 10 minutes: only the restart recovery can free it)
        node = node_proc(path)

        def all_done():
            with db.session() as s:
                return all(j.state == JOB_DONE for j in s.scalars(select(Job)))
        _wait(all_done, 60, "every job done", node)
        with db.session() as s:
            runs = s.scalars(select(JobRun).order_by(JobRun.id)).all()
        assert [r.result for r in runs if r.job_id == victim.id] == ["lost", "done"]
        done = Counter(r.job_id for r in runs if r.result == "done")
        assert done == Counter({victim.id: 1, **{q: 1 for q in quick}})
        assert node.stop() == 0
    finally:
        db.dispose()


@pytest.mark.slow
def test_kill_mid_registration_end_to_end(node_config, node_proc, tmp_path):
    """Receive a prior and a current study, SIGKILL during the registration, restart: registered and delivered
    exactly once (several minutes on a 2-core CPU)."""
    cfg, path = node_config(rules=[{"name": "ct-followup", "send_to": ["local"],
                                    "registration": {"device": "cpu", "iterations": 3}}],
                            jobs={"workers": 1, "lease_s": 60})
    prior = make_series(tmp_path / "prior", study_uid=PRIOR_STUDY, study_date="20230105", n_slices=12, size=24,
                        seed=1)
    cur = make_series(tmp_path / "cur", study_uid=CUR_STUDY, study_date="20240310", n_slices=12, size=24, seed=0)
    db = Database(cfg.node.database_url())
    try:
        node = node_proc(path)
        assert storescu(node.port, prior).returncode == 0
        assert storescu(node.port, cur).returncode == 0

        def running_job():
            with db.session() as s:
                return s.scalar(select(Job.id).where(Job.study_uid == CUR_STUDY, Job.state == JOB_RUNNING))
        job_id = _wait(running_job, 120, "the registration job to start", node)
        time.sleep(1.0)
        node.kill()
        node = node_proc(path)

        def delivered():
            with db.session() as s:
                job = s.get(Job, job_id)
                sends = s.scalars(select(Send).where(Send.job_id == job_id)).all()
                return job.state in (JOB_DONE, "failed", "dead") and (job.state != JOB_DONE or (
                    sends and all(x.state == SEND_DONE for x in sends)))
        _wait(delivered, 600, "the job to complete and be delivered", node)
        with db.session() as s:
            job = s.get(Job, job_id)
            assert (job.state, job.outcome) == (JOB_DONE, "registered"), job.error
            runs = s.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id)).all()
            assert [r.result for r in runs] == ["lost", "done"]
            n_files = s.scalars(select(Send).where(Send.job_id == job_id)).one().n_acknowledged
        out = list((tmp_path / "out" / CUR_STUDY).rglob("*.dcm"))
        assert len(out) == n_files > len(cur)
        assert node.stop() == 0
    finally:
        db.dispose()
