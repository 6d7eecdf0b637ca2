"""kill -9 of `totalreg serve` while it receives, runs a job and sends, N cycles.

Each cycle starts the node, sets three things in motion at once (a modality streaming a study, a job running, a
slow destination being sent to) and SIGKILLs the node while all three are under way.  After the last cycle the node
is restarted and left to drain; then:

* every instance the node acknowledged (0x0000) is indexed and in the spool, intact (no ``*.part`` left);
* every job is completed by exactly one run (``job_runs``: one 'done' per job; the killed runs are 'lost');
* every send is 'done' with all instances acknowledged, and the destination holds every result instance;
  each send was delivered exactly once (one 'delivered' event).

CI: 2 cycles with queue jobs (kind ``sleep``, the same claim/lease/complete path as registrations).
Full (slow): 20 cycles; every 5th cycle also kills a real registration of a small CT pair mid-way.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from .conftest import nodefx
from .support import (RecordingSCP, StreamSender, assert_acked_held, db_of, held_instances, make_result_files,
                      wait_for, write_figures)

SLEEP_S = 6.0  # a queue job long enough to be killed mid-run
RESULT_FILES = 20  # instances of each send
SEND_DELAY_S = 0.3  # per instance at the slow destination: a send lasts ~6 s
STREAM_SLICES = 60
STREAM_PAUSE_S = 0.08


def _add_delivery(db, tmp: Path, cycle: int, dest: str) -> tuple[int, list[str]]:
    """A finished job with result files and a queued send to ``dest`` (as the worker leaves it). (send id, UIDs)"""
    from node.store.db import JOB_DONE, Job, Send, utcnow
    res_dir = tmp / f"results-{cycle}"
    files = make_result_files(res_dir / "dicom", RESULT_FILES, seed=100 + cycle)
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with db.session() as s:
        job = Job(kind="register", study_uid=generate_uid(), current_series_uid=generate_uid(),
                  rule_name=f"delivery-{cycle}", state=JOB_DONE, outcome="registered", result_dir=str(res_dir),
                  finished_at=utcnow())
        s.add(job)
        s.flush()
        snd = Send(job_id=job.id, destination=dest, n_files=len(files), max_attempts=50)
        s.add(snd)
        s.flush()
        return snd.id, uids


def _add_sleep_job(db, cycle: int, log: Path) -> int:
    from node.store import queue as jobs
    with db.session() as s:
        job, _ = jobs.enqueue(s, kind="sleep", current_series_uid=f"sleep-{cycle}", rule_name="robust",
                              params={"seconds": SLEEP_S, "log": str(log)}, max_attempts=50)
        return job.id


def run_kill_cycles(tmp: Path, n_cycles: int, register_every: int = 0) -> dict:
    """The cycle engine (see module docstring); returns the figures."""
    from node.store.db import JOB_RUNNING, JOB_TERMINAL, SEND_DONE, SEND_SENDING, Event, Job, JobRun, Send
    scp = RecordingSCP("SLOWDEST", delay_s=SEND_DELAY_S).start()
    cfg, path = nodefx.write_node_config(
        tmp,
        jobs={"workers": 3, "lease_s": 30, "retry": {"max_attempts": 50, "backoff_s": 0.2}},
        send_retry={"max_attempts": 50, "backoff_s": 0.2, "max_backoff_s": 1.0},
        destinations=[{"name": "slow", "kind": "dicom", "ae_title": "SLOWDEST", "host": "127.0.0.1",
                       "port": scp.port}],
        rules=[{"name": "ct-followup", "send_to": ["slow"],
                "registration": {"device": "cpu", "iterations": 150}}],  # runs for seconds: killable
        completion={"quiet_seconds": 1.0, "max_wait_seconds": 60})
    db = db_of(cfg)
    spool_root = Path(cfg.node.data_dir) / "spool"
    exec_log = tmp / "exec.log"
    acked: list[str] = []
    originals: dict[str, Path] = {}
    streams: list[list[Path]] = []
    sleep_jobs: list[int] = []
    sends: dict[int, list[str]] = {}
    reg_studies: list[str] = []
    cycles = []
    nodes = []
    t_start = time.monotonic()
    try:
        for c in range(n_cycles):
            want_reg = bool(register_every) and c % register_every == 0
            t0 = time.monotonic()
            node = nodefx.start_node(path)
            nodes.append(node)
            restart_s = time.monotonic() - t0
            reg_study = ""

            def job_running() -> bool:
                with db.session() as s:
                    if want_reg:
                        return s.scalar(select(func.count()).select_from(Job).where(
                            Job.study_uid == reg_study, Job.state == JOB_RUNNING)) > 0
                    return s.get(Job, sleep_jobs[-1]).state == JOB_RUNNING

            if want_reg:  # a same-patient prior + current: a real registration runs in this cycle
                pid = f"KREG{c:03d}"
                prior = nodefx.make_series(tmp / f"reg{c}" / "prior", patient_id=pid, study_date="20230101",
                                           n_slices=24, size=32, seed=2 * c)
                reg_study = generate_uid()
                cur = nodefx.make_series(tmp / f"reg{c}" / "cur", patient_id=pid, study_date="20240101",
                                         study_uid=reg_study, n_slices=24, size=32, seed=2 * c + 1)
                assert nodefx.storescu(node.port, prior + cur).returncode == 0
                reg_studies.append(reg_study)
                wait_for(lambda: job_running(), 240, f"cycle {c}: the registration to start", node)
            else:  # the job killed in this cycle: a queue job (or, above, a registration)
                sleep_jobs.append(_add_sleep_job(db, c, exec_log))
            dest_before = scp.count()
            sid, uids = _add_delivery(db, tmp, c, "slow")  # a send under way
            sends[sid] = uids
            files = nodefx.make_series(tmp / f"stream{c}", patient_id=f"KILL{c:03d}", n_slices=STREAM_SLICES,
                                       size=12, seed=c)
            streams.append(files)
            originals.update({str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files})
            sender = StreamSender(node.port, files, calling=f"MOD{c % 10}", pause_s=STREAM_PAUSE_S,
                                  repeat=True).start()  # receiving until the kill, however fast the node is

            def sending() -> bool:  # some delivery is mid-way (an interrupted one is re-sent first)
                with db.session() as s:
                    busy = s.scalar(select(func.count()).select_from(Send).where(Send.state == SEND_SENDING))
                return busy > 0 and scp.count() > dest_before

            def all_busy():
                return len(sender.acked) >= 5 and sending() and job_running() and sender.running
            wait_for(all_busy, 60, f"cycle {c}: receive, job and send all under way", node)
            phases = {"receiving": sender.running, "job_running": job_running(),
                      "sending": sending(), "registering": want_reg}
            node.kill()
            sender.stop()
            sender.join(30)
            acked.extend(sender.acked)
            cycles.append({"cycle": c, "restart_s": round(restart_s, 2), "acked": len(sender.acked),
                           "dest_received": scp.count(), **phases})
            assert all(v for k, v in phases.items() if k != "registering"), phases  # all three interrupted

        # ---- final restart: drain everything
        node = nodefx.start_node(path)
        nodes.append(node)
        assert_acked_held(db, acked, originals, spool_root)  # before anything else touches the spool
        for files in streams:  # the modalities re-send their interrupted studies
            r = nodefx.storescu(node.port, files)
            assert r.returncode == 0, r.stderr[-2000:]

        def drained():
            with db.session() as s:
                open_jobs = s.scalar(select(func.count()).select_from(Job).where(Job.state.not_in(JOB_TERMINAL)))
                open_sends = s.scalar(select(func.count()).select_from(Send).where(Send.state != SEND_DONE))
            return open_jobs == 0 and open_sends == 0
        # a registration killed in several cycles still has to run once to the end
        wait_for(drained, 120 + 240 * len(reg_studies), "every job and send to finish", node, poll_s=0.5)
        time.sleep(2.5)  # late routings of re-sent studies (quiet period) and their jobs
        wait_for(drained, 120, "the follow-up jobs to finish", node, poll_s=0.5)

        # ---- checks
        assert_acked_held(db, acked, originals, spool_root)
        all_uids = set(originals)
        held = set(held_instances(db))
        assert all_uids <= held, f"{len(all_uids - held)} re-sent instances missing"
        with db.session() as s:
            runs = s.scalars(select(JobRun)).all()
            jobs_all = s.scalars(select(Job)).all()
            done_runs = Counter(r.job_id for r in runs if r.result == "done")
            lost_runs = Counter(r.job_id for r in runs if r.result == "lost")
            for j in jobs_all:
                if j.rule_name.startswith("delivery-"):
                    continue  # inserted as finished
                assert j.state == "done", f"job {j.id} ({j.kind}) ended {j.state}: {j.error}"
                assert done_runs[j.id] == 1, f"job {j.id} completed by {done_runs[j.id]} runs"
            for jid in sleep_jobs:
                assert lost_runs[jid] >= 1, f"sleep job {jid} was never interrupted"
            for st in reg_studies:
                (rj,) = [j for j in jobs_all if j.study_uid == st]
                assert rj.outcome == "registered", (rj.outcome, rj.outcome_reason, rj.error)
                assert lost_runs[rj.id] >= 1
                n_out = len(list((Path(rj.result_dir) / "dicom").glob("*.dcm")))
                assert n_out >= 3
            delivered = Counter(e.send_id for e in s.scalars(select(Event).where(Event.kind == "send"))
                                if "delivered" in e.message)
            for sid, uids in sends.items():
                snd = s.get(Send, sid)
                assert snd.state == SEND_DONE and snd.n_acknowledged == len(uids), (snd.state, snd.error)
                assert delivered[sid] == 1, f"send {sid} delivered {delivered[sid]} times"
                assert set(uids) <= scp.unique(), f"send {sid}: destination misses instances"
            all_sends = list(s.scalars(select(Send)))  # the deliveries above + the registrations' results
            for snd in all_sends:
                assert snd.state == SEND_DONE, (snd.id, snd.state, snd.error)
                assert delivered[snd.id] == 1, f"send {snd.id} delivered {delivered[snd.id]} times"
            starts = Counter(line.split()[1] for line in exec_log.read_text().splitlines())
        assert nodes[-1].stop() == 0
        figures = {
            "cycles": n_cycles, "acknowledged_before_kill": len(set(acked)), "lost": 0,
            "instances_total": len(all_uids), "jobs": len(jobs_all),
            "job_runs_done": sum(done_runs.values()), "job_runs_lost": sum(lost_runs.values()),
            "sleep_job_starts": sum(starts.values()), "sends": len(sends),
            "send_attempts": None, "registrations_killed": len(reg_studies),
            "dest_instances_received": scp.count(), "dest_unique": len(scp.unique()),
            "wall_s": round(time.monotonic() - t_start, 1), "per_cycle": cycles,
        }
        with db.session() as s:
            # every kill lands while some send is mid-way: the explicit deliveries' or a registration's results
            figures["sends"] = len(all_sends)
            figures["send_attempts"] = sum(s.get(Send, snd.id).attempts for snd in all_sends)
        return figures
    finally:
        for n in nodes:
            n.kill()
        scp.stop()
        db.dispose()


def test_kill9_cycles_receive_job_send_ci(tmp_path):
    figures = run_kill_cycles(tmp_path, n_cycles=2)
    assert figures["job_runs_lost"] >= 2 and figures["send_attempts"] >= figures["sends"] + 2
    write_figures("kill_cycles_ci", figures)


@pytest.mark.slow
def test_kill9_cycles_full(tmp_path):
    figures = run_kill_cycles(tmp_path, n_cycles=20, register_every=5)
    assert figures["job_runs_lost"] >= 20 and figures["send_attempts"] >= figures["sends"] + 20
    write_figures("kill_cycles_full", figures)

