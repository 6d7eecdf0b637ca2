"""Time one retention pass (``purge(dry_run=True)``: usage, protected set, plan) on a large index: 200,000 studies
(10 MB each, 2 TB indexed), 50,000 finished jobs, 200 queued. No files: the plan reads only the database.

    python3 bench/soak/index_scale.py
"""
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sqlalchemy import insert
from node.config import NodeConfig
from node.store.db import Study, Job, open_database
from node.retention.purge import purge
from node.retention.usage import ResultSizes
tmp = Path(tempfile.mkdtemp(prefix="bigidx"))
cfg = NodeConfig.model_validate({"node": {"data_dir": str(tmp)}, "retention": {"max_bytes": "4000 GB", "high_watermark": "90%", "low_watermark": "80%"}})
db = open_database(cfg)
N, J = 200_000, 50_000
now = dt.datetime.utcnow()
t0 = time.time()
with db.engine.begin() as c:
    c.execute(insert(Study), [dict(study_uid=f"1.2.3.{i}", patient_id=f"P{i % 50000}", n_instances=500, size_bytes=10_000_000,
                                   state="complete", first_received_at=now - dt.timedelta(minutes=i), last_received_at=now - dt.timedelta(minutes=i),
                                   round_started_at=now) for i in range(N)])
    c.execute(insert(Job), [dict(study_uid=f"1.2.3.{i}", current_series_uid=f"9.{i}", rule_name="r", state="done", result_dir="",
                                 finished_at=now - dt.timedelta(minutes=i)) for i in range(J)])
    c.execute(insert(Job), [dict(study_uid=f"1.2.3.{i}", current_series_uid=f"8.{i}", rule_name="r", state="queued") for i in range(200)])
print(f"built {N} studies ({N*10_000_000/1e12:.1f} TB indexed), {J} jobs in {time.time()-t0:.0f} s")
sizes = ResultSizes()
for label, hi, lo in (("2 TB of 4 TB, below the high mark", "90%", "80%"), ("2 TB of 4 TB, high 45 %, low 45 %: 200 GB to go", "45%", "45%")):
    cfg.retention.high_watermark, cfg.retention.low_watermark = hi, lo
    t0 = time.perf_counter(); r = purge(db, cfg, dry_run=True, sizes=sizes); t = time.perf_counter() - t0
    print(f"dry run, {label}: {t*1000:.0f} ms, {len(r.plan.items)} items, {r.plan.bytes/1e9:.0f} GB, protected {r.plan.protected_studies}")
db.dispose()
import shutil  # noqa: E402
shutil.rmtree(tmp)
