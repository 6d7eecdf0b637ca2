"""Scale-out (issue 8): three `totalreg worker` processes share the real PostgreSQL; 30 jobs, each done exactly once,
one worker killed with SIGKILL mid-job, its job re-queued after the lease expired and completed by another."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import select

from node.store import queue as jobs
from node.store.db import JOB_DONE, JOB_RUNNING, Database, Job, JobRun

pytestmark = pytest.mark.postgres

N_JOBS = 30
LEASE_S = 2.0


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_workers_thirty_jobs_one_killed(tmp_path, pg_schema_url, node_config):
    cfg, cfg_path = node_config(node={"database": pg_schema_url},
                                jobs={"workers": 1, "lease_s": LEASE_S,
                                      "retry": {"max_attempts": 3, "backoff_s": 0.1}})
    db = Database(pg_schema_url)
    log_file = tmp_path / "runs.log"
    with db.session() as s:
        for i in range(N_JOBS):
            jobs.enqueue(s, kind="sleep", current_series_uid=f"1.2.826.0.1.{i}", rule_name="scale",
                         params={"seconds": 0.4, "log": str(log_file)}, max_attempts=3)
    procs = []
    logs = []
    try:
        for i in range(3):
            out = open(tmp_path / f"worker{i}.log", "wb")
            logs.append(tmp_path / f"worker{i}.log")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node.cli", "worker", "--config", str(cfg_path), "--kinds", "sleep",
                 "--poll", "0.2"], stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp_path)))
            out.close()
        victim = procs[0]
        owner_prefix = f"{socket.gethostname()}:{victim.pid}:"

        def victim_job():  # running, and its side effect (the 'start' line) already written
            with db.session() as s:
                jid = s.scalar(select(Job.id).where(Job.state == JOB_RUNNING,
                                                    Job.lease_owner.startswith(owner_prefix)))
            text = log_file.read_text() if log_file.exists() else ""
            return jid if jid and f"start {jid} {owner_prefix}" in text else None
        killed_job = _wait(victim_job, 60, "the victim worker to run a job")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)

        def all_done():
            with db.session() as s:
                return all(j.state == JOB_DONE for j in s.scalars(select(Job)))
        _wait(all_done, 120, "all jobs done")
        with db.session() as s:
            all_jobs = s.scalars(select(Job)).all()
            runs = s.scalars(select(JobRun)).all()
        assert len(all_jobs) == N_JOBS
        done_runs = Counter(r.job_id for r in runs if r.result == "done")
        assert set(done_runs) == {j.id for j in all_jobs}
        assert set(done_runs.values()) == {1}  # exactly once
        killed_runs = [r for r in runs if r.job_id == killed_job]
        assert [r.result for r in killed_runs] == ["lost", "done"]
        assert killed_runs[0].worker.startswith(owner_prefix)
        assert not killed_runs[1].worker.startswith(owner_prefix)
        killed = next(j for j in all_jobs if j.id == killed_job)
        assert killed.attempts == 2 and killed.outcome == "registered"
        # the survivors shared the work; every worker wrote at least one run
        workers = Counter(r.worker.rsplit(":", 1)[0] for r in runs if r.result == "done")
        assert len(workers) >= 2
        # the side-effect log shows the killed job started twice, the others once
        starts = Counter(int(line.split()[1]) for line in log_file.read_text().splitlines())
        assert starts[killed_job] == 2
        assert sum(starts.values()) == N_JOBS + 1
        # a graceful stop of the survivors (SIGTERM) exits cleanly
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        for p in procs[1:]:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        db.dispose()
