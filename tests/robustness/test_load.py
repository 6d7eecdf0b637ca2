"""Load: several modalities send small instances at once while three jobs run; nothing is lost and the node's
memory stays bounded.

CI: 4 senders x 50 instances while 3 queue jobs (kind ``sleep``) hold the 3 workers.
Full (slow): 8 senders x 500 instances while 3 real registrations (small CT pairs) run.
Each sender is its own association and study; every instance answered 0x0000 must be indexed with its file in the
spool.  The node's RSS is sampled every 0.5 s.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from .conftest import nodefx
from .support import RssSampler, StreamSender, assert_acked_held, db_of, rss_mib, wait_for, write_figures

CI_RSS_GROWTH_MIB = 250.0  # receiving 200 instances with queue jobs running
FULL_RSS_PEAK_MIB = 4096.0  # 4000 instances with three registrations running (torch, 3 threads)
SCU_TIMEOUT_S = 60.0  # the senders' DIMSE timeout, as a modality would set it


def _running_jobs(db) -> int:
    from node.store.db import JOB_RUNNING, Job
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.state == JOB_RUNNING))


def run_load(tmp: Path, senders: int, per_sender: int, real_jobs: bool) -> dict:
    cfg, path = nodefx.write_node_config(
        tmp, jobs={"workers": 3, "lease_s": 120, "retry": {"max_attempts": 3, "backoff_s": 0.5}},
        node={"max_associations": 32},
        rules=[{"name": "ct-followup", "send_to": ["local"], "registration": {"device": "cpu", "iterations": 2}}],
        completion={"quiet_seconds": 2.0, "max_wait_seconds": 600})
    streams = [nodefx.make_series(tmp / f"load{i}", patient_id=f"LOAD{i:02d}", n_slices=per_sender, size=8,
                                  seed=i) for i in range(senders)]
    originals = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for fs in streams for f in fs}
    db = db_of(cfg)
    node = nodefx.start_node(path)
    try:
        rss_idle = rss_mib(node.proc.pid)
        if real_jobs:  # three same-patient pairs: three registrations
            for k in range(3):
                pid = f"LOADREG{k}"
                pr = nodefx.make_series(tmp / f"reg{k}p", patient_id=pid, study_date="20230101", n_slices=12,
                                        size=24, seed=50 + k)
                cu = nodefx.make_series(tmp / f"reg{k}c", patient_id=pid, study_date="20240101", n_slices=12,
                                        size=24, seed=60 + k, study_uid=generate_uid())
                assert nodefx.storescu(node.port, pr + cu).returncode == 0
        else:
            from node.store import queue as jobs
            with db.session() as s:
                for k in range(3):
                    jobs.enqueue(s, kind="sleep", current_series_uid=f"load-sleep-{k}", rule_name="load",
                                 params={"seconds": 20.0})
        wait_for(lambda: _running_jobs(db) >= 3, 300, "three jobs running", node)
        rss_jobs = rss_mib(node.proc.pid)
        t0 = time.monotonic()
        with RssSampler(node.proc.pid) as rss:
            workers = [StreamSender(node.port, fs, calling=f"LOADSCU{i}", timeout_s=SCU_TIMEOUT_S).start()
                       for i, fs in enumerate(streams)]
            running_during = []
            while any(w.running for w in workers):
                running_during.append(_running_jobs(db))
                time.sleep(0.5)
            for w in workers:
                w.join(60)
            send_s = time.monotonic() - t0
        acked = [u for w in workers for u in w.acked]
        lat = sorted(x for w in workers for x in w.latencies)
        failures = [f for w in workers for f in w.failures]
        errors = [w.error for w in workers if w.error]
        assert not failures and not errors, (failures[:5], errors[:5],
                                             f"slowest C-STORE answer {max(lat, default=0):.1f} s")
        assert len(acked) == senders * per_sender
        assert_acked_held(db, acked, originals, Path(cfg.node.data_dir) / "spool")
        assert max(running_during) >= 3, "the jobs were not running while the load was received"
        assert nodefx.echo_ok(node.port)
        figures = {"senders": senders, "per_sender": per_sender, "acknowledged": len(acked), "lost": 0,
                   "jobs": "3 registrations" if real_jobs else "3 sleep jobs", "receive_s": round(send_s, 1),
                   "instances_per_s": round(len(acked) / send_s, 1), "rss_idle_mib": round(rss_idle, 1),
                   "rss_jobs_running_mib": round(rss_jobs, 1), "rss_peak_mib": rss.peak,
                   "rss_first_mib": rss.first, "rss_last_mib": rss.last, "rss_samples": len(rss.samples),
                   "running_jobs_during_load_min": min(running_during),
                   "cstore_latency_median_s": round(lat[len(lat) // 2], 3) if lat else None,
                   "cstore_latency_p99_s": round(lat[int(len(lat) * 0.99)], 3) if lat else None,
                   "cstore_latency_max_s": round(lat[-1], 3) if lat else None}
        return figures
    finally:
        node.kill()
        db.dispose()


def test_load_ci(tmp_path):
    figures = run_load(tmp_path, senders=4, per_sender=50, real_jobs=False)
    write_figures("load_ci", figures)
    assert figures["rss_peak_mib"] - figures["rss_jobs_running_mib"] < CI_RSS_GROWTH_MIB, figures


@pytest.mark.slow
def test_load_full(tmp_path):
    figures = run_load(tmp_path, senders=8, per_sender=500, real_jobs=True)
    write_figures("load_full", figures)
    assert figures["rss_peak_mib"] < FULL_RSS_PEAK_MIB, figures
