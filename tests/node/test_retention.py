"""Retention and purge (node.retention): age limits, watermarks, what is never deleted, dry run = real run, purge
events, the index/disk check, and the repair of a purge a crash interrupted."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import make_series

from node import audit
from node.receive.ingest import STATUS_OK, ingest
from node.retention import purge as purge_mod
from node.retention.check import check
from node.retention.purge import STUDY_PURGING, purge, repair
from node.retention.runner import Retention, read_status
from node.service import make_spool
from node.store.audit_log import AuditRecord
from node.store.db import Event, Instance, Job, Send, Series, Study, open_database, utcnow
from node.store.queries import studies_for_patient

DAY = _dt.timedelta(days=1)


class Node:
    """A node's database + spool with helpers to make studies and jobs of a given age."""

    def __init__(self, tmp: Path, cfg):
        self.tmp, self.cfg = tmp, cfg
        self.db = open_database(cfg)
        self.spool = make_spool(cfg)
        self.n = self.n_jobs = 0

    def study(self, patient: str, *, age_days: float, origin: str = "received", state: str = "complete",
              n: int = 3, follow_up: bool = False) -> str:
        """A study of ``n`` instances received ``age_days`` ago; returns its StudyInstanceUID."""
        self.n += 1
        files = make_series(self.tmp / "src" / str(self.n), patient_id=patient, n_slices=n, seed=self.n)
        for f in files:
            status, msg = ingest(self.db, self.spool, f.read_bytes(), calling_ae="TEST")
            assert status == STATUS_OK, msg
        import pydicom
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        at = utcnow() - _dt.timedelta(days=age_days)
        with self.db.session() as s:
            st = s.scalar(select(Study).where(Study.study_uid == uid))
            st.origin, st.state, st.follow_up_pending = origin, state, follow_up
            st.last_received_at = st.first_received_at = at
        return uid

    def job(self, study_uid: str, *, state: str = "done", age_days: float = 0, results: int = 0,
            send: str | None = None) -> int:
        """A job on ``study_uid``; with ``results`` bytes a results folder; with ``send`` a send in that state."""
        self.n_jobs += 1
        with self.db.session() as s:
            series = s.scalar(select(Series.series_uid).where(Series.study_uid == study_uid))
            job = Job(study_uid=study_uid, current_series_uid=series, rule_name=f"rule-{self.n_jobs}",
                      state=state, finished_at=(utcnow() - _dt.timedelta(days=age_days)) if state != "queued"
                      else None)
            s.add(job)
            s.flush()
            jid = job.id
            if results:
                d = Path(self.cfg.node.data_dir).resolve() / "results" / str(jid)
                (d / "dicom").mkdir(parents=True)
                (d / "dicom" / "a.dcm").write_bytes(b"x" * results)
                job.result_dir, job.outcome = str(d), "registered"
            if send:
                s.add(Send(job_id=jid, destination="local", state=send, n_files=1))
        return jid

    def studies(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(Study.study_uid)))

    def spool_files(self) -> int:
        return sum(1 for _ in self.spool.root.rglob("*.dcm"))

    def bytes_of(self, uid: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(Study.size_bytes).where(Study.study_uid == uid))


@pytest.fixture
def node(tmp_path, node_config):
    def make(**retention):
        cfg, _ = node_config(retention={"high_watermark": "100%", "low_watermark": "100%", **retention})
        return Node(tmp_path, cfg)
    return make


def test_age_limits_delete_files_rows_and_record_an_event(node):
    n = node(received_studies_days=30, retrieved_priors_days=7, job_results_days=10)
    old = n.study("P1", age_days=40)
    new = n.study("P2", age_days=5)
    prior_old = n.study("P3", age_days=8, origin="retrieved")
    prior_new = n.study("P4", age_days=2, origin="retrieved")
    old_results = n.job(new, age_days=11, results=1000, send="done")
    new_results = n.job(new, age_days=3, results=500, send="done")
    files_before = n.spool_files()
    gone_bytes = n.bytes_of(old) + n.bytes_of(prior_old)

    res = purge(n.db, n.cfg)

    assert n.studies() == {new, prior_new}
    assert n.spool_files() == files_before - 6  # 3 instances each
    assert (res.studies, res.priors, res.instances, res.results) == (1, 1, 6, 1)
    assert res.study_bytes == gone_bytes and res.results_bytes == 1000
    assert not Path(n.cfg.node.data_dir, "results", str(old_results)).exists()
    assert Path(n.cfg.node.data_dir, "results", str(new_results), "dicom", "a.dcm").exists()
    with n.db.session() as s:
        assert s.get(Job, old_results).result_dir == ""  # the row stays (records_days unset), unhooked
        assert s.scalar(select(func.count(Instance.id)).where(Instance.study_uid == old)) == 0
        msgs = [e.message for e in s.scalars(select(Event).where(Event.kind == "retention"))]
    summary = [m for m in msgs if m.startswith("purge:")]
    assert len(summary) == 1
    assert "1 received studies, 1 retrieved priors (6 instances" in summary[0]
    assert f"deleted {gone_bytes + 1000} bytes" in summary[0]
    assert any(m.startswith("study purged (received study, 3 instances") for m in msgs)
    with n.db.session() as s:  # every purge is in the audit trail too: the periodic one by the node itself
        audited = [(a.action, a.actor, a.via, a.detail) for a in s.scalars(select(AuditRecord))]
    assert audited == [("purge", "node", "node", summary[0])]
    rep = check(n.db, n.cfg)
    assert rep.ok, rep.text()
    assert purge(n.db, n.cfg).bytes == 0  # nothing left to do
    with n.db.session() as s:  # a pass that deletes nothing is no audit record
        assert s.scalar(select(func.count(AuditRecord.id))) == 1


def test_watermark_deletes_oldest_first_down_to_the_low_mark(node):
    n = node()
    uids = [n.study(f"W{i}", age_days=10 - i) for i in range(5)]  # uids[0] oldest
    size = n.bytes_of(uids[0])
    total = sum(n.bytes_of(u) for u in uids)
    n.cfg.retention.max_bytes = total
    n.cfg.retention.high_watermark = "90%"  # 5 studies = 100 % > 90 %
    n.cfg.retention.low_watermark = int(total - 2.5 * size)  # needs 3 studies gone
    dry = purge(n.db, n.cfg, dry_run=True)
    assert [i.key for i in dry.plan.items] == uids[:3] and {i.reason for i in dry.plan.items} == {"watermark"}
    assert n.studies() == set(uids)
    res = purge(n.db, n.cfg)
    assert n.studies() == set(uids[3:])
    assert res.studies == 3
    with n.db.session() as s:
        from node.retention.usage import measure
        u = measure(s, n.cfg.retention, n.spool.root)
    assert u.used <= u.low_bytes < u.high_bytes
    # below the high mark nothing more goes
    assert purge(n.db, n.cfg).bytes == 0
    assert check(n.db, n.cfg).ok


def test_what_jobs_sends_and_follow_ups_need_is_kept(node):
    n = node(received_studies_days=1, job_results_days=1)
    current = n.study("PJ", age_days=50)          # a queued job's current study
    candidate_prior = n.study("PJ", age_days=400)  # same patient: a prior the worker may still pick
    running_cur = n.study("PR", age_days=50)
    n.job(current, state="queued")
    n.job(running_cur, state="running")
    follow_up = n.study("PF", age_days=60, state="receiving", follow_up=True)
    receiving = n.study("PX", age_days=60, state="receiving")
    prior_of_arriving = n.study("PX", age_days=900)  # its job, not enqueued yet, will want this prior
    prior_of_follow_up = n.study("PF", age_days=900)
    free = n.study("PZ", age_days=60)
    pending = n.job(free, age_days=30, results=700, send="queued")   # undelivered send: results kept
    dead = n.job(free, age_days=30, results=300, send="dead")        # dead (re-sendable): kept
    sent = n.job(free, age_days=30, results=200, send="done")        # delivered: goes
    res = purge(n.db, n.cfg)
    assert n.studies() == {current, candidate_prior, running_cur, follow_up, receiving, prior_of_arriving,
                           prior_of_follow_up}
    assert res.plan.protected_studies == 5
    rd = Path(n.cfg.node.data_dir).resolve() / "results"
    assert (rd / str(pending)).exists() and (rd / str(dead)).exists() and not (rd / str(sent)).exists()
    assert res.results == 1 and res.results_bytes == 200
    with n.db.session() as s:
        assert len(studies_for_patient(s, "PJ")) == 2  # the queued job still finds both
    assert check(n.db, n.cfg).ok


def test_dry_run_lists_exactly_what_the_real_purge_deletes(node):
    n = node(received_studies_days=20, job_results_days=5, records_days=30)
    a = n.study("D1", age_days=25)
    n.study("D2", age_days=10)
    b = n.study("D3", age_days=30, origin="retrieved")  # retrieved_priors_days unset: kept by age...
    j = n.job(a, age_days=6, results=100, send="done")
    old_job = n.job(a, age_days=40, send="done")  # no results, finished long ago: its record goes
    with n.db.session() as s:
        s.add(Event(message="old", at=utcnow() - 40 * DAY))
    n.cfg.retention.max_bytes = n.bytes_of(a) * 3 + 100
    n.cfg.retention.high_watermark, n.cfg.retention.low_watermark = "50%", "40%"  # ...but not by the watermark
    files, studies = n.spool_files(), n.studies()
    dry = purge(n.db, n.cfg, dry_run=True)
    assert n.spool_files() == files and n.studies() == studies  # nothing changed
    real = purge(n.db, n.cfg)
    assert [(i.kind, i.key, i.bytes, i.reason) for i in dry.plan.items] == \
           [(i.kind, i.key, i.bytes, i.reason) for i in real.plan.items]
    assert {(i.kind, i.key) for i in real.plan.items} >= {("study", a), ("results", str(j)), ("prior", b)}
    assert dry.plan.job_records == real.plan.job_records == [old_job] and real.job_records == 1
    assert dry.plan.n_events == 1 and real.events == 1
    assert real.bytes == dry.plan.bytes
    with n.db.session() as s:
        assert s.get(Job, old_job) is None and s.get(Job, j) is not None


def test_crash_between_file_delete_and_row_delete_is_repaired_at_start(node, monkeypatch):
    n = node(received_studies_days=1)
    gone = n.study("C1", age_days=5)
    kept = n.study("C2", age_days=0)
    orphan_job = n.job(kept, age_days=0, results=50, send="done")

    def crash(*a, **k):
        raise RuntimeError("power cut")
    monkeypatch.setattr(purge_mod, "_delete_study_rows", crash)
    with pytest.raises(RuntimeError):
        purge(n.db, n.cfg)
    # files gone, rows still there but marked: no reader uses them, the check sees a purge in progress
    assert not (n.spool.root / gone).exists()
    with n.db.session() as s:
        st = s.scalar(select(Study).where(Study.study_uid == gone))
        assert st.state == STUDY_PURGING and st.n_instances == 0
        assert s.scalar(select(func.count(Instance.id)).where(Instance.study_uid == gone)) == 3
        assert studies_for_patient(s, "C1") == []
        # a crash between unhooking a job's results and deleting its folder
        s.get(Job, orphan_job).result_dir = ""
    rep = check(n.db, n.cfg)
    assert rep.purging == [gone] and not rep.missing_files
    assert any("results folder" in u for u in rep.unknown_files)
    monkeypatch.undo()

    res = repair(n.db, n.cfg)  # what NodeService.start() runs
    assert (res.studies, res.instances, res.results) == (1, 3, 1)
    assert n.studies() == {kept}
    rep = check(n.db, n.cfg)
    assert rep.ok and not rep.purging, rep.text()
    with n.db.session() as s:
        assert s.scalar(select(func.count(Event.id)).where(Event.message.like("interrupted purge finished:%"))) == 1


def test_instance_arriving_during_a_purge_keeps_its_study(node, monkeypatch):
    n = node(received_studies_days=1)
    uid = n.study("L1", age_days=5)
    real_files = purge_mod._delete_study_files

    def late_arrival(db, root, study_id, study_uid):
        real_files(db, root, study_id, study_uid)
        extra = make_series(n.tmp / "late", patient_id="L1", study_uid=study_uid, n_slices=1, seed=99)
        assert ingest(n.db, n.spool, extra[0].read_bytes(), calling_ae="TEST")[0] == STATUS_OK
    monkeypatch.setattr(purge_mod, "_delete_study_files", late_arrival)
    res = purge(n.db, n.cfg)
    assert res.instances == 3
    with n.db.session() as s:
        st = s.scalar(select(Study).where(Study.study_uid == uid))
        assert st.state == "receiving" and st.n_instances == 1
    assert check(n.db, n.cfg).ok


def test_periodic_pass_writes_the_status_the_dashboard_reads(node):
    n = node(max_bytes="1 GB", high_watermark="90%", low_watermark="80%")
    n.study("S1", age_days=1)
    r = Retention(n.cfg, n.db, tick_s=5)
    r.tick()
    r.tick()
    st = read_status(n.cfg.node.data_dir)
    assert st["usage"]["metric"] == "node" and st["usage"]["high_bytes"] == 900_000_000
    assert st["usage"]["spool_bytes"] == n.bytes_of(next(iter(n.studies())))
    assert len(st["samples"]) == 2 and st["next_purge_at"] > st["updated_at"]
    json.dumps(st)


def test_retention_settings_validate(tmp_path):
    from node.config import ConfigError, load_config
    p = tmp_path / "n.yaml"
    p.write_text("retention: {max_bytes: 2 GB, high_watermark: '90%', low_watermark: '70%'}\n")
    assert load_config(p).retention.max_bytes == 2_000_000_000
    p.write_text("retention: {high_watermark: '70%', low_watermark: '90%'}\n")
    with pytest.raises(ConfigError):
        load_config(p)
    p.write_text("retention: {max_bytes: 2 parsecs}\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_purge_on_postgresql_with_a_queued_job(tmp_path, node_config, pg_schema_url):
    """The same purge on PostgreSQL (the jobs table locked for the plan-and-mark transaction)."""
    cfg, _ = node_config(node={"database": pg_schema_url}, retention={"received_studies_days": 1})
    n = Node(tmp_path, cfg)
    old = n.study("PG1", age_days=5)
    queued = n.study("PG2", age_days=5)
    n.job(queued, state="queued")
    dry = purge(n.db, n.cfg, dry_run=True)
    res = purge(n.db, n.cfg)
    assert [i.key for i in dry.plan.items] == [i.key for i in res.plan.items] == [old]
    assert n.studies() == {queued} and res.instances == 3
    assert check(n.db, n.cfg).ok
    n.db.dispose()


def test_purge_cli_lists_each_study_and_job_with_bytes_and_check_finds_mismatches(node, capsys, tmp_path):
    import yaml
    from node.cli import main
    n = node(received_studies_days=10, job_results_days=10)
    old = n.study("K1", age_days=20)
    keep = n.study("K2", age_days=1)
    j = n.job(keep, age_days=20, results=4321, send="done")
    cfg_path = tmp_path / "node.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    data["retention"].update(received_studies_days=10, job_results_days=10)
    cfg_path.write_text(yaml.safe_dump(data))
    old_bytes = n.bytes_of(old)
    assert main(["purge", "--dry-run", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert f"received study {old}: 3 instances, {old_bytes} bytes" in out and "reason: age" in out
    assert f"results of job {j}: 4321 bytes" in out and keep not in out
    assert n.studies() == {old, keep}  # a dry run changes nothing
    assert main(["purge", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert f"deleted: 1 received studies, 0 retrieved priors (3 instances, {old_bytes} bytes), 1 job results " \
           f"(4321 bytes)" in out
    assert n.studies() == {keep}
    with n.db.session() as s:  # `totalreg purge` is audited under the operating-system user, via the CLI
        audited = [(a.action, a.actor, a.via) for a in s.scalars(select(AuditRecord))]
    assert audited == [("purge", audit.cli_actor(), "cli")]
    assert main(["check", "--config", str(cfg_path)]) == 0
    assert "OK: index and disk agree" in capsys.readouterr().out
    # a file deleted behind the index's back, a stray file, a row whose size is wrong
    with n.db.session() as s:
        paths = [Path(p) for p in s.scalars(select(Instance.path).where(Instance.study_uid == keep))]
    paths[0].unlink()
    (paths[1].parent / "stray.dcm").write_bytes(b"x")
    paths[2].write_bytes(paths[2].read_bytes() + b"\0\0")
    rep = check(n.db, n.cfg)
    assert len(rep.missing_files) == 1 and str(paths[0]) in rep.missing_files[0]
    assert len(rep.unknown_files) == 1 and "stray.dcm" in rep.unknown_files[0]
    assert len(rep.size_mismatch) == 1 and not rep.ok
    assert main(["check", "--config", str(cfg_path)]) == 1
    assert "MISMATCH: 3 problems" in capsys.readouterr().out
